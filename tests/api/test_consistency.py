"""A 2xx answer means the change is durable: it must be committed before the response goes out, or a client that
reads right after the answer (another connection, another worker process) misses it, and a failed commit after the
answer leaves the client holding an id that never existed."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.db.models import Dataset, Job, Network
from app.db.session import Database
from tests.api.conftest import OWNER, Api, Template

pytestmark = pytest.mark.anyio

Probe = Callable[[Database, bytes], Any]


def probing(app: ASGIApp, on_sent: Callable[[bytes], None]) -> ASGIApp:
    """`app`, calling `on_sent(body)` at the moment the last byte of each response is handed to the server."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []

        async def send_and_probe(message: Message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    on_sent(b"".join(chunks))
            await send(message)

        await app(scope, receive, send_and_probe)

    return wrapped


@pytest.fixture
async def probed(app: FastAPI, template: Template, settings: Settings):
    """(client, results): `results` gets, per response, what `probe` saw on a separate connection as it was sent."""
    observer = Database(settings.database_url)
    state: dict[str, Any] = {"probe": None, "results": []}

    def on_sent(body: bytes) -> None:
        if state["probe"] is not None:
            state["results"].append(state["probe"](observer, body))

    transport = httpx.ASGITransport(app=probing(app, on_sent))
    headers = {"Authorization": f"Bearer {template.keys[OWNER]}"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
            yield c, state
    finally:
        observer.dispose()


def row(db: Database, cls: type, id_: str) -> Any:
    with db.read_session() as s:
        return s.get(cls, id_)


async def test_created_network_is_committed_before_the_201(probed):
    c, state = probed
    state["probe"] = lambda db, body: row(db, Network, json.loads(body)["id"]) is not None
    r = await c.post(
        "/v1/networks",
        json={"input_dim": 2, "layers": [{"units": 2, "activation": "softmax"}], "loss": "cross_entropy"},
    )
    assert r.status_code == 201
    assert state["results"] == [True]


async def test_created_dataset_is_committed_before_the_201(probed):
    c, state = probed
    state["probe"] = lambda db, body: row(db, Dataset, json.loads(body)["id"]) is not None
    r = await c.post("/v1/datasets", json={"features": [[0], [1]], "targets": ["a", "b"]})
    assert r.status_code == 201
    assert state["results"] == [True]


async def test_submitted_job_is_committed_before_the_202(probed):
    c, state = probed
    api = Api(c)
    net, ds = await api.network(), await api.dataset()

    def probe(db: Database, body: bytes) -> Any:
        job = row(db, Job, json.loads(body)["id"])
        return None if job is None else str(job.status)

    state["probe"] = probe
    r = await c.post("/v1/jobs", json={"network_id": net["id"], "dataset_id": ds["id"]})
    assert r.status_code == 202
    assert state["results"] == ["queued"]


async def test_cancel_is_committed_before_the_202(probed):
    c, state = probed
    api = Api(c)
    job = await api.job((await api.network())["id"], (await api.dataset())["id"])
    state["probe"] = lambda db, body: str(row(db, Job, job["id"]).status)
    r = await c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202
    assert state["results"] == ["cancelled"]


async def test_network_delete_is_committed_before_the_204(probed):
    c, state = probed
    net = await Api(c).network()
    state["probe"] = lambda db, body: row(db, Network, net["id"]).deleted_at is not None
    r = await c.delete(f"/v1/networks/{net['id']}")
    assert r.status_code == 204
    assert state["results"] == [True]
