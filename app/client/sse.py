"""A small incremental parser for Server-Sent Events (text/event-stream), as the HTML standard defines them.

Feed it the stream's text as it arrives, in chunks of any size; it returns each event once its closing blank line
has arrived. Lines end in CRLF, LF or CR (a CRLF split across two chunks counts once). `data` lines join with "\\n";
lines starting with ":" are comments (keepalives); `id` persists to later events (the value to send back as
`Last-Event-ID`), an `id` holding NUL is ignored; `retry` takes digits only; unknown fields are ignored. An event
cut off by the end of the stream is never dispatched.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental SSE parser. `last_event_id` and `retry` (milliseconds) keep the latest values the stream set."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self.comments = 0
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self._event = ""
        self._data: list[str] = []

    def feed_bytes(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode UTF-8 (the only encoding SSE allows, multi-byte characters may straddle chunks) and feed it."""
        return self.feed(self._bytes.decode(chunk))

    def feed(self, text: str) -> list[ServerSentEvent]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buf = self._pending + text
        hold = ""
        if buf.endswith("\r"):
            # Maybe the first half of a CRLF: decide when the next chunk comes.
            buf, hold = buf[:-1], "\r"
        lines = _LINE_END.split(buf)
        self._pending = lines.pop() + hold
        events = []
        for line in lines:
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def end(self) -> list[ServerSentEvent]:
        """The stream ended: a last line held back for a possible CRLF is complete after all (anything after it,
        an unterminated line or event, is dropped)."""
        buf, self._pending = self._pending + self._bytes.decode(b"", final=True), ""
        if not buf.endswith("\r"):
            return []
        event = self.feed_line(buf[:-1])
        return [event] if event is not None else []

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """Process one line without its line ending; the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self.last_event_id, retry=self.retry)
