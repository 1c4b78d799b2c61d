"""Retries (429/502/503/504, connection errors; Retry-After, backoff, bounds), Idempotency-Key reuse, and errors
carrying problem bodies, against scripted answers through httpx.MockTransport. Sleeps are recorded, not slept."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from app.client import (
    ApiConnectionError,
    ApiError,
    AsyncClient,
    AuthError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    ValidationError,
)
from app.client._core import parse_retry_after
from tests.client.fakes import fast_async_sleep, fast_sleep, problem

JOB = {
    "id": "j1",
    "status": "queued",
    "network_id": "n",
    "dataset_id": "d",
    "epoch": 0,
    "epochs": 3,
    "progress": 0.0,
    "attempt": 0,
    "max_attempts": 3,
    "spec": {},
    "created_at": "2024-06-01T12:00:00+00:00",
}
DATASET = {
    "id": "d1",
    "name": None,
    "n_samples": 2,
    "n_features": 1,
    "n_targets": 2,
    "task": "classification",
    "classes": ["a", "b"],
    "sha256": "0" * 64,
    "nbytes": 10,
    "created_at": "2024-06-01T12:00:00+00:00",
}
NETWORK = {
    "id": "n1",
    "name": None,
    "input_dim": 1,
    "layers": [{"units": 2, "activation": "softmax"}],
    "loss": "cross_entropy",
    "output_dim": 2,
    "n_params": 4,
    "task": "classification",
    "created_at": "2024-06-01T12:00:00+00:00",
}


class Script:
    """Answers requests in order from `answers` (a response, an exception to raise, or a callable); records them."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request.read()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


def make(script: Script, **kwargs: Any) -> tuple[Client, list[float]]:
    slept, sleep = fast_sleep()
    kwargs.setdefault("retry", RetryPolicy(max_attempts=5, backoff=0.5, max_backoff=8, max_elapsed=60))
    client = Client(
        "http://bp.test",
        "bp_live_test_key",
        transport=httpx.MockTransport(script),
        sleep=sleep,
        rng=random.Random(1),
        **kwargs,
    )
    return client, slept


def ok(body: dict[str, Any], status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def busy(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    r = problem(status, {429: "Too Many Requests", 503: "Service Unavailable"}.get(status, "Bad Gateway"), "busy")
    r.headers.update(headers)
    return r


def test_429_waits_retry_after_seconds_then_succeeds():
    script = Script(busy(429, "2"), busy(429, "0"), ok(JOB))
    client, slept = make(script)
    job = client.jobs.get("j1")
    assert job.id == "j1"
    assert slept == [2.0, 0.0]
    assert len(script.requests) == 3


def test_503_honours_retry_after_http_date():
    when = datetime.now(UTC) + timedelta(seconds=30)
    script = Script(busy(503, format_datetime(when, usegmt=True)), ok(JOB))
    client, slept = make(script)
    client.jobs.get("j1")
    assert len(slept) == 1
    assert 28.0 <= slept[0] <= 30.0


def test_parse_retry_after_forms():
    now = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Sat, 01 Jun 2024 12:00:05 GMT", now) == 5.0
    assert parse_retry_after("Sat, 01 Jun 2024 11:00:00 GMT", now) == 0.0  # in the past: no wait
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_5xx_without_retry_after_backs_off_exponentially_with_jitter(status):
    script = Script(busy(status), busy(status), busy(status), ok(JOB))
    client, slept = make(script)
    client.jobs.get("j1")
    assert len(slept) == 3
    for i, delay in enumerate(slept):
        base = 0.5 * 2**i
        assert base / 2 <= delay <= base, (i, delay)
    assert len(set(slept)) == 3


def test_connection_errors_are_retried():
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok(JOB))
    client, slept = make(script)
    assert client.jobs.get("j1").id == "j1"
    assert len(slept) == 2


def test_attempts_are_bounded_then_the_problem_is_raised():
    script = Script(busy(503))
    client, slept = make(script, retry=RetryPolicy(max_attempts=4, backoff=0.1))
    with pytest.raises(ServerError) as info:
        client.jobs.get("j1")
    assert len(script.requests) == 4
    assert len(slept) == 3
    err = info.value
    assert (err.status, err.title, err.detail) == (503, "Service Unavailable", "busy")
    assert err.body["detail"] == "busy"


def test_rate_limited_after_retries_carries_retry_after():
    script = Script(busy(429, "1"))
    client, _ = make(script, retry=RetryPolicy(max_attempts=2))
    with pytest.raises(RateLimitedError) as info:
        client.jobs.list()
    assert info.value.retry_after == 1.0
    assert len(script.requests) == 2


def test_total_time_bounds_retries():
    # The server asks for 30 s but the call may only take 10 s in all: give up at once.
    script = Script(busy(503, "30"), ok(JOB))
    client, slept = make(script, retry=RetryPolicy(max_elapsed=10))
    with pytest.raises(ServerError):
        client.jobs.get("j1")
    assert slept == []
    assert len(script.requests) == 1


def test_retry_after_longer_than_allowed_is_not_waited():
    script = Script(busy(429, "3600"), ok(JOB))
    client, slept = make(script, retry=RetryPolicy(max_retry_after=60, max_elapsed=10_000))
    with pytest.raises(RateLimitedError):
        client.jobs.get("j1")
    assert slept == []


def test_connection_refused_every_time_is_an_api_connection_error():
    script = Script(httpx.ConnectError("[Errno 111] Connection refused"))
    client, slept = make(script, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(ApiConnectionError, match=r"Connection refused.*after 3 attempts"):
        client.jobs.get("j1")
    assert len(slept) == 2


def test_non_retryable_errors_are_raised_at_once_with_their_problem():
    script = Script(problem(404, "Not Found", "no job with id 'x'"))
    client, slept = make(script)
    with pytest.raises(NotFoundError) as info:
        client.jobs.get("x")
    assert slept == []
    assert info.value.detail == "no job with id 'x'"
    assert str(info.value) == "404 Not Found: no job with id 'x'"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ValidationError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, ValidationError),
        (500, ServerError),
        (413, ApiError),
    ],
)
def test_status_maps_to_error_class(status, cls):
    errors = [{"field": "layers[0].units", "message": "must be >= 1"}]
    client, _ = make(
        Script(problem(status, "T", "D", field="layers[0].units", errors=errors)), retry=RetryPolicy(max_attempts=1)
    )
    with pytest.raises(cls) as info:
        client.networks.get("n1")
    e = info.value
    assert type(e) is cls
    assert (e.status, e.title, e.detail, e.field, e.errors) == (status, "T", "D", "layers[0].units", errors)
    assert e.body["status"] == status


def test_error_without_a_json_body_still_says_what_happened():
    client, _ = make(
        Script(httpx.Response(502, text="<html>Bad gateway from nginx</html>")), retry=RetryPolicy(max_attempts=1)
    )
    with pytest.raises(ServerError) as info:
        client.jobs.get("j1")
    assert info.value.title == "Bad Gateway"
    assert "nginx" in (info.value.detail or "")


def keys_of(script: Script) -> list[str | None]:
    return [r.headers.get("Idempotency-Key") for r in script.requests]


def test_job_create_reuses_one_idempotency_key_across_retries_and_a_new_one_per_call():
    script = Script(busy(503), httpx.ReadError("reset"), busy(502), ok(JOB, 202), ok(JOB, 202))
    client, slept = make(script)
    client.jobs.create("n", "d", epochs=3, optimizer="sgd", learning_rate=0.1, seed=1)
    assert len(slept) == 3
    first = keys_of(script)[:4]
    assert len(set(first)) == 1
    assert uuid.UUID(first[0]).version == 4
    # Every attempt sent the same body.
    assert len({r.content for r in script.requests[:4]}) == 1
    assert b'"optimizer":{"name":"sgd","learning_rate":0.1}' in script.requests[0].content.replace(b" ", b"")
    client.jobs.create("n", "d", epochs=3)
    assert keys_of(script)[4] != first[0]


def test_explicit_idempotency_key_is_sent():
    script = Script(ok(JOB, 202))
    client, _ = make(script)
    client.jobs.create("n", "d", idempotency_key="my-key-1")
    assert keys_of(script) == ["my-key-1"]


def test_dataset_upload_resends_the_whole_file_with_the_same_key(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"x,y\n1,a\n2,b\n")
    with path.open("rb") as f:
        for source in (path, str(path), b"x,y\n1,a\n2,b\n", f):
            script = Script(httpx.WriteError("broken pipe"), busy(504), ok(DATASET, 201))
            client, _ = make(script)
            ds = client.datasets.upload(source, target="y", name="tiny")
            assert ds.classes == ["a", "b"]
            assert len(set(keys_of(script))) == 1
            for r in script.requests[1:]:
                assert b"x,y\n1,a\n2,b\n" in r.content
                assert b'name="target"\r\n\r\ny' in r.content


def test_dataset_from_rows_is_retried_with_the_same_key():
    script = Script(busy(503), ok(DATASET, 201))
    client, _ = make(script)
    client.datasets.create([[1.0], [2.0]], ["a", "b"], name="rows")
    assert len(set(keys_of(script))) == 1
    assert len(script.requests) == 2


def test_network_create_is_retried_with_one_idempotency_key_even_after_a_lost_answer():
    # The server deduplicates network creates by Idempotency-Key, so a lost answer (502, 504, a reset) is resent too.
    script = Script(
        busy(502), httpx.ReadError("reset"), busy(429, "1"), httpx.ConnectError("refused"), ok(NETWORK, 201)
    )
    client, _ = make(script)
    net = client.networks.create(input_dim=1, layers=[{"units": 2, "activation": "softmax"}], loss="cross_entropy")
    assert net.id == "n1"
    assert len(script.requests) == 5
    assert len(set(keys_of(script))) == 1


def test_cancel_whose_first_answer_was_lost_returns_the_cancelled_job():
    cancelled = {**JOB, "status": "cancelled"}
    script = Script(
        httpx.ReadError("reset after the server cancelled it"),
        problem(409, "Conflict", "job j1 is already cancelled; only queued or running jobs can be cancelled"),
        ok(cancelled),
    )
    client, _ = make(script)
    job = client.jobs.cancel("j1")
    assert job.status == "cancelled"
    assert [(r.method, r.url.path) for r in script.requests] == [
        ("POST", "/v1/jobs/j1/cancel"),
        ("POST", "/v1/jobs/j1/cancel"),
        ("GET", "/v1/jobs/j1"),
    ]


def test_cancel_of_a_finished_job_is_a_conflict():
    detail = "job j1 is already succeeded; only queued or running jobs can be cancelled"
    script = Script(problem(409, "Conflict", detail))
    client, _ = make(script)
    with pytest.raises(ConflictError, match="already succeeded"):
        client.jobs.cancel("j1")
    assert len(script.requests) == 1


def test_retried_cancel_409_for_a_job_that_finished_otherwise_is_still_a_conflict():
    script = Script(
        busy(502), problem(409, "Conflict", "job j1 is already succeeded"), ok({**JOB, "status": "succeeded"})
    )
    client, _ = make(script)
    with pytest.raises(ConflictError):
        client.jobs.cancel("j1")


def test_requests_carry_the_key_and_env_defaults(monkeypatch):
    monkeypatch.setenv("BACKPROP_URL", "http://from-env.test:9999/")
    monkeypatch.setenv("BACKPROP_API_KEY", "bp_live_env_key")
    script = Script(ok(JOB))
    client = Client(transport=httpx.MockTransport(script))
    assert client.url == "http://from-env.test:9999"
    client.jobs.get("j1")
    request = script.requests[0]
    assert str(request.url) == "http://from-env.test:9999/v1/jobs/j1"
    assert request.headers["Authorization"] == "Bearer bp_live_env_key"
    # Arguments win over the environment.
    assert Client("http://arg.test", "k2").url == "http://arg.test"
    assert Client("http://arg.test", "k2").api_key == "k2"


def test_policy_validates_its_bounds():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# --- async parity -------------------------------------------------------------------------------------------------


def amake(script: Script, **kwargs: Any) -> tuple[AsyncClient, list[float]]:
    slept, sleep = fast_async_sleep()
    kwargs.setdefault("retry", RetryPolicy(max_attempts=5))
    client = AsyncClient(
        "http://bp.test",
        "bp_live_test_key",
        transport=httpx.MockTransport(script),
        sleep=sleep,
        rng=random.Random(1),
        **kwargs,
    )
    return client, slept


@pytest.mark.anyio
async def test_async_retries_honour_retry_after_and_reuse_the_idempotency_key():
    script = Script(busy(429, "3"), httpx.ConnectError("refused"), ok(JOB, 202))
    client, slept = amake(script)
    async with client:
        job = await client.jobs.create("n", "d", epochs=3)
    assert job.id == "j1"
    assert slept[0] == 3.0
    assert len(slept) == 2
    assert len(set(keys_of(script))) == 1


@pytest.mark.anyio
async def test_async_errors_carry_the_problem_and_cancel_is_careful():
    script = Script(
        problem(
            422,
            "Unprocessable Content",
            "epochs: too big",
            field="epochs",
            errors=[{"field": "epochs", "message": "too big"}],
        )
    )
    client, _ = amake(script)
    with pytest.raises(ValidationError) as info:
        await client.jobs.create("n", "d", epochs=10**9)
    assert info.value.field == "epochs"
    assert info.value.errors == [{"field": "epochs", "message": "too big"}]

    cancelled = {**JOB, "status": "cancelled"}
    script2 = Script(httpx.ReadError("reset"), problem(409, "Conflict", "already cancelled"), ok(cancelled))
    client2, _ = amake(script2)
    async with client2:
        assert (await client2.jobs.cancel("j1")).status == "cancelled"
    await client.aclose()


def _page_handler(total: int) -> Callable[[httpx.Request], httpx.Response]:
    ids = [f"n{i:02d}" for i in range(total)]

    def handler(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params.get("limit", "20"))
        after = request.url.params.get("after")
        start = ids.index(after) + 1 if after else 0
        chunk = ids[start : start + limit]
        return ok({"data": [{**NETWORK, "id": i} for i in chunk], "has_more": start + limit < total})

    return handler


def test_pagination_helpers_follow_after_and_has_more():
    script = Script(_page_handler(7))
    client, _ = make(script)
    page = client.networks.list(limit=3)
    assert [n.id for n in page] == ["n00", "n01", "n02"]
    assert page.has_more
    second = page.next_page()
    assert second is not None
    assert [n.id for n in second] == ["n03", "n04", "n05"]
    assert [n.id for n in client.networks.iter(page_size=3)] == [f"n{i:02d}" for i in range(7)]
    afters = [r.url.params.get("after") for r in script.requests[-3:]]
    assert afters == [None, "n02", "n05"]
    last = client.networks.list(limit=3, after="n05")
    assert not last.has_more
    assert last.next_page() is None


@pytest.mark.anyio
async def test_async_pagination_helpers():
    script = Script(_page_handler(5))
    client, _ = amake(script)
    async with client:
        assert [n.id async for n in client.networks.iter(page_size=2)] == [f"n{i:02d}" for i in range(5)]
        page = await client.networks.list(limit=4)
        nxt = await page.next_page()
        assert nxt is not None
        assert [n.id for n in nxt] == ["n04"]
        assert await nxt.next_page() is None
