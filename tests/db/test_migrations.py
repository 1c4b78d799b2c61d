from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from app.db import migrate
from app.db.base import Base
from app.db.migrate import (
    REPO_ROOT,
    alembic_config,
    current_revisions,
    downgrade,
    head_revisions,
    is_current,
    upgrade,
)
from app.db.models import Checkpoint, Dataset, Job, Network
from app.db.session import Database, make_engine
from app.domain import DatasetKind

pytestmark = pytest.mark.integration

APP_TABLES = set(Base.metadata.tables)


def _tables(url: str) -> set[str]:
    engine = make_engine(url, for_write=False)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    assert _tables(empty_db_url) == APP_TABLES | {"alembic_version"}
    downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == {"alembic_version"}
    upgrade(empty_db_url)
    assert _tables(empty_db_url) == APP_TABLES | {"alembic_version"}


def test_is_current_follows_the_schema_version(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url, for_write=False)
    try:
        assert not is_current(engine)  # never migrated
        upgrade(empty_db_url)
        assert is_current(engine)
        assert current_revisions(engine) == head_revisions()
        downgrade(empty_db_url, "base")
        assert not is_current(engine)
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_alembic_cli_reads_the_url_from_settings(sqlite_url: str) -> None:
    env = {**os.environ, "BACKPROP_DATABASE_URL": sqlite_url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    engine = make_engine(sqlite_url, for_write=False)
    try:
        assert is_current(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite:///unused.db", "postgresql+psycopg://u@localhost/unused"])
def test_offline_sql_renders_for_both_databases(url: str) -> None:
    buffer = io.StringIO()
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", url)
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE job" in sql
    assert "ck_job_status" in sql


BATCH_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "batch_test"
down_revision = {head!r}
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(50), nullable=True))


def downgrade():
    with op.batch_alter_table("job") as batch_op:
        batch_op.drop_column("note")
"""


def test_sqlite_batch_rebuild_of_a_parent_table_keeps_child_rows(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batch mode drops and recreates `job`; with foreign_keys=ON that DROP would cascade into checkpoints.
    (head,) = head_revisions()
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "2026-12-02_batch_test.py").write_text(BATCH_REVISION.format(head=head))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)
    migrate._script_directory.cache_clear()
    try:
        upgrade(sqlite_url, head)
        database = Database(sqlite_url)
        try:
            with database.session() as session:
                network = Network(owner="a", spec={}, n_params=1)
                dataset = Dataset(
                    owner="a",
                    n_samples=1,
                    n_features=1,
                    n_targets=1,
                    kind=DatasetKind.REGRESSION,
                    sha256="0",
                    nbytes=0,
                    blob_id="b",
                )
                session.add_all([network, dataset])
                session.flush()
                job = Job(owner="a", network_id=network.id, dataset_id=dataset.id, spec={}, spec_sha256="0", epochs=1)
                session.add(job)
                session.flush()
                session.add(
                    Checkpoint(job_id=job.id, seq=1, epoch=0, batch=0, attempt=1, blob_id="b", sha256="0", nbytes=0)
                )
            upgrade(sqlite_url)
            downgrade(sqlite_url, head)
            upgrade(sqlite_url)
            with database.read_session() as session:
                assert session.execute(select(func.count()).select_from(Checkpoint)).scalar_one() == 1
                assert session.execute(text("PRAGMA foreign_key_check")).fetchall() == []
            assert is_current(database.read_engine)
        finally:
            database.dispose()
    finally:
        migrate._script_directory.cache_clear()
