"""The SSE parser: the event-stream format as the HTML standard defines it, fed in chunks of any size."""

from __future__ import annotations

import pytest

from app.client.sse import ServerSentEvent, SSEDecoder


def feed_all(text: str, chunk: int | None = None) -> tuple[list[ServerSentEvent], SSEDecoder]:
    d = SSEDecoder()
    if chunk is None:
        return d.feed(text) + d.end(), d
    events = []
    for i in range(0, len(text), chunk):
        events += d.feed(text[i : i + chunk])
    return events + d.end(), d


STREAM = (
    "retry: 1000\n"
    "\n"
    ": keepalive\n"
    "id: 1\n"
    "event: status\n"
    'data: {"status": "queued"}\n'
    "\n"
    "id: 2\n"
    "event: epoch\n"
    "data: first line\n"
    "data:second line\n"
    "data\n"
    "\n"
    'data: no id or event here\n'
    "\n"
)


def test_events_fields_comments_and_retry_in_one_chunk():
    events, d = feed_all(STREAM)
    assert events == [
        ServerSentEvent(event="status", data='{"status": "queued"}', id="1", retry=1000),
        # One leading space is stripped; "data" alone is an empty data line.
        ServerSentEvent(event="epoch", data="first line\nsecond line\n", id="2", retry=1000),
        # The id persists; the event type does not.
        ServerSentEvent(event="message", data="no id or event here", id="2", retry=1000),
    ]
    assert d.comments == 1
    assert d.last_event_id == "2"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 13])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_any_chunking_and_line_ending_gives_the_same_events(chunk, newline):
    whole, _ = feed_all(STREAM)
    events, _ = feed_all(STREAM.replace("\n", newline), chunk)
    assert events == whole


def test_crlf_split_across_chunks_is_one_line_ending():
    d = SSEDecoder()
    assert d.feed("data: a\r") == []
    # Were the \r taken as a line end and the \n as another, this would dispatch "a" now.
    assert d.feed("\ndata: b\r") == []
    assert d.feed("\n\r\n") == [ServerSentEvent(data="a\nb")]


def test_bytes_with_split_utf8_characters_and_bom():
    payload = "\ufeffdata: café ☕\n\n".encode()
    d = SSEDecoder()
    events = []
    for i in range(len(payload)):
        events += d.feed_bytes(payload[i : i + 1])
    assert events == [ServerSentEvent(data="café ☕")]


def test_incomplete_event_at_end_is_not_dispatched():
    events, d = feed_all("id: 7\ndata: complete\n\nid: 8\ndata: cut off mid-ev")
    assert [e.data for e in events] == ["complete"]
    # The id line of the unfinished event was read: resuming from 8 would skip it, so callers must use the id of
    # the last *dispatched* event (what the client does).
    assert events[-1].id == "7"
    assert d.last_event_id == "8"


def test_blank_lines_without_data_dispatch_nothing_but_id_sticks():
    events, d = feed_all("id: 5\n\n\n\nevent: ignored\n\ndata: x\n\n")
    assert events == [ServerSentEvent(event="message", data="x", id="5")]
    assert d.last_event_id == "5"


def test_bad_retry_and_nul_id_are_ignored_unknown_fields_too():
    events, d = feed_all("retry: 1s\nid: a\0b\nfoo: bar\nretry: 250\ndata: y\n\nretry: -5\n")
    assert events == [ServerSentEvent(data="y", id=None, retry=250)]
    assert d.retry == 250


def test_value_keeps_further_colons_and_spaces():
    events, _ = feed_all("data:  two spaces: and a colon\n\n")
    assert events[0].data == " two spaces: and a colon"


def test_initial_last_event_id_carries_over_a_reconnect():
    d = SSEDecoder(last_event_id="41")
    assert d.feed("data: z\n\n") == [ServerSentEvent(data="z", id="41")]


def test_cr_only_stream_ending_dispatches_its_last_event_at_end():
    d = SSEDecoder()
    assert d.feed("data: last\r\r") == []  # the final CR might still be the first half of a CRLF
    assert d.end() == [ServerSentEvent(data="last")]
