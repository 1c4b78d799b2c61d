"""Database fixtures: a SQLite file in tmp_path, and a throwaway PostgreSQL database per test when
BACKPROP_TEST_DATABASE_URL points at a server (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url

from app.db import models  # noqa: F401  (registers the tables)
from app.db.base import Base
from app.db.session import Database

PG_ENV = "BACKPROP_TEST_DATABASE_URL"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'test.db'}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set, so the PostgreSQL variants do not run")
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    name = f"backprop_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend (PostgreSQL skipped unless configured)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(empty_db_url: str) -> Iterator[Database]:
    """A `Database` whose schema comes from the models (fast; migrations are tested separately)."""
    database = Database(empty_db_url)
    Base.metadata.create_all(database.write_engine)
    try:
        yield database
    finally:
        database.dispose()
