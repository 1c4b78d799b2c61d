"""Security fixtures: the app in process (httpx ASGITransport) on a migrated SQLite file copied per test.

Two session templates are built once: `keys_template` (schema + API keys for three owners and one revoked key)
and `world_template` (that, plus alice's network, CSV dataset, a succeeded job with its model, and a queued job;
bob's own network and dataset). Every response a test's clients receive is recorded and, at teardown, scanned:
an error must be problem+json with type/title/status/detail, no body may hold a traceback or a file path, and no
5xx is allowed unless the test opts in (`recorder.allow_5xx`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db.migrate import upgrade
from app.db.session import Database
from app.main import create_app
from app.services import keys
from app.worker.loop import Supervisor
from tests.api.conftest import Api, blobs_csv, copy_db, make_key, network_body, random_id, sqlite_url

ALICE, BOB, CAROL = "alice", "bob", "carol"
OWNERS = (ALICE, BOB, CAROL)
PROBLEM = "application/problem+json"
KEY_RE = re.compile(r"^bp_live_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$")

# What must never appear in a response body: a Python traceback, a source location, a filesystem path.
LEAK_RE = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\.py[\"':, ]|site-packages|/tmp/|/work/|/home/|"
    r"/usr/lib|sqlalchemy\.|sqlite3\.|psycopg"
)


# Lines for the end-of-run summary (case counts, memory numbers): pytest_terminal_summary prints them.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("security suite")
        for line in SUMMARY:
            terminalreporter.write_line(line)


@dataclass(frozen=True)
class Template:
    path: Path
    keys: dict[str, str]
    revoked: str
    ids: dict[str, str] = field(default_factory=dict)


def secret_of(key: str) -> str:
    parts = keys.split_key(key)
    assert parts is not None, key
    return parts[1]


def prefix_of(key: str) -> str:
    parts = keys.split_key(key)
    assert parts is not None, key
    return parts[0]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def small_settings(url: str, **limits: Any) -> Settings:
    """Test settings (Settings is frozen: limits are given at construction)."""
    return Settings(
        database_url=url, lease_seconds=2.0, heartbeat_seconds=0.5, poll_seconds=0.1, reaper_seconds=1.0, **limits
    )


def assert_problem(r: httpx.Response, status: int, *needles: str, field: str | None = None) -> dict[str, Any]:
    """A problem+json answer with this status whose detail mentions every needle (case-insensitive)."""
    assert r.status_code == status, (r.status_code, r.text[:2000])
    assert r.headers.get("content-type", "").startswith(PROBLEM), r.headers.get("content-type")
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status, body
    for needle in needles:
        assert needle.lower() in str(body["detail"]).lower(), (needle, body)
    if field is not None:
        assert body.get("field") == field, body
    return body


def problem_names(body: dict[str, Any], name: str) -> bool:
    """True if the problem names `name`: as its field, in an errors[].field, or in its detail."""
    fields = [body.get("field")] + [e.get("field") for e in body.get("errors") or []]
    return any(f == name for f in fields) or name in str(body.get("detail", ""))


# --- response scanning ---------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Every response this test's clients saw; checked at teardown."""

    responses: list[httpx.Response] = field(default_factory=list)
    allow_5xx: set[int] = field(default_factory=set)

    async def hook(self, response: httpx.Response) -> None:
        await response.aread()
        self.responses.append(response)

    def violations(self) -> list[str]:
        out = []
        for r in self.responses:
            where = f"{r.request.method} {r.request.url.path[:120]} -> {r.status_code}"
            text = r.content.decode("utf-8", "replace") if not _is_binary(r) else ""
            if LEAK_RE.search(text):
                out.append(f"{where}: body leaks internals: {text[:300]!r}")
            if r.status_code >= 500 and r.status_code not in self.allow_5xx:
                out.append(f"{where}: server error {text[:300]!r}")
            if r.status_code >= 400:
                if not r.headers.get("content-type", "").startswith(PROBLEM):
                    out.append(f"{where}: error is {r.headers.get('content-type')!r}, not problem+json")
                    continue
                try:
                    body = r.json()
                except ValueError:
                    out.append(f"{where}: problem body is not JSON")
                    continue
                if not (isinstance(body, dict) and {"type", "title", "status", "detail"} <= body.keys()):
                    out.append(f"{where}: problem body lacks type/title/status/detail: {text[:300]!r}")
                elif body["status"] != r.status_code:
                    out.append(f"{where}: problem status {body['status']} != {r.status_code}")
        return out


def _is_binary(r: httpx.Response) -> bool:
    return r.headers.get("content-type", "").startswith("application/octet-stream")


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    bad = rec.violations()
    assert not bad, "\n".join(bad[:20])


def client_for(app: FastAPI, key: str | None, recorder: Recorder, **kw: Any) -> httpx.AsyncClient:
    """An in-process client whose responses `recorder` keeps. Unhandled errors come back as 500s."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(
        transport=transport,
        base_url="http://test",
        headers=headers,
        event_hooks={"response": [recorder.hook]},
        timeout=60.0,
        **kw,
    )


# --- templates -----------------------------------------------------------------------------------------------------


def _build_keys_template(directory: Path) -> Template:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sec.db"
    upgrade(sqlite_url(path))
    db = Database(sqlite_url(path))
    try:
        owner_keys = {owner: make_key(db, owner) for owner in OWNERS}
        revoked = make_key(db, ALICE, "revoked")
        with db.session() as s:
            keys.revoke(s, prefix_of(revoked))
    finally:
        db.dispose()
    return Template(path=path, keys=owner_keys, revoked=revoked)


@pytest.fixture(scope="session")
def keys_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return _build_keys_template(tmp_path_factory.mktemp("sec-keys"))


@pytest.fixture(scope="session")
def world_template(tmp_path_factory: pytest.TempPathFactory, keys_template: Template) -> Template:
    """alice: network, CSV dataset, a succeeded job + model (trained by a real Supervisor), a queued job.
    bob: his own network and dataset (no jobs)."""
    path = copy_db(keys_template.path, tmp_path_factory.mktemp("sec-world"))
    settings = small_settings(sqlite_url(path))
    db = Database(settings.database_url)
    ids: dict[str, str] = {}
    rec = Recorder()

    async def build() -> None:
        app = create_app(settings, db=db)
        async with client_for(app, keys_template.keys[ALICE], rec) as a, client_for(
            app, keys_template.keys[BOB], rec
        ) as b:
            api = Api(a)
            ids["network"] = (await api.network(name="alice-net", units=(8, 3)))["id"]
            r = await a.post(
                "/v1/datasets", files={"file": ("blobs.csv", blobs_csv(8), "text/csv")}, data={"target": "color"}
            )
            assert r.status_code == 201, r.text
            ids["dataset"] = r.json()["id"]
            job = await api.job(ids["network"], ids["dataset"], epochs=3, batch_size=8, seed=3)
            ids["job"] = job["id"]
            assert Supervisor(settings, db).run_once() is True
            r = await a.get(f"/v1/jobs/{ids['job']}")
            assert r.json()["status"] == "succeeded", r.text
            ids["model"] = r.json()["model_id"]
            ids["queued_job"] = (await api.job(ids["network"], ids["dataset"]))["id"]
            bob_api = Api(b)
            ids["bob_network"] = (await bob_api.network(name="bob-net"))["id"]
            ids["bob_dataset"] = (await bob_api.dataset(name="bob-data"))["id"]

    try:
        anyio.run(build)
    finally:
        db.dispose()
    assert not rec.violations(), rec.violations()
    return Template(path=path, keys=keys_template.keys, revoked=keys_template.revoked, ids=ids)


# --- per test ------------------------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def template(keys_template: Template) -> Template:
    """The database a test starts from; modules needing alice's objects override this with world_template."""
    return keys_template


@pytest.fixture
def db_path(tmp_path: Path, template: Template) -> Path:
    return copy_db(template.path, tmp_path / "var")


@pytest.fixture
def db_url(db_path: Path) -> str:
    return sqlite_url(db_path)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return small_settings(db_url)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def app(settings: Settings, db: Database) -> FastAPI:
    return create_app(settings, db=db)


@pytest.fixture
def ids(template: Template) -> dict[str, str]:
    return template.ids


@pytest.fixture
async def clients(
    app: FastAPI, template: Template, recorder: Recorder
) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """Factory of recorded clients on `app` (or another app); closed at teardown."""
    made: list[httpx.AsyncClient] = []

    def make(key: str | None, on: FastAPI | None = None) -> httpx.AsyncClient:
        c = client_for(on or app, key, recorder)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
def alice(clients: Callable[..., httpx.AsyncClient], template: Template) -> httpx.AsyncClient:
    return clients(template.keys[ALICE])


@pytest.fixture
def bob(clients: Callable[..., httpx.AsyncClient], template: Template) -> httpx.AsyncClient:
    return clients(template.keys[BOB])


@pytest.fixture
def anon(clients: Callable[..., httpx.AsyncClient]) -> httpx.AsyncClient:
    return clients(None)


__all__ = [
    "ALICE",
    "BOB",
    "CAROL",
    "KEY_RE",
    "OWNERS",
    "PROBLEM",
    "Api",
    "Recorder",
    "Template",
    "assert_problem",
    "network_body",
    "problem_names",
    "random_id",
]
