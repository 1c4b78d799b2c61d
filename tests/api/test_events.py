"""GET /v1/jobs/{id}/events: Server-Sent Events read from the database, resumable with Last-Event-ID.

In process (httpx's ASGITransport hands over a response once the stream ends), so these tests read streams that end:
a finished job's, and a queued job's after it is cancelled. tests/e2e/test_events.py follows a live job over a real
socket and drops the connection midway."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, Template, assert_problem

pytestmark = pytest.mark.anyio


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body: [{id, event, data}] (comments and retry lines skipped)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


class TestFinishedJobStream:
    @pytest.fixture
    def template(self, trained_template: Template) -> Template:
        return trained_template

    async def test_stream_replays_every_event_and_ends_after_the_terminal_one(self, client: httpx.AsyncClient, ids):
        r = await client.get(f"/v1/jobs/{ids['job']}/events")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.text.startswith("retry: ")
        events = parse_sse(r.text)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
        assert statuses == ["queued", "running", "succeeded"]
        epochs = [e["data"] for e in events if e["event"] == "epoch"]
        assert [e["epoch"] for e in epochs] == list(range(1, 13))
        history = (await client.get(f"/v1/jobs/{ids['job']}/history")).json()["data"]
        assert [(e["epoch"], e["loss"], e["val_loss"]) for e in epochs] == [
            (h["epoch"], h["loss"], h["val_loss"]) for h in history
        ]
        assert all(e["data"]["job_id"] == ids["job"] and e["data"]["seq"] == e["id"] for e in events)
        last = events[-1]
        assert last["event"] == "status"
        assert last["data"]["status"] == "succeeded"
        assert last["data"]["model_id"] == ids["model"]
        assert last["data"]["error"] is None
        job = (await client.get(f"/v1/jobs/{ids['job']}")).json()
        assert last["data"]["metrics"]["val_accuracy"] == job["metrics"]["val_accuracy"]
        assert last["data"]["metrics"]["loss"] == job["loss"]

    @pytest.mark.parametrize("how", ["header", "query"])
    async def test_resume_sends_only_later_events(self, client: httpx.AsyncClient, ids, how: str):
        full = parse_sse((await client.get(f"/v1/jobs/{ids['job']}/events")).text)
        cut = 5
        if how == "header":
            r = await client.get(f"/v1/jobs/{ids['job']}/events", headers={"Last-Event-ID": str(cut)})
        else:
            r = await client.get(f"/v1/jobs/{ids['job']}/events", params={"after": cut})
        assert r.status_code == 200
        assert parse_sse(r.text) == full[cut:]

    async def test_resume_after_the_terminal_event_ends_at_once(self, client: httpx.AsyncClient, ids):
        full = parse_sse((await client.get(f"/v1/jobs/{ids['job']}/events")).text)
        r = await client.get(f"/v1/jobs/{ids['job']}/events", headers={"Last-Event-ID": str(full[-1]["id"])})
        assert r.status_code == 200
        assert parse_sse(r.text) == []

    async def test_other_owner_gets_404(self, other: httpx.AsyncClient, ids):
        assert_problem(await other.get(f"/v1/jobs/{ids['job']}/events"), 404)


async def test_unknown_job_is_404_problem(client: httpx.AsyncClient):
    assert_problem(await client.get("/v1/jobs/nope/events"), 404)


async def test_needs_a_key(anon: httpx.AsyncClient):
    assert (await anon.get("/v1/jobs/nope/events")).status_code == 401


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 20])
async def test_bad_last_event_id_is_422(client: httpx.AsyncClient, api: Api, value: str):
    net = (await api.network())["id"]
    ds = (await api.dataset())["id"]
    job = await api.job(net, ds)
    assert_problem(
        await client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": value}), 422, field="Last-Event-ID"
    )


async def test_cancelled_queued_job_streams_queued_then_cancelled(client: httpx.AsyncClient, api: Api):
    net = (await api.network())["id"]
    ds = (await api.dataset())["id"]
    job = await api.job(net, ds)
    assert (await client.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
    events = parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)
    assert [(e["id"], e["data"]["status"]) for e in events] == [(1, "queued"), (2, "cancelled")]
    assert events[-1]["data"]["reason"] == "cancelled by the user"
    assert events[-1]["data"]["model_id"] is None
    assert events[-1]["data"]["metrics"] is None


def test_openapi_documents_the_stream(app):
    op = app.openapi()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    names = {p["name"] for p in op["parameters"]}
    assert {"Last-Event-ID", "after"} <= names
