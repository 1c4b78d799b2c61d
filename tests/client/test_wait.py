"""wait() and events() against a scripted jobs API (tests/client/fakes.py): the event stream, resuming with
Last-Event-ID after drops, falling back to polling, failed / cancelled / timed-out jobs, and the async twin."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from app.client import (
    AsyncClient,
    Client,
    EpochRecord,
    JobFailed,
    NotFoundError,
    RetryPolicy,
    StreamUnavailable,
    WaitTimeout,
)
from tests.client.fakes import FakeJobServer, fast_async_sleep, fast_sleep, sse


def client_for(fake: FakeJobServer, *, real_sleep: bool = False) -> tuple[Client, list[float]]:
    slept, sleep = fast_sleep()
    client = Client("http://bp.test", "k", transport=httpx.MockTransport(fake),
                    sleep=time.sleep if real_sleep else sleep, rng=random.Random(0), retry=RetryPolicy(max_attempts=2))
    return client, slept


def follow(client: Client, **kwargs: object) -> tuple[object, list[int], list[str]]:
    epochs: list[int] = []
    statuses: list[str] = []

    def on_epoch(r: EpochRecord) -> None:
        assert r.loss == pytest.approx(1.0 / r.epoch)
        epochs.append(r.epoch)

    job = client.jobs.wait("job1", on_epoch=on_epoch, on_status=statuses.append, **kwargs)  # type: ignore[arg-type]
    return job, epochs, statuses


def test_wait_follows_the_stream_and_returns_the_final_job():
    fake = FakeJobServer(epochs=6)
    client, _ = client_for(fake)
    job, epochs, statuses = follow(client)
    assert job.status == "succeeded"  # type: ignore[attr-defined]
    assert job.model_id == "model1"  # type: ignore[attr-defined]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert statuses == ["queued", "running", "succeeded"]
    assert len(fake.event_requests()) == 1
    assert "last-event-id" not in fake.event_requests()[0].headers
    # Only the final GET of the job: no polling.
    assert [r.url.path for r in fake.requests].count("/v1/jobs/job1") == 1


@pytest.mark.parametrize("cuts", [[150], [150, 90], [40, 60, 300]])
def test_dropped_stream_resumes_with_last_event_id_without_duplicates_or_gaps(cuts):
    fake = FakeJobServer(epochs=8, cuts=cuts)
    client, slept = client_for(fake)
    job, epochs, statuses = follow(client)
    assert job.status == "succeeded"  # type: ignore[attr-defined]
    assert epochs == list(range(1, 9))
    assert statuses == ["queued", "running", "succeeded"]
    reqs = fake.event_requests()
    assert len(reqs) == len(cuts) + 1
    # Each reconnection resumes after the last event that arrived whole (a cut-off event is asked for again).
    sent = [r.headers.get("last-event-id") for r in reqs]
    assert sent[0] is None
    expected: int | None = None  # nothing whole received yet: no Last-Event-ID, start from the beginning
    for i, cut in enumerate(cuts):
        # The cut applies to what that connection sent, which starts after the previous resume point.
        body = b"retry: 10\n\n" + b"".join(sse(s, k, d) for s, k, d in fake.log() if s > (expected or 0))
        text = body[:cut].decode()
        complete = text[: text.rfind("\n\n") + 2]
        ids = [int(line[4:]) for line in complete.splitlines() if line.startswith("id: ")]
        expected = max(ids) if ids else expected
        assert sent[i + 1] == (None if expected is None else str(expected))
    # The server's `retry: 10` sets the reconnection delay (doubling while attempts get nothing).
    assert slept
    assert all(s <= 0.01 * 2**4 for s in slept)
    assert [r.url.path for r in fake.requests].count("/v1/jobs/job1") == 1


def test_stream_closed_early_without_an_error_is_resumed_too():
    fake = FakeJobServer(epochs=5, cuts=[200, 150], cut_cleanly=True)
    client, _ = client_for(fake)
    _, epochs, statuses = follow(client)
    assert epochs == [1, 2, 3, 4, 5]
    assert statuses == ["queued", "running", "succeeded"]
    sent = [r.headers.get("last-event-id") for r in fake.event_requests()]
    assert len(sent) == 3
    assert sent[0] is None
    assert int(sent[1]) < int(sent[2]) < 8


def test_a_server_replaying_from_the_start_after_a_drop_delivers_nothing_twice():
    fake = FakeJobServer(epochs=6, cuts=[250, 400], ignore_last_event_id=True)
    client, _ = client_for(fake)
    _, epochs, statuses = follow(client)
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert statuses == ["queued", "running", "succeeded"]
    assert len(fake.event_requests()) == 3
    events = list(client.jobs.events("job1"))
    assert [e.seq for e in events] == list(range(1, 10))


def test_missing_epoch_events_are_filled_from_history():
    fake = FakeJobServer(epochs=6, skip_epochs={3, 4})
    client, _ = client_for(fake)
    _, epochs, _ = follow(client)
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert any(r.url.path.endswith("/history") for r in fake.requests)


@pytest.mark.parametrize("mode", ["404", "405", "html", "refused", "503"])
def test_without_the_stream_wait_polls_job_and_history(mode):
    fake = FakeJobServer(epochs=5, events=mode)
    client, slept = client_for(fake)
    job, epochs, statuses = follow(client, poll_interval=0.25)
    assert job.status == "succeeded"  # type: ignore[attr-defined]
    assert epochs == [1, 2, 3, 4, 5]
    assert statuses == ["running", "succeeded"]
    assert fake.polls >= 5
    afters = [int(r.url.params["after"]) for r in fake.requests if r.url.path.endswith("/history")]
    assert afters == sorted(afters)
    assert 0.25 in slept
    # It gave the stream up quickly: once for a definite answer, a few times for refusals and 503s.
    assert 1 <= len(fake.event_requests()) <= 5


def test_unknown_job_is_not_found_not_a_fallback():
    fake = FakeJobServer(events="404")
    client, _ = client_for(fake)
    with pytest.raises(NotFoundError, match="no job with id 'nope'"):
        client.jobs.wait("nope")


def test_failed_job_raises_job_failed_with_its_error():
    fake = FakeJobServer(epochs=3, final="failed")
    client, _ = client_for(fake)
    with pytest.raises(JobFailed) as info:
        follow(client)
    assert info.value.code == "divergence"
    assert "NaN" in info.value.error_message
    assert info.value.job.status == "failed"


def test_cancelled_job_is_returned_not_raised():
    fake = FakeJobServer(epochs=2, final="cancelled", events="404")
    client, _ = client_for(fake)
    job, epochs, _ = follow(client, poll_interval=0.01)
    assert job.status == "cancelled"  # type: ignore[attr-defined]
    assert epochs == [1, 2]


@pytest.mark.parametrize("events", ["sse", "404"])
def test_timeout_raises_a_timeout_error_and_the_job_keeps_running(events):
    fake = FakeJobServer(epochs=1000, events=events, never_finishes=True)
    client, _ = client_for(fake, real_sleep=True)
    start = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.jobs.wait("job1", timeout=0.5, poll_interval=0.05)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert 0.5 <= elapsed < 3.0
    assert info.value.job_id == "job1"
    assert info.value.status in ("queued", "running")


def test_events_iterator_yields_every_event_in_order_and_resumes():
    fake = FakeJobServer(epochs=4, cuts=[120])
    client, _ = client_for(fake)
    events = list(client.jobs.events("job1"))
    assert [e.seq for e in events] == list(range(1, 8))
    assert [e.type for e in events] == ["status", "status", "epoch", "epoch", "epoch", "epoch", "status"]
    assert events[-1].is_terminal
    assert events[2].epoch_record() == EpochRecord.from_dict(fake.epoch_data(1))
    later = list(client.jobs.events("job1", after=5))
    assert [e.seq for e in later] == [6, 7]
    # Resumed past the end of a finished job: the server closes at once, and so does the iterator.
    n = len(fake.event_requests())
    assert list(client.jobs.events("job1", after=7)) == []
    assert len(fake.event_requests()) == n + 1


def test_events_without_a_stream_raises_stream_unavailable():
    client, _ = client_for(FakeJobServer(events="405"))
    with pytest.raises(StreamUnavailable):
        list(client.jobs.events("job1"))


def test_job_object_wait_delegates_to_its_client():
    fake = FakeJobServer(epochs=3)
    client, _ = client_for(fake)
    job = client.jobs.get("job1")
    seen: list[int] = []
    final = job.wait(on_epoch=lambda r: seen.append(r.epoch))
    assert final.status == "succeeded"
    assert seen == [1, 2, 3]


# --- async parity -------------------------------------------------------------------------------------------------


def aclient_for(fake: FakeJobServer, *, real_sleep: bool = False) -> AsyncClient:
    import asyncio

    _, sleep = fast_async_sleep()
    return AsyncClient("http://bp.test", "k", transport=httpx.MockTransport(fake),
                       sleep=asyncio.sleep if real_sleep else sleep, rng=random.Random(0),
                       retry=RetryPolicy(max_attempts=2))


@pytest.mark.anyio
@pytest.mark.parametrize(("events", "cuts"), [("sse", [150, 90]), ("404", []), ("refused", [])])
async def test_async_wait_resumes_or_polls_and_delivers_each_epoch_once(events, cuts):
    fake = FakeJobServer(epochs=7, events=events, cuts=cuts)
    async with aclient_for(fake) as client:
        epochs: list[int] = []
        job = await client.jobs.wait("job1", on_epoch=lambda r: epochs.append(r.epoch), poll_interval=0.01)
    assert job.status == "succeeded"
    assert epochs == list(range(1, 8))
    if events == "sse":
        assert [r.headers.get("last-event-id") is not None for r in fake.event_requests()] == [False, True, True]


@pytest.mark.anyio
async def test_async_failed_timeout_and_events():
    async with aclient_for(FakeJobServer(epochs=2, final="failed")) as client:
        with pytest.raises(JobFailed):
            await client.jobs.wait("job1")
    async with aclient_for(FakeJobServer(events="sse", never_finishes=True), real_sleep=True) as client:
        with pytest.raises(WaitTimeout):
            await client.jobs.wait("job1", timeout=0.3)
    async with aclient_for(FakeJobServer(epochs=2, cuts=[100])) as client:
        seqs = [e.seq async for e in client.jobs.events("job1")]
        assert seqs == [1, 2, 3, 4, 5]
        job = await client.jobs.get("job1")
        assert (await job.wait()).status == "succeeded"
