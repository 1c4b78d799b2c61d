"""Error answers (DESIGN.md §8): problem+json everywhere (the `recorder` fixture scans every response of every
test in this directory for the format, for tracebacks and for file paths); a locked database is a 503 with
Retry-After, never a 500; a 405 names the allowed methods."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from tests.api.conftest import network_body
from tests.security.conftest import ALICE, Recorder, Template, assert_problem, random_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def template(world_template: Template) -> Template:
    return world_template


async def test_a_locked_database_is_a_503_with_retry_after(
    db_path: Path, settings: Settings, clients: Callable[..., httpx.AsyncClient], template: Template,
    ids: dict[str, str], recorder: Recorder,
):
    recorder.allow_5xx = {503}
    db = Database(settings.database_url, busy_timeout_ms=200)
    try:
        c = clients(template.keys[ALICE], create_app(settings, db=db))
        assert (await c.get("/v1/networks")).status_code == 200  # records the key's use now, before the lock
        locker = sqlite3.connect(db_path, isolation_level=None, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            writes = [
                ("POST", "/v1/networks", {"json": network_body(2, (3,))}),
                ("POST", "/v1/datasets", {"json": {"features": [[0.0], [1.0]], "targets": ["a", "b"]}}),
                ("POST", "/v1/datasets", {"files": {"file": ("d.csv", b"x,y\n0,a\n1,b\n", "text/csv")}}),
                ("POST", "/v1/jobs", {"json": {"network_id": ids["network"], "dataset_id": ids["dataset"]}}),
                ("POST", f"/v1/jobs/{ids['queued_job']}/cancel", {}),
                ("DELETE", f"/v1/networks/{ids['network']}", {}),
                ("DELETE", f"/v1/models/{ids['model']}", {}),
            ]
            for method, path, kw in writes:
                r = await c.request(method, path, **kw)
                body = assert_problem(r, 503)
                assert int(r.headers["retry-after"]) > 0, (method, path)
                assert "locked" not in body["detail"].lower() or "busy" in body["detail"].lower()
            # Reads go on (WAL): the lock holds back writers only.
            assert (await c.get(f"/v1/networks/{ids['network']}")).status_code == 200
            assert (await c.get(f"/v1/jobs/{ids['queued_job']}")).status_code == 200
        finally:
            locker.rollback()
            locker.close()
        # Nothing was half-done, and the service recovers at once.
        assert (await c.get(f"/v1/jobs/{ids['queued_job']}")).json()["status"] == "queued"
        assert (await c.get(f"/v1/networks/{ids['network']}")).status_code == 200
        assert (await c.post("/v1/networks", json=network_body(2, (3,)))).status_code == 201
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/jobs/{id}", {"GET"}),
        ("PUT", "/v1/networks", {"GET", "POST"}),
        ("PATCH", "/v1/models/{id}", {"GET", "DELETE"}),
        ("GET", "/v1/models/{id}/predict", {"POST"}),
    ],
)
async def test_a_405_lists_the_allowed_methods(alice: httpx.AsyncClient, method: str, path: str, allowed: set[str]):
    """RFC 9110 §15.5.6: a 405 MUST carry Allow with the target's methods (app/api/errors.py builds it)."""
    r = await alice.request(method, path.replace("{id}", random_id()))
    body = assert_problem(r, 405)
    listed = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
    assert allowed <= listed, (r.headers.get("allow"), body)
    assert all(m in body["detail"] for m in allowed), body


async def test_unknown_paths_and_types_are_problems(alice: httpx.AsyncClient, anon: httpx.AsyncClient):
    assert_problem(await alice.get("/v1/nothing"), 404)
    assert_problem(await anon.get("/nothing"), 404)
    r = await alice.post("/v1/networks", content=b"<xml/>", headers={"content-type": "application/xml"})
    assert_problem(r, 415)
    r = await alice.post("/v1/datasets", content=b"<xml/>", headers={"content-type": "application/xml"})
    assert_problem(r, 415)


def test_the_response_scanner_catches_what_it_should() -> None:
    """The guard behind every test here: a traceback, a path, a non-problem error or a 500 are all reported."""
    req = httpx.Request("GET", "http://test/v1/x")

    def resp(status: int, body: str, ctype: str = "application/problem+json") -> httpx.Response:
        return httpx.Response(status, content=body.encode(), headers={"content-type": ctype}, request=req)

    good = '{"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such thing"}'
    bad = [
        resp(404, '{"detail": "Not Found"}'),
        resp(404, good, "application/json"),
        resp(500, '{"type": "about:blank", "title": "Internal", "status": 500, "detail": "oops"}'),
        resp(200, '{"x": "Traceback (most recent call last):\\n  File \\"/srv/app/x.py\\", line 3"}', "text/plain"),
        resp(422, '{"type": "t", "title": "t", "status": 422, "detail": "see /tmp/pytest-1/var/api.db"}'),
    ]
    rec = Recorder(responses=[resp(404, good), *bad])
    assert len(rec.violations()) == len(bad), rec.violations()
