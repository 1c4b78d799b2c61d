"""Engines and sessions for SQLite and PostgreSQL (DESIGN.md §7).

Build them after a process spawns (each worker child builds its own `Database`): connections and pools
must not cross `fork`/`spawn`.

SQLite: every connection turns on WAL, `busy_timeout`, `synchronous=FULL` and `foreign_keys`. The driver's
own transaction handling is switched off (`isolation_level = None`) and SQLAlchemy emits BEGIN itself:
`BEGIN IMMEDIATE` on the write engine takes the write lock up front, so two read-then-write transactions
queue on `busy_timeout` instead of deadlocking into an immediate SQLITE_BUSY ("database is locked"); the
read engine uses plain `BEGIN` and `query_only`. See "Enabling Non-Legacy SQLite Transactional Modes" in the
SQLAlchemy SQLite dialect docs.

PostgreSQL (`postgresql+psycopg://`): `pool_pre_ping`, UTC session time zone and
`idle_in_transaction_session_timeout`, so a stuck client cannot hold row locks forever.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Truncate the WAL back to this size after a checkpoint (it otherwise stays at its high-water mark).
SQLITE_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
MIN_SQLITE_VERSION = (3, 35, 0)  # RETURNING

# SQLite primary result codes (extended codes keep them in the low byte).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# PostgreSQL SQLSTATEs that mean "try again shortly" rather than "your request is wrong".
_PG_BUSY_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown
        "57P03",  # cannot_connect_now
        "53300",  # too_many_connections
    }
)


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database or another backend."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    database = u.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None  # in-memory, or a URI filename whose options we do not parse
    return Path(database)


def _is_sqlite_memory(u: URL) -> bool:
    return u.get_backend_name() == "sqlite" and sqlite_file(u) is None


def make_engine(
    url: str | URL,
    *,
    for_write: bool = True,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    foreign_keys: bool = True,
    statement_timeout_ms: int | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine configured for this service.

    `for_write` selects `BEGIN IMMEDIATE` (True) or `BEGIN` plus `query_only` (False) on SQLite; it changes
    nothing on PostgreSQL. `foreign_keys=False` is for migrations only (SQLite batch mode recreates tables).
    `statement_timeout_ms` caps each statement on PostgreSQL (the API uses 30 s). Extra keyword arguments go
    to `create_engine`.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return _make_sqlite_engine(
            u, for_write=for_write, busy_timeout_ms=busy_timeout_ms, foreign_keys=foreign_keys, **kwargs
        )
    if backend == "postgresql":
        return _make_postgresql_engine(u, statement_timeout_ms=statement_timeout_ms, **kwargs)
    raise ValueError(f"unsupported database URL {u.render_as_string(hide_password=True)!r}")


def _make_sqlite_engine(u: URL, *, for_write: bool, busy_timeout_ms: int, foreign_keys: bool, **kwargs: Any) -> Engine:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise RuntimeError(f"SQLite >= 3.35 is required (RETURNING), found {sqlite3.sqlite_version}")
    path = sqlite_file(u)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    connect_args: dict[str, Any] = {
        # Sessions hop threads (FastAPI's threadpool); a connection is still used by one thread at a time.
        "check_same_thread": False,
        "timeout": busy_timeout_ms / 1000,
    }
    connect_args.update(kwargs.pop("connect_args", {}))
    if path is None:
        # One shared connection, or every checkout would see a different empty database.
        kwargs.setdefault("poolclass", StaticPool)
    engine = create_engine(u, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below); the driver must not open or commit transactions behind it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if path is not None:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA journal_size_limit = {SQLITE_JOURNAL_SIZE_LIMIT}")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            if not for_write:
                cursor.execute("PRAGMA query_only = ON")
        finally:
            cursor.close()

    begin_sql = "BEGIN IMMEDIATE" if for_write else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin_sql)

    return engine


def _make_postgresql_engine(u: URL, *, statement_timeout_ms: int | None, **kwargs: Any) -> Engine:
    options = [
        f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_TIMEOUT_MS}",
        "-c timezone=UTC",
    ]
    if statement_timeout_ms is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    connect_args: dict[str, Any] = {"options": " ".join(options)}
    connect_args.update(kwargs.pop("connect_args", {}))
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, connect_args=connect_args, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (`expire_on_commit=False`)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


class Database:
    """The write and read engines of one process, and sessions on them.

    On PostgreSQL (and in-memory SQLite) both roles share one engine.
    """

    def __init__(self, url: str | URL, *, statement_timeout_ms: int | None = None, **engine_kwargs: Any) -> None:
        self.url = make_url(url)
        self.write_engine = make_engine(
            self.url, for_write=True, statement_timeout_ms=statement_timeout_ms, **engine_kwargs
        )
        if self.url.get_backend_name() == "sqlite" and not _is_sqlite_memory(self.url):
            self.read_engine = make_engine(self.url, for_write=False, **engine_kwargs)
        else:
            self.read_engine = self.write_engine
        self.write_sessionmaker = make_sessionmaker(self.write_engine)
        self.read_sessionmaker = make_sessionmaker(self.read_engine)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.write_engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: commits when the block ends, rolls back if it raises."""
        with self.write_sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite, writes fail with `attempt to write a readonly database`).

        Closing the session ends the transaction without expiring loaded objects, so they stay readable.
        """
        with self.read_sessionmaker() as session:
            yield session

    def dispose(self) -> None:
        """Close every pooled connection (on shutdown, or in a child that inherited this object)."""
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()


def wal_checkpoint(
    engine: Engine, mode: Literal["PASSIVE", "FULL", "RESTART", "TRUNCATE"] = "PASSIVE"
) -> tuple[int, int, int] | None:
    """Run `PRAGMA wal_checkpoint(mode)` on SQLite: (busy, wal pages, checkpointed pages). None elsewhere."""
    if engine.dialect.name != "sqlite":
        return None
    with engine.connect() as conn:
        # Outside a transaction: a checkpoint cannot run inside one, and this must not take BEGIN IMMEDIATE.
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        cursor = dbapi_conn.cursor()
        try:
            row = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            cursor.close()
    return (int(row[0]), int(row[1]), int(row[2]))


def is_busy_error(error: BaseException) -> bool:
    """True if `error` (or its cause) means the database is busy or briefly unavailable: answer 503.

    SQLite: "database is locked" / SQLITE_BUSY / SQLITE_LOCKED. PostgreSQL: lock, serialization and timeout
    failures, a dropped connection, a full pool.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_busy_one(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_busy_one(error: BaseException) -> bool:
    if isinstance(error, exc.TimeoutError):  # pool checkout timed out
        return True
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    orig = error.orig if isinstance(error, exc.DBAPIError) else error
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return True
        message = str(orig).lower()
        return "database is locked" in message or "database table is locked" in message
    psycopg = sys.modules.get("psycopg")   # imported only once a PostgreSQL engine exists: SQLite starts faster
    if psycopg is None:
        return False
    if isinstance(orig, psycopg.OperationalError):
        sqlstate = orig.sqlstate
        # No SQLSTATE: the server could not be reached at all. Class 08: the connection broke.
        return sqlstate is None or sqlstate.startswith("08") or sqlstate in _PG_BUSY_SQLSTATES
    if isinstance(orig, psycopg.Error):
        return orig.sqlstate in _PG_BUSY_SQLSTATES
    return False
