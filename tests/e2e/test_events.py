"""The live event stream over real sockets: a job followed while it trains, the connection dropped midway and resumed
with Last-Event-ID (no epoch twice, none missing), served by a second API process that runs no worker (the events
come from the database, not from the memory of the process that runs the job)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.e2e.test_server import IRIS_NETWORK, ok, upload_iris
from tests.support.server import Server

pytestmark = pytest.mark.integration

STREAM_TIMEOUT = 120.0


class Events:
    """Reads one SSE connection event by event (a tiny parser: the client SDK has its own)."""

    def __init__(self, client: httpx.Client, job_id: str, last_event_id: int | None = None) -> None:
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        self.cm = client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=STREAM_TIMEOUT)
        self.response = self.cm.__enter__()
        assert self.response.status_code == 200
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self.lines = self.response.iter_lines()

    def __iter__(self) -> Any:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if "data" in fields:
                    yield {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    def close(self) -> None:
        self.cm.__exit__(None, None, None)


def test_stream_resumes_after_a_drop_without_duplicates_or_gaps(start_server, e2e_env):
    worker_server: Server = start_server()
    key = worker_server.printed_key()
    e2e_env["BACKPROP_WORKERS"] = "0"          # the second process only serves the API
    api_only: Server = start_server()
    with worker_server.client(key) as c, api_only.client(key) as reader:
        dataset = upload_iris(c)
        network = ok(c.post("/v1/networks", json=IRIS_NETWORK), 201)
        job = ok(
            c.post(
                "/v1/jobs",
                json={
                    "network_id": network["id"],
                    "dataset_id": dataset["id"],
                    "epochs": 300,
                    "batch_size": 2,
                    "validation_split": 0.2,
                    "seed": 3,
                },
            ),
            202,
        )
        seen: list[dict[str, Any]] = []
        started = time.monotonic()
        # First connection: read until a few epochs have arrived, then drop it.
        stream = Events(reader, job["id"])
        for event in stream:
            seen.append(event)
            if sum(e["event"] == "epoch" for e in seen) >= 5:
                break
        stream.close()
        drops = 1
        # Reconnect with Last-Event-ID, dropping once more mid-stream, until the terminal event.
        while seen[-1]["event"] != "status" or seen[-1]["data"]["status"] not in {"succeeded", "failed", "cancelled"}:
            assert time.monotonic() - started < STREAM_TIMEOUT, "the stream did not reach a terminal event in time"
            stream = Events(reader, job["id"], last_event_id=seen[-1]["id"])
            for event in stream:
                seen.append(event)
                if drops == 1 and event["event"] == "epoch" and event["data"]["epoch"] >= 150:
                    drops += 1
                    break
            stream.close()

    assert drops == 2, "the job finished before the second drop: make it longer"
    assert [e["id"] for e in seen] == list(range(1, len(seen) + 1))
    epochs = [e["data"]["epoch"] for e in seen if e["event"] == "epoch"]
    assert epochs == list(range(1, 301))
    assert [e["data"]["status"] for e in seen if e["event"] == "status"] == ["queued", "running", "succeeded"]
    final = seen[-1]["data"]
    assert final["model_id"]
    assert final["metrics"]["val_accuracy"] >= 0.8
    with worker_server.client(key) as c:
        history = ok(c.get(f"/v1/jobs/{job['id']}/history"))["data"]
    assert [(e["data"]["epoch"], e["data"]["loss"]) for e in seen if e["event"] == "epoch"] == [
        (h["epoch"], h["loss"]) for h in history
    ]
