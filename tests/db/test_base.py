from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError

from app.db.base import new_id
from app.db.models import ApiKey, Dataset, Job, Network
from app.db.session import Database
from app.domain import DatasetKind, JobStatus

PLUS_TWO = timezone(timedelta(hours=2))


def _api_key(**overrides: object) -> ApiKey:
    values: dict[str, object] = {"prefix": new_id()[:16], "secret_sha256": "0" * 64, "owner": "alice"}
    values.update(overrides)
    return ApiKey(**values)


def test_utc_datetime_round_trip_returns_aware_utc(db: Database) -> None:
    stamp = datetime(2026, 12, 1, 14, 30, 15, 123456, tzinfo=PLUS_TWO)
    with db.session() as session:
        key = _api_key(last_used_at=stamp)
        session.add(key)
    with db.read_session() as session:
        loaded = session.execute(select(ApiKey.last_used_at).where(ApiKey.id == key.id)).scalar_one()
    assert loaded == stamp
    assert loaded.tzinfo is UTC
    assert loaded == datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)


def test_sqlite_stores_utc_wall_time(sqlite_url: str) -> None:
    from app.db.base import Base

    database = Database(sqlite_url)
    try:
        Base.metadata.create_all(database.write_engine)
        with database.session() as session:
            key = _api_key(last_used_at=datetime(2026, 1, 2, 5, 0, tzinfo=PLUS_TWO))
            session.add(key)
        with database.read_session() as session:
            raw = session.execute(text("SELECT last_used_at FROM api_key")).scalar_one()
        assert raw.startswith("2026-01-02 03:00:00")  # naive text, in UTC
    finally:
        database.dispose()


def test_naive_datetime_is_rejected(db: Database) -> None:
    with db.session() as session:
        session.add(_api_key(last_used_at=datetime(2026, 1, 1)))
        with pytest.raises(StatementError, match="timezone-aware"):
            session.flush()
        session.rollback()


def test_created_at_defaults_to_now_in_utc(db: Database) -> None:
    before = datetime.now(UTC)
    with db.session() as session:
        key = _api_key()
        session.add(key)
    assert key.created_at.tzinfo is UTC
    assert before <= key.created_at <= datetime.now(UTC)


def test_server_default_created_at_is_read_back_aware(db: Database) -> None:
    # Raw SQL inserts (data migrations, psql) get created_at from the server default.
    with db.session() as session:
        session.execute(
            insert(ApiKey.__table__).values(id=new_id(), prefix="bp_raw", secret_sha256="0" * 64, owner="o")
        )
    with db.read_session() as session:
        created = session.execute(select(ApiKey.created_at).where(ApiKey.prefix == "bp_raw")).scalar_one()
    assert created.tzinfo is UTC
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)


def _network_and_dataset(session) -> tuple[Network, Dataset]:
    network = Network(owner="alice", spec={"layers": []}, n_params=10)
    dataset = Dataset(
        owner="alice",
        n_samples=4,
        n_features=2,
        n_targets=1,
        kind=DatasetKind.REGRESSION,
        sha256="0" * 64,
        nbytes=0,
        blob_id=new_id(),
    )
    session.add_all([network, dataset])
    session.flush()
    return network, dataset


def test_job_defaults_and_status_enum_round_trip(db: Database) -> None:
    with db.session() as session:
        network, dataset = _network_and_dataset(session)
        job = Job(owner="alice", network_id=network.id, dataset_id=dataset.id, spec={}, spec_sha256="0" * 64, epochs=5)
        session.add(job)
    with db.read_session() as session:
        loaded = session.get_one(Job, job.id)
    assert loaded.status is JobStatus.QUEUED
    assert (loaded.attempt, loaded.max_attempts, loaded.priority, loaded.epoch) == (0, 3, 0, 0)
    assert loaded.partial_model is False
    assert loaded.last_metrics is None
    assert loaded.run_after.tzinfo is UTC


def _job(session) -> Job:
    network, dataset = _network_and_dataset(session)
    job = Job(owner="alice", network_id=network.id, dataset_id=dataset.id, spec={}, spec_sha256="0" * 64, epochs=1)
    session.add(job)
    session.flush()
    return job


def test_status_check_constraint_rejects_unknown_status(db: Database) -> None:
    with db.session() as session:
        job = _job(session)
    with pytest.raises(IntegrityError), db.session() as session:
        session.execute(text("UPDATE job SET status = 'paused' WHERE id = :id"), {"id": job.id})


def test_status_column_rejects_unknown_status_before_sql(db: Database) -> None:
    with db.session() as session:
        job = _job(session)
    with pytest.raises(StatementError, match="paused"), db.session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(status="paused"))


def test_new_object_is_readable_after_its_session_closes(db: Database) -> None:
    with db.session() as session:
        job = _job(session)
    # Nullable columns never set are None, not unloaded attributes that need the (closed) session.
    assert (job.error, job.model_id, job.started_at, job.last_metrics) == (None, None, None, None)


def test_job_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.session() as session:
        session.add(Job(owner="a", network_id=new_id(), dataset_id=new_id(), spec={}, spec_sha256="0" * 64, epochs=1))
