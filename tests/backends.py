"""The database backends the API, worker and durability suites run on: SQLite always, PostgreSQL when
BACKPROP_TEST_DATABASE_URL points at a server (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres).

A suite builds its migrated template once per session on each backend: a SQLite file that each test copies, or a
PostgreSQL template database that each test gets a clone of (`CREATE DATABASE ... TEMPLATE`), dropped afterwards. A
clone takes a few hundred milliseconds of the server's time, so `clone()` hands out copies that a background thread
made while the previous tests ran, and drops used ones in the background too. Every database made here is named
`bp_test_...` and dropped when its test or session ends.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, make_url

PG_ENV = "BACKPROP_TEST_DATABASE_URL"
SQLITE, POSTGRESQL = "sqlite", "postgresql"
NO_PG_REASON = (
    f"{PG_ENV} is not set, so the PostgreSQL variants do not run "
    f"(set it to e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"
)

# The `params` of a backend fixture: ids [sqlite] and [postgresql]; the PostgreSQL runs are integration tests.
BACKENDS = [SQLITE, pytest.param(POSTGRESQL, marks=pytest.mark.integration)]


def pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def require_backend(name: str) -> str:
    """`name`, or skip the test (saying why) if it is PostgreSQL and no server is configured."""
    if name == POSTGRESQL and pg_admin_url() is None:
        pytest.skip(NO_PG_REASON)
    return name


def require_pg() -> str:
    """The admin URL of the test server, or skip the test saying why."""
    url = pg_admin_url()
    if url is None:
        pytest.skip(NO_PG_REASON)
    return url


def new_name(kind: str) -> str:
    return f"bp_test_{kind}_{uuid.uuid4().hex[:12]}"


def pg_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    return make_url(require_pg()).set(database=name).render_as_string(hide_password=False)


def _admin(statements: list[str]) -> None:
    engine = create_engine(require_pg(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def create_pg_database(kind: str, *, template: str | None = None) -> tuple[str, str]:
    """A new database (empty, or a copy of `template`): (name, url).

    Cloning needs the template to have no open connections: any left over (a pool not yet disposed, a child
    process still exiting) are ended first, so they fail loudly in whoever still holds them instead of here."""
    name = new_name(kind)
    statements = []
    if template is not None:
        statements.append(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{template}' AND pid <> pg_backend_pid()"
        )
        statements.append(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    else:
        statements.append(f'CREATE DATABASE "{name}"')
    _admin(statements)
    return name, pg_url(name)


def drop_pg_database(name: str) -> None:
    """Drop a database made here, ending whatever connections are still open to it."""
    assert name.startswith("bp_test_"), name
    _admin([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


class _ClonePool:
    """Clones of one template made `ahead` at a time by a background thread; used ones dropped by another."""

    def __init__(self, template: str, kind: str, ahead: int = 2) -> None:
        self.template, self.kind = template, kind
        self._ready: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=ahead)
        self._used: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._maker = threading.Thread(target=self._make, name=f"clone-{template}", daemon=True)
        self._dropper = threading.Thread(target=self._drop, name=f"drop-{template}", daemon=True)
        self._maker.start()
        self._dropper.start()

    def _make(self) -> None:
        try:
            while not self._stop.is_set():
                made = create_pg_database(self.kind, template=self.template)
                while True:
                    if self._stop.is_set():
                        drop_pg_database(made[0])
                        return
                    try:
                        self._ready.put(made, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # reported to the next test that asks for a clone
            self._error = exc

    def _drop(self) -> None:
        while (name := self._used.get()) is not None:
            drop_pg_database(name)

    def take(self, timeout: float = 120.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                if self._error is not None:
                    raise RuntimeError(f"could not clone {self.template}") from self._error
        raise TimeoutError(f"no clone of {self.template} within {timeout} s")

    def release(self, name: str) -> None:
        self._used.put(name)

    def close(self) -> None:
        self._stop.set()
        self._maker.join(timeout=60)
        while True:
            try:
                self._used.put(self._ready.get_nowait()[0])
            except queue.Empty:
                break
        self._used.put(None)
        self._dropper.join(timeout=120)


_pools: dict[str, _ClonePool] = {}
_pools_lock = threading.Lock()


def clone(template: str, kind: str) -> tuple[str, str]:
    """A fresh copy of PostgreSQL template database `template`: (name, url). Give it back with `release(name)`."""
    with _pools_lock:
        pool = _pools.get(template)
        if pool is None:
            pool = _pools[template] = _ClonePool(template, kind)
    return pool.take()


def release(template: str, name: str) -> None:
    """Drop a clone of `template` (in the background)."""
    with _pools_lock:
        pool = _pools.get(template)
    if pool is None:
        drop_pg_database(name)
    else:
        pool.release(name)


def drop_template(template: str) -> None:
    """Drop a template database and every clone of it still made or waiting to be dropped."""
    with _pools_lock:
        pool = _pools.pop(template, None)
    if pool is not None:
        pool.close()
    drop_pg_database(template)
