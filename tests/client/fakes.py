"""In-memory stand-ins for the jobs API, served through httpx.MockTransport, for what a live server cannot be made to
do on demand: drop an event stream mid-event, lack the /events route, or never finish a job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

PROBLEM = {"content-type": "application/problem+json"}


def problem(status: int, title: str, detail: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, headers=PROBLEM, json={"type": "about:blank", "title": title, "status": status,
                                                          "detail": detail, **extra})


class ScriptedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Yields `chunks`, sleeping `pause` between them; then raises `fail` if given (a dropped connection)."""

    def __init__(self, chunks: list[bytes], *, fail: Exception | None = None, pause: float = 0.0,
                 forever: bytes | None = None) -> None:
        self.chunks, self.fail, self.pause, self.forever = chunks, fail, pause, forever

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            yield chunk
            if self.pause:
                time.sleep(self.pause)
        while self.forever is not None:
            time.sleep(self.pause or 0.01)
            yield self.forever
        if self.fail is not None:
            raise self.fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
            if self.pause:
                await asyncio.sleep(self.pause)
        while self.forever is not None:
            await asyncio.sleep(self.pause or 0.01)
            yield self.forever
        if self.fail is not None:
            raise self.fail


def sse(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass
class FakeJobServer:
    """One job, `epochs` long, ending `final`. Its event log is: queued, running, one event per epoch, final status.

    `events`: "sse" serves the stream; "404" / "405" / "html" / "refused" / "503" make it unavailable in that way.
    `cuts`: for the first len(cuts) connections to /events, cut the stream after that many bytes (a ReadError).
    `skip_epochs`: epoch events left out of the stream (history still has them).
    Without the stream, the job advances one epoch per GET /v1/jobs/{id}, so polling sees it progress.
    """

    job_id: str = "job1"
    epochs: int = 5
    final: str = "succeeded"
    events: str = "sse"
    cuts: list[int] = field(default_factory=list)
    skip_epochs: set[int] = field(default_factory=set)
    never_finishes: bool = False
    ignore_last_event_id: bool = False  # replays the whole log on every connection
    cut_cleanly: bool = False  # cuts end the stream normally (a proxy closing it) instead of with a ReadError
    requests: list[httpx.Request] = field(default_factory=list)
    polls: int = 0

    def epoch_data(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "loss": 1.0 / epoch, "val_loss": 1.5 / epoch, "metrics": {"accuracy": epoch / 10},
                "seconds": 0.01}

    def error(self) -> dict[str, str]:
        return {"code": "divergence", "message": "the loss became NaN at epoch 3"}

    def log(self) -> list[tuple[int, str, dict[str, Any]]]:
        log: list[tuple[int, str, dict[str, Any]]] = []

        def add(kind: str, data: dict[str, Any]) -> None:
            seq = len(log) + 1
            log.append((seq, kind, {"job_id": self.job_id, "seq": seq, "type": kind, **data}))

        add("status", {"status": "queued", "reason": None})
        add("status", {"status": "running", "reason": None})
        for e in range(1, self.epochs + 1):
            add("epoch", self.epoch_data(e))
        terminal: dict[str, Any] = {"status": self.final, "reason": None, "metrics": None, "model_id": None,
                                    "error": None}
        if self.final == "failed":
            terminal["error"] = self.error()
        if self.final == "succeeded":
            terminal["model_id"] = "model1"
        add("status", terminal)
        return log

    def done_epochs(self) -> int:
        if self.events == "sse" and not self.never_finishes:
            return self.epochs
        return min(self.epochs, self.polls)

    def job(self) -> dict[str, Any]:
        done = self.done_epochs()
        finished = done >= self.epochs and not self.never_finishes
        status = self.final if finished else ("running" if done else "queued")
        return {
            "id": self.job_id, "status": status, "network_id": "net1", "dataset_id": "ds1", "epoch": done,
            "epochs": self.epochs, "progress": done / self.epochs, "loss": None, "val_loss": None, "metrics": {},
            "model_id": "model1" if status == "succeeded" else None,
            "error": self.error() if status == "failed" else None,
            "attempt": 1, "max_attempts": 3, "cancel_requested": False, "transitions": [], "spec": {},
            "created_at": "2024-06-01T12:00:00Z", "started_at": None, "finished_at": None,
        }

    def event_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/events")]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        base = f"/v1/jobs/{self.job_id}"
        if not path.startswith(base):
            return problem(404, "Not Found", f"no job with id {path.split('/')[3]!r}")
        if path == base:
            self.polls += 1
            return httpx.Response(200, json=self.job())
        if path == base + "/history":
            after = int(request.url.params.get("after", "0"))
            done = self.done_epochs()
            return httpx.Response(200, json={"job_id": self.job_id, "data": [
                self.epoch_data(e) for e in range(after + 1, done + 1)]})
        if path == base + "/events":
            return self.stream(request)
        return problem(404, "Not Found", "Not Found")

    def stream(self, request: httpx.Request) -> httpx.Response:
        if self.events == "404":
            return problem(404, "Not Found", "Not Found")
        if self.events == "405":
            return problem(405, "Method Not Allowed", "method GET is not allowed here")
        if self.events == "html":
            return httpx.Response(200, headers={"content-type": "text/html"}, text="<html>proxy login</html>")
        if self.events == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if self.events == "503":
            return problem(503, "Service Unavailable", "busy", )
        after = 0 if self.ignore_last_event_id else int(request.headers.get("last-event-id", "0"))
        body = b"retry: 10\n\n" + b"".join(
            sse(seq, kind, data) for seq, kind, data in self.log()
            if seq > after and not (kind == "epoch" and data["epoch"] in self.skip_epochs)
        )
        headers = {"content-type": "text/event-stream; charset=utf-8"}
        n = len(self.event_requests())
        if self.never_finishes:
            started = [sse(seq, kind, data) for seq, kind, data in self.log()[:2] if seq > after]
            return httpx.Response(200, headers=headers, stream=ScriptedStream([b"retry: 10\n\n", *started],
                                                                              pause=0.02, forever=b": keepalive\n\n"))
        if n <= len(self.cuts):
            cut = self.cuts[n - 1]
            # Odd-sized chunks, so events and even CRLFs straddle chunk boundaries.
            part = body[:cut]
            chunks = [part[i : i + 7] for i in range(0, len(part), 7)]
            fail = None if self.cut_cleanly else httpx.ReadError("connection reset by peer")
            return httpx.Response(200, headers=headers, stream=ScriptedStream(chunks, fail=fail))
        return httpx.Response(200, headers=headers, stream=ScriptedStream([body]))


def fast_sleep() -> tuple[list[float], Any]:
    """A sleep that records how long it was asked to wait and returns at once."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep


def fast_async_sleep() -> tuple[list[float], Any]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep
