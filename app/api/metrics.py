"""Prometheus metrics: GET /metrics in the text exposition format (version 0.0.4), with no key, kept out of the
OpenAPI document. `install(app)` wires it; every app has its own registry (tests build many apps in one process).

Exported:
- `backprop_http_requests_total{method,route,status}` and `backprop_http_request_duration_seconds{method,route}`,
  recorded by `RequestMetrics`, a pure ASGI middleware (responses keep streaming). `route` is the route template
  (`/v1/jobs/{job_id}`), never the raw path. A request answered before routing (a 401 from Authenticate, a body
  refused by its Content-Length) counts under the route its path matches; one that matches none (unknown path,
  trailing-slash redirect) is `<unmatched>`. An unusual method is `OTHER`. A request is
  counted when its response starts (or as a 500 if it fails before that), and timed until its response ends,
  except event streams (`text/event-stream`): their length is how long the client listened, so they are counted
  but not timed.
- From the database, at scrape time (`DatabaseCollector`, one query per family through the read engine):
  `backprop_jobs{status}`, `backprop_queue_depth`, `backprop_epochs_completed_total`,
  `backprop_training_samples_per_second`, `backprop_workers`, `backprop_worker_heartbeat_age_seconds{worker}` and
  `backprop_worker_heartbeat_age_seconds_max`. These describe the whole deployment: every API replica reports the
  same values. If the database fails, those families are left out of that scrape, the error is logged, and
  `backprop_scrape_errors_total` goes up; the request metrics are still served.
- The Python client's process, platform and GC collectors (`process_*`, `python_*`) for this API process.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import AppState
from app.api.middleware import route_path
from app.api.openapi import routes_at
from app.db import stats
from app.db.session import Database
from app.domain import JobStatus
from app.errors import Unauthorized

log = logging.getLogger("backprop.metrics")

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# API latencies, plus the long tail of uploads and weight downloads.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A worker is alive if it beat within this many heartbeat intervals (it beats every `heartbeat_seconds`).
ALIVE_HEARTBEATS = 3
# Workers that stopped beating longer ago than this (and never marked themselves stopped: killed, host lost) drop
# out of the per-worker series, or every dead process id would stay a series forever.
HEARTBEAT_HORIZON = timedelta(hours=1)


class Metrics:
    """The registry of one app and the instruments the middleware updates."""

    def __init__(self, *, db: Database, heartbeat_seconds: float) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "backprop_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "backprop_http_request_duration_seconds",
            "Time from request to the end of the response, by method and route template (event streams excluded).",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.scrape_errors = Counter(
            "backprop_scrape_errors",
            "Scrapes whose database queries failed (the database families were left out).",
            registry=None,
        )
        # The registry collects in registration order: the errors counter after the collector that bumps it, so a
        # failed scrape already reports its own error.
        self.registry.register(DatabaseCollector(db, heartbeat_seconds=heartbeat_seconds, errors=self.scrape_errors))
        self.registry.register(self.scrape_errors)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class DatabaseCollector(Collector):
    """Job, queue, training and worker figures, read from the database each time the registry is collected."""

    def __init__(self, db: Database, *, heartbeat_seconds: float, errors: Counter) -> None:
        self.db, self.errors = db, errors
        self.alive_seconds = ALIVE_HEARTBEATS * heartbeat_seconds

    def describe(self) -> Iterable[Metric]:
        # Names only (the registry checks them for clashes); describing must not query the database.
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        try:
            with self.db.read_session() as session:
                snap = stats.snapshot(session, heartbeat_horizon=HEARTBEAT_HORIZON)
        except SQLAlchemyError as exc:
            log.warning("metrics scrape: database query failed, database metrics left out: %s", exc)
            self.errors.inc()
            return []
        return list(self._families(snap))

    def _families(self, snap: stats.Snapshot | None) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("backprop_jobs", "Jobs by status.", labels=["status"])
        queue = GaugeMetricFamily("backprop_queue_depth", "Queued jobs ready to run now (run_after has passed).")
        epochs = CounterMetricFamily("backprop_epochs_completed", "Training epochs completed, over all jobs.")
        speed = GaugeMetricFamily(
            "backprop_training_samples_per_second",
            "Training rows per second over running jobs, each as of its latest epoch record.",
        )
        workers = GaugeMetricFamily(
            "backprop_workers",
            f"Workers alive: not stopped, and heartbeat within {ALIVE_HEARTBEATS} heartbeat intervals.",
        )
        ages = GaugeMetricFamily(
            "backprop_worker_heartbeat_age_seconds",
            f"Seconds since each worker's last heartbeat (workers not stopped that beat in the last "
            f"{HEARTBEAT_HORIZON.total_seconds():.0f} s).",
            labels=["worker"],
        )
        age_max = GaugeMetricFamily(
            "backprop_worker_heartbeat_age_seconds_max",
            "The largest backprop_worker_heartbeat_age_seconds (0 when there is no such worker).",
        )
        if snap is not None:
            for status in JobStatus:
                jobs.add_metric([status.value], snap.jobs.get(status, 0))
            queue.add_metric([], snap.queue_depth)
            epochs.add_metric([], snap.epochs_completed)
            speed.add_metric([], snap.training_samples_per_second)
            beat_ages = {w: max(0.0, (snap.now - at).total_seconds()) for w, at in snap.heartbeats.items()}
            for worker, age in beat_ages.items():
                ages.add_metric([worker], age)
            workers.add_metric([], sum(age <= self.alive_seconds for age in beat_ages.values()))
            age_max.add_metric([], max(beat_ages.values(), default=0.0))
        yield from (jobs, queue, epochs, speed, workers, ages, age_max)


class RequestMetrics:
    """Counts and times every HTTP request by route template. Install it outermost, so that it also sees the
    answers other middleware give (a 413 from BodyLimit, a 500 from an unhandled error)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        started = timed = False

        async def counting_send(message: Message) -> None:
            nonlocal started, timed
            if message["type"] == "http.response.start" and not started:
                started = True
                timed = not _is_event_stream(message)
                self.metrics.requests.labels(method, route_template(scope), str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not started:   # the app raised before answering: the server error handler answers 500
                self.metrics.requests.labels(method, route_template(scope), "500").inc()
                timed = True
            if timed:
                self.metrics.duration.labels(method, route_template(scope)).observe(time.perf_counter() - t0)


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request (`/v1/jobs/{job_id}`), from the `route` the router
    stores in the scope once it has matched one (a full match, or the partial one that answers 405); for a request
    answered before routing, that of the route its path matches."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    app = scope.get("app")
    if isinstance(app, FastAPI):
        shapes = routes_at(app, route_path(scope), scope["method"])
        if shapes:
            return shapes[0].template
    return UNMATCHED


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bytes(value).lower().startswith(b"text/event-stream")
    return False


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus scrape target. A plain `def`: the database queries run in the threadpool, not the event loop.
    With BACKPROP_METRICS_TOKEN set, the scraper must send it as `Authorization: Bearer <token>`."""
    token = request.app.state.backprop.settings.metrics_token
    if token is not None:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("GET /metrics needs `Authorization: Bearer <BACKPROP_METRICS_TOKEN>`")
    body = request.app.state.metrics.exposition()
    return Response(body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"})


def install(app: FastAPI) -> None:
    """Serve GET /metrics and count every request. Call it after adding the other middleware (it must be the
    outermost) and after `app.state.backprop` is set."""
    st: AppState = app.state.backprop
    app.state.metrics = Metrics(db=st.db, heartbeat_seconds=st.settings.heartbeat_seconds)
    app.include_router(router)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
