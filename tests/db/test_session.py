from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from app.db.base import Base, new_id
from app.db.models import ApiKey
from app.db.session import Database, is_busy_error, make_engine, sqlite_file, wal_checkpoint


def _key(owner: str = "alice") -> ApiKey:
    return ApiKey(prefix=new_id()[:16], secret_sha256="0" * 64, owner=owner)


@pytest.fixture
def sqlite_db(sqlite_url: str):
    database = Database(sqlite_url)
    Base.metadata.create_all(database.write_engine)
    yield database
    database.dispose()


def test_make_engine_creates_the_sqlite_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert path.exists()


def test_sqlite_file_of_urls() -> None:
    assert sqlite_file("sqlite:///./var/backprop.db") == Path("./var/backprop.db")
    assert sqlite_file("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_file("sqlite://") is None
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql+psycopg://u@h/db") is None


@pytest.mark.parametrize("for_write", [True, False])
def test_sqlite_pragmas_are_set_on_every_connection(sqlite_url: str, for_write: bool) -> None:
    engine = make_engine(sqlite_url, for_write=for_write)
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys", "query_only")
            }
    finally:
        engine.dispose()
    assert pragma == {
        "journal_mode": "wal",
        "busy_timeout": 10_000,
        "synchronous": 2,  # FULL
        "foreign_keys": 1,
        "query_only": 0 if for_write else 1,
    }


def _begin_statements(engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("BEGIN"):
            seen.append(statement)

    return seen


def test_write_sessions_begin_immediate_and_read_sessions_begin_deferred(sqlite_db: Database) -> None:
    writes = _begin_statements(sqlite_db.write_engine)
    reads = _begin_statements(sqlite_db.read_engine)
    with sqlite_db.session() as session:
        session.add(_key())
    with sqlite_db.read_session() as session:
        assert session.execute(select(func.count()).select_from(ApiKey)).scalar_one() == 1
    assert writes == ["BEGIN IMMEDIATE"]
    assert reads == ["BEGIN"]


def test_read_session_cannot_write_on_sqlite(sqlite_db: Database) -> None:
    with pytest.raises(OperationalError, match="readonly"), sqlite_db.read_session() as session:
        session.execute(text("DELETE FROM api_key"))


def test_session_commits_on_success_and_rolls_back_on_error(db: Database) -> None:
    with db.session() as session:
        session.add(_key("kept"))

    def fail_after_flush() -> None:
        with db.session() as session:
            session.add(_key("dropped"))
            session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_after_flush()
    with db.read_session() as session:
        owners = session.execute(select(ApiKey.owner)).scalars().all()
    assert owners == ["kept"]


def test_savepoint_rolls_back_only_the_nested_part(db: Database) -> None:
    with db.session() as session:
        session.add(_key("outer"))
        prefix = new_id()[:16]
        session.add(ApiKey(prefix=prefix, secret_sha256="0", owner="first"))
        session.flush()
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(ApiKey(prefix=prefix, secret_sha256="0", owner="duplicate"))
    with db.read_session() as session:
        owners = set(session.execute(select(ApiKey.owner)).scalars())
    assert owners == {"outer", "first"}


def test_concurrent_read_then_write_transactions_do_not_hit_database_is_locked(sqlite_db: Database) -> None:
    # Deferred BEGIN would let both threads read, then both try to upgrade to a write lock: one fails at
    # once with SQLITE_BUSY regardless of busy_timeout. BEGIN IMMEDIATE queues them instead.
    n_threads, n_rounds = 4, 25
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        try:
            barrier.wait()
            for _ in range(n_rounds):
                with sqlite_db.session() as session:
                    count = session.execute(
                        select(func.count()).select_from(ApiKey).where(ApiKey.owner == owner)
                    ).scalar_one()
                    session.add(ApiKey(prefix=f"{owner}-{count}", secret_sha256="0", owner=owner))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with sqlite_db.read_session() as session:
        assert session.execute(select(func.count()).select_from(ApiKey)).scalar_one() == n_threads * n_rounds


def test_locked_database_is_a_busy_error(sqlite_url: str) -> None:
    holder = make_engine(sqlite_url)
    waiter = make_engine(sqlite_url, busy_timeout_ms=50)
    try:
        with holder.begin() as conn:  # BEGIN IMMEDIATE: holds the write lock
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            with pytest.raises(OperationalError) as caught, waiter.begin() as other:
                other.execute(text("SELECT 1"))
        assert "database is locked" in str(caught.value)
        assert is_busy_error(caught.value)
        wrapped = RuntimeError("while handling a request")
        wrapped.__cause__ = caught.value
        assert is_busy_error(wrapped)
    finally:
        holder.dispose()
        waiter.dispose()


def test_other_errors_are_not_busy_errors(db: Database) -> None:
    prefix = new_id()[:16]
    with db.session() as session:
        session.add(ApiKey(prefix=prefix, secret_sha256="0", owner="a"))
    with pytest.raises(IntegrityError) as caught, db.session() as session:
        session.add(ApiKey(prefix=prefix, secret_sha256="0", owner="b"))
    assert not is_busy_error(caught.value)
    assert not is_busy_error(ValueError("x"))
    assert not is_busy_error(sqlite3.OperationalError("no such table: x"))


def test_wal_checkpoint_reports_pages(sqlite_db: Database) -> None:
    with sqlite_db.session() as session:
        session.add(_key())
    busy, _, _ = wal_checkpoint(sqlite_db.write_engine, "TRUNCATE")
    assert busy == 0


def test_in_memory_sqlite_shares_one_engine() -> None:
    database = Database("sqlite://")
    try:
        Base.metadata.create_all(database.write_engine)
        with database.session() as session:
            session.add(_key())
        with database.read_session() as session:
            assert session.execute(select(func.count()).select_from(ApiKey)).scalar_one() == 1
        assert database.read_engine is database.write_engine
    finally:
        database.dispose()
