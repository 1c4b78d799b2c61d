"""Alembic environment: runs migrations on SQLite or PostgreSQL.

The database is, in order of precedence: a connection passed as `config.attributes["connection"]` (tests,
`app.db.migrate`), `sqlalchemy.url` set on the Config, or `Settings().database_url` (BACKPROP_DATABASE_URL).
On SQLite, migrations run with `foreign_keys=OFF` (batch mode recreates tables, which would otherwise trip
or cascade foreign keys) and `PRAGMA foreign_key_check` must come back empty before the commit.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, make_url
from sqlalchemy.types import TypeDecorator

from app.config import Settings
from app.db import models  # noqa: F401  (registers every table on Base.metadata)
from app.db.base import Base
from app.db.session import make_engine

config = context.config
target_metadata = Base.metadata

# Programmatic callers pass configure_logger=False: fileConfig would replace the application's logging.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Revisions must not import app types (models change, revisions must not): render the plain SQL type,
    # e.g. UTCDateTime -> sa.DateTime(timezone=True), StrEnumType -> sa.String(length=16).
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def _configure_kwargs(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": dialect_name == "sqlite",
        "render_item": _render_item,
        "compare_type": True,
        "compare_server_default": True,
    }


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: emit SQL for the configured URL without connecting."""
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_kwargs(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    dialect_name = connection.dialect.name
    # SQLite DDL is transactional once SQLAlchemy emits BEGIN itself (app.db.session), so the whole upgrade
    # commits or rolls back as one, as on PostgreSQL.
    context.configure(connection=connection, transactional_ddl=True, **_configure_kwargs(dialect_name))
    with context.begin_transaction():
        context.run_migrations()
        if dialect_name == "sqlite":
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"migration left foreign key violations: {problems[:10]}")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_database_url(), for_write=True, foreign_keys=False)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
