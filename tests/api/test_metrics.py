"""GET /metrics: request counters and latencies by route template, and job, queue, training and worker figures read
from the database at scrape time. Every assertion parses the exposition with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app.config import Settings
from app.db.base import utcnow
from app.db.models import EpochMetric, Job, Worker
from app.db.session import Database
from app.domain import JobStatus
from app.main import create_app
from tests.api.conftest import OWNER, Api, Template, blobs_csv, client_for, random_id, small_settings

pytestmark = pytest.mark.anyio

REQUESTS = "backprop_http_requests_total"
DURATION_COUNT = "backprop_http_request_duration_seconds_count"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TIMEOUT = 30.0


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels, or None if the exposition has no such sample."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def labelled(text: str, name: str, label: str) -> dict[str, float]:
    """{label value: sample value} for every sample `name` (one label)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels[label]] = float(sample.value)
    return out


async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers["content-type"]
    return r.text


def set_jobs(db: Database, job_ids: list[str], **values: Any) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(**values))


def add_epochs(db: Database, job_id: str, seconds: list[float]) -> None:
    with db.session() as session:
        session.add_all(
            EpochMetric(job_id=job_id, epoch=i, loss=1.0 / i, val_loss=None, metrics={}, seconds=s)
            for i, s in enumerate(seconds, start=1)
        )


# --- request metrics -----------------------------------------------------------------------------------------------


async def test_metrics_needs_no_key_and_is_not_in_the_openapi_document(anon: httpx.AsyncClient):
    text = await scrape(anon)
    assert value(text, "backprop_scrape_errors_total") == 0
    paths = (await anon.get("/openapi.json")).json()["paths"]
    assert "/metrics" not in paths
    assert "/v1/jobs/{job_id}" in paths


async def test_requests_are_counted_by_route_template_never_the_raw_path(
    client: httpx.AsyncClient, anon: httpx.AsyncClient
):
    missing = [random_id(), random_id()]
    for job_id in missing:
        assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 404
    assert (await anon.get(f"/v1/jobs/{missing[0]}")).status_code == 401
    for _ in range(3):
        assert (await anon.get("/healthz")).status_code == 200
    assert (await anon.get(f"/no/such/{missing[1]}")).status_code == 404
    assert (await anon.delete("/healthz")).status_code == 405

    text = await scrape(anon)
    assert value(text, REQUESTS, method="GET", route="/v1/jobs/{job_id}", status="404") == 2
    assert value(text, REQUESTS, method="GET", route="/v1/jobs/{job_id}", status="401") == 1
    assert value(text, REQUESTS, method="GET", route="/healthz", status="200") == 3
    assert value(text, REQUESTS, method="GET", route="<unmatched>", status="404") == 1
    assert value(text, REQUESTS, method="DELETE", route="/healthz", status="405") == 1
    assert value(text, DURATION_COUNT, method="GET", route="/healthz") == 3
    assert value(text, DURATION_COUNT, method="GET", route="/v1/jobs/{job_id}") == 3
    for job_id in missing:   # no raw path leaks into a label
        assert job_id not in text
    # The histogram's buckets are cumulative and end with every observation.
    inf = value(text, "backprop_http_request_duration_seconds_bucket", method="GET", route="/healthz", le="+Inf")
    assert inf == 3
    # A scrape is counted once its response starts, so the next scrape sees the previous one.
    again = await scrape(anon)
    assert value(again, REQUESTS, method="GET", route="/metrics", status="200") == 1


async def test_an_unusual_method_is_one_label_value(anon: httpx.AsyncClient):
    for method in ("FROB", "BREW"):
        assert (await anon.request(method, "/healthz")).status_code == 405
    text = await scrape(anon)
    assert value(text, REQUESTS, method="OTHER", route="/healthz", status="405") == 2
    assert "FROB" not in text
    assert "BREW" not in text


async def test_each_app_has_its_own_registry(settings: Settings, db: Database):
    first, second = create_app(settings, db=db), create_app(settings, db=db)
    async with client_for(first, None) as a, client_for(second, None) as b:
        assert (await a.get("/healthz")).status_code == 200
        assert value(await scrape(a), REQUESTS, method="GET", route="/healthz", status="200") == 1
        assert value(await scrape(b), REQUESTS, method="GET", route="/healthz", status="200") is None


async def test_uploads_pass_through_and_body_limit_answers_are_counted(settings: Settings, db: Database, template):
    app = create_app(settings.model_copy(update={"max_upload_bytes": 4096}), db=db)
    csv = blobs_csv(20)   # 60 rows: ~1 KiB
    assert len(csv) < 4096
    async with client_for(app, template.keys[OWNER]) as client:
        ok = await client.post("/v1/datasets", files={"file": ("b.csv", csv, "text/csv")}, data={"target": "color"})
        assert ok.status_code == 201, ok.text
        assert ok.json()["n_samples"] == 60
        # Refused by its Content-Length before any route is matched.
        big = await client.post("/v1/datasets", files={"file": ("b.csv", csv * 5, "text/csv")}, data={"target": "c"})
        assert big.status_code == 413, big.text

        # No Content-Length: refused while the route reads the body, after routing.
        async def chunks():
            for _ in range(5):
                yield b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.csv\"\r\n\r\n" + csv

        streamed = await client.post(
            "/v1/datasets", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xx"}
        )
        assert streamed.status_code == 413, streamed.text
        text = await scrape(client)
    assert value(text, REQUESTS, method="POST", route="/v1/datasets", status="201") == 1
    # Both 413s count under the route: the one refused before routing by the path it names.
    assert value(text, REQUESTS, method="POST", route="<unmatched>", status="413") is None
    assert value(text, REQUESTS, method="POST", route="/v1/datasets", status="413") == 2
    assert value(text, REQUESTS, method="POST", route="/v1/datasets", status="500") is None


async def test_event_stream_streams_and_is_counted_when_it_starts_but_not_timed(
    app: FastAPI, client: httpx.AsyncClient, anon: httpx.AsyncClient, api: Api
):
    net, ds = await api.network(), await api.dataset()
    job = await api.job(net["id"], ds["id"])
    # Drive the app as a server would: the stream of a queued job stays open, and its first bytes must reach the
    # client while it does (nothing buffers the response).
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": f"/v1/jobs/{job['id']}/events", "raw_path": f"/v1/jobs/{job['id']}/events".encode(),
        "root_path": "", "query_string": b"", "server": ("test", 80), "client": ("127.0.0.1", 1234),
        "headers": [(b"host", b"test"), (b"authorization", client.headers["authorization"].encode())],
    }
    requested = False
    disconnect = asyncio.Event()
    first_body = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()   # as a server does: "disconnect" once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            if message.get("body"):
                first_body.set()
            if not message.get("more_body", False):
                disconnect.set()

    task = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(first_body.wait(), TIMEOUT)
        assert sent[0]["status"] == 200
        assert b"retry:" in b"".join(m.get("body", b"") for m in sent[1:])
        assert not task.done()   # still streaming
        text = await scrape(anon)
        assert value(text, REQUESTS, method="GET", route="/v1/jobs/{job_id}/events", status="200") == 1
        assert (await client.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
        await asyncio.wait_for(task, TIMEOUT)   # the terminal event ends the stream
    finally:
        disconnect.set()
        if not task.done():
            task.cancel()
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"cancelled" in body
    text = await scrape(anon)
    assert value(text, REQUESTS, method="GET", route="/v1/jobs/{job_id}/events", status="200") == 1
    assert value(text, DURATION_COUNT, method="GET", route="/v1/jobs/{job_id}/events") is None
    assert value(text, DURATION_COUNT, method="POST", route="/v1/jobs/{job_id}/cancel") == 1


# --- database figures ----------------------------------------------------------------------------------------------


async def test_jobs_by_status_and_queue_depth(client: httpx.AsyncClient, anon: httpx.AsyncClient, api: Api, db):
    text = await scrape(anon)
    assert labelled(text, "backprop_jobs", "status") == dict.fromkeys(STATUSES, 0.0)
    assert value(text, "backprop_queue_depth") == 0

    net, ds = await api.network(), await api.dataset()
    jobs = [(await api.job(net["id"], ds["id"]))["id"] for _ in range(4)]
    assert (await client.post(f"/v1/jobs/{jobs[0]}/cancel")).status_code == 202
    set_jobs(db, [jobs[1]], run_after=utcnow() + timedelta(hours=1))   # a retry waiting for its backoff
    set_jobs(db, [jobs[2]], status=JobStatus.RUNNING)

    text = await scrape(anon)
    assert labelled(text, "backprop_jobs", "status") == {
        "queued": 2, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1
    }
    assert value(text, "backprop_queue_depth") == 1   # jobs[3] only


async def test_epochs_completed_and_samples_per_second_of_running_jobs(
    api: Api, anon: httpx.AsyncClient, db: Database
):
    net, ds = await api.network(), await api.dataset()
    assert ds["n_samples"] == 12
    split = (await api.job(net["id"], ds["id"], validation_split=0.3))["id"]   # holds out round(3.6) = 4 rows
    whole = (await api.job(net["id"], ds["id"]))["id"]
    done = (await api.job(net["id"], ds["id"]))["id"]
    fresh = (await api.job(net["id"], ds["id"]))["id"]   # running, no epoch yet
    set_jobs(db, [split, whole, fresh], status=JobStatus.RUNNING)
    set_jobs(db, [done], status=JobStatus.SUCCEEDED)
    add_epochs(db, split, [1.0, 0.5])   # the latest epoch counts: 8 rows / 0.5 s
    add_epochs(db, whole, [0.25])       # 12 rows / 0.25 s
    add_epochs(db, done, [0.1, 0.1, 0.1])   # finished: adds epochs, not speed

    text = await scrape(anon)
    assert value(text, "backprop_epochs_completed_total") == 6
    assert value(text, "backprop_training_samples_per_second") == pytest.approx(8 / 0.5 + 12 / 0.25)

    with db.session() as session:   # the split job slows down: its latest epoch took 2 s
        session.add(EpochMetric(job_id=split, epoch=3, loss=0.1, metrics={}, seconds=2.0))
    text = await scrape(anon)
    assert value(text, "backprop_epochs_completed_total") == 7
    assert value(text, "backprop_training_samples_per_second") == pytest.approx(8 / 2.0 + 12 / 0.25)


class TestTrainedJob:
    @pytest.fixture
    def template(self, trained_template: Template) -> Template:
        return trained_template

    async def test_a_real_job_counts_its_epochs(self, client: httpx.AsyncClient, anon: httpx.AsyncClient, ids):
        history = (await client.get(f"/v1/jobs/{ids['job']}/history")).json()["data"]
        assert len(history) == 12
        text = await scrape(anon)
        assert value(text, "backprop_epochs_completed_total") == len(history)
        assert labelled(text, "backprop_jobs", "status") == {**dict.fromkeys(STATUSES, 0.0), "succeeded": 1}
        assert value(text, "backprop_queue_depth") == 0
        assert value(text, "backprop_training_samples_per_second") == 0


async def test_workers_alive_and_heartbeat_ages(anon: httpx.AsyncClient, db: Database, settings: Settings):
    text = await scrape(anon)
    assert value(text, "backprop_workers") == 0
    assert labelled(text, "backprop_worker_heartbeat_age_seconds", "worker") == {}
    assert value(text, "backprop_worker_heartbeat_age_seconds_max") == 0

    now = utcnow()
    stale_age = 3 * settings.heartbeat_seconds + 60   # missed more than three beats

    def worker(worker_id: str, age: float, stopped: bool = False) -> Worker:
        beat = now - timedelta(seconds=age)
        return Worker(id=worker_id, hostname="h", pid=1, started_at=beat - timedelta(seconds=5), heartbeat_at=beat,
                      stopped_at=beat if stopped else None)

    with db.session() as session:
        session.add_all([
            worker("h:1:alive", 0.0),
            worker("h:2:alive", 0.0),
            worker("h:3:stale", stale_age),
            worker("h:4:stopped", 0.0, stopped=True),      # exited cleanly: gone from the figures
            worker("h:5:long-dead", 2 * 24 * 3600),        # died days ago without stopping: no longer a series
        ])
    text = await scrape(anon)
    assert value(text, "backprop_workers") == 2
    ages = labelled(text, "backprop_worker_heartbeat_age_seconds", "worker")
    assert set(ages) == {"h:1:alive", "h:2:alive", "h:3:stale"}
    assert 0 <= ages["h:1:alive"] < 3 * settings.heartbeat_seconds + TIMEOUT
    assert stale_age <= ages["h:3:stale"] < stale_age + TIMEOUT
    assert value(text, "backprop_worker_heartbeat_age_seconds_max") == ages["h:3:stale"]


async def test_database_error_leaves_out_database_families_only(empty_db_url: str, caplog: pytest.LogCaptureFixture):
    settings = small_settings(empty_db_url)   # never migrated: every table is missing
    db = Database(settings.database_url)
    try:
        async with client_for(create_app(settings, db=db), None) as anon:
            assert (await anon.get("/healthz")).status_code == 200
            with caplog.at_level(logging.WARNING, logger="backprop.metrics"):
                text = await scrape(anon)
            assert value(text, REQUESTS, method="GET", route="/healthz", status="200") == 1
            assert value(text, "backprop_scrape_errors_total") == 1
            for name in ("backprop_jobs", "backprop_queue_depth", "backprop_epochs_completed", "backprop_workers"):
                assert name not in text
            assert any("database query failed" in r.getMessage() for r in caplog.records), caplog.text
            assert value(await scrape(anon), "backprop_scrape_errors_total") == 2
    finally:
        db.dispose()


async def test_metrics_token_when_set_is_required(settings: Settings, db: Database):
    token = "s3cret-scrape-token-0123"
    app = create_app(settings.model_copy(update={"metrics_token": token}), db=db)
    async with client_for(app, None) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer wrong-token-wrong-token"})).status_code == 401
        r = await c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert "backprop_http_requests_total" in r.text
