"""Run Alembic migrations from code (`backprop migrate`, test fixtures) and check the schema version.

The Alembic scripts live in `migrations/` at the repository root, next to `alembic.ini`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from app.db.session import make_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
# A checkout (or editable install) has migrations/ at its root; a plain install run from the project folder
# finds it in the working directory.
MIGRATIONS_DIR = next((d for d in (REPO_ROOT / "migrations", Path.cwd() / "migrations") if d.is_dir()),
                      REPO_ROOT / "migrations")


def alembic_config() -> Config:
    """An Alembic Config for `migrations/` that leaves the application's logging alone."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["configure_logger"] = False
    return config


@cache
def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revisions() -> frozenset[str]:
    """The revision ids at the head of `migrations/versions`."""
    return frozenset(_script_directory().get_heads())


def _run(database_url: str | URL, action: str, revision: str) -> None:
    # Our own engine: BEGIN IMMEDIATE on SQLite, and foreign_keys=OFF so batch mode can recreate tables
    # (env.py runs PRAGMA foreign_key_check before committing).
    engine = make_engine(database_url, for_write=True, foreign_keys=False)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        engine.dispose()


def upgrade(database_url: str | URL, revision: str = "head") -> None:
    """Migrate the database up to `revision` (default: the newest). Run with workers stopped."""
    _run(database_url, "upgrade", revision)


def downgrade(database_url: str | URL, revision: str) -> None:
    """Migrate the database down to `revision` ("base" drops every table)."""
    _run(database_url, "downgrade", revision)


def current_revisions(engine: Engine) -> frozenset[str]:
    """The revisions recorded in the database's `alembic_version` table (empty if never migrated)."""
    with engine.connect() as connection:
        return frozenset(MigrationContext.configure(connection).get_current_heads())


def is_current(engine: Engine) -> bool:
    """True if the database is at the newest revision: what `/readyz` asks. Database errors propagate."""
    return current_revisions(engine) == head_revisions()
