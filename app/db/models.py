"""ORM models: one class per table, identical on SQLite and PostgreSQL (DESIGN.md §1).

Conventions:
- Ids are `new_id()` strings (uuid4 hex), generated in Python. Every row has `created_at` (UTC).
- Tenant-owned rows carry `owner`, not an api key id: all keys of one owner see the same objects, and every
  list index starts with `owner`.
- Networks, datasets and models are soft-deleted (`deleted_at`) so jobs and models that reference them stay
  valid; foreign keys therefore never cascade from them.
- Blobs live in `blob_chunk` (see `app.storage.blobs`); rows that own one hold `blob_id`, `sha256`, `nbytes`.
  `blob_id` has no foreign key: `blob_chunk` has one row per chunk, and chunks are written before the row
  that publishes them.
- `job.model_id` has no foreign key either: `model.job_id` (unique) already links the two, and a cycle of
  foreign keys would need ALTER TABLE, which SQLite lacks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import ID_LENGTH, Base, StrEnumType, UTCDateTime, check_in, new_id, utcnow
from app.domain import DatasetKind, JobEventType, JobStatus, ResourceType

OWNER_LENGTH = 64
SHA256_LENGTH = 64
NAME_LENGTH = 200

# JSON that may be absent is SQL NULL, not the JSON literal `null`, so `IS NULL` finds it.
NullableJSON = JSON(none_as_null=True)


def _id_pk() -> Mapped[str]:
    return mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)


def _created_at() -> Mapped[datetime]:
    # The Python default gives ORM objects a value without a round trip; the server default covers raw SQL.
    return mapped_column(UTCDateTime(), default=utcnow, server_default=text("CURRENT_TIMESTAMP"))


def _int_zero() -> Mapped[int]:
    return mapped_column(Integer, default=0, server_default=text("0"))


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = _id_pk()
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH), index=True)
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = _created_at()
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Network(Base):
    __tablename__ = "network"
    __table_args__ = (Index("ix_network_owner_created", "owner", "created_at", "id"),)

    id: Mapped[str] = _id_pk()
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_params: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created_at()
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Dataset(Base):
    __tablename__ = "dataset"
    __table_args__ = (
        Index("ix_dataset_owner_created", "owner", "created_at", "id"),
        CheckConstraint(check_in("kind", DatasetKind), name="kind"),
    )

    id: Mapped[str] = _id_pk()
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    n_samples: Mapped[int] = mapped_column(BigInteger)
    n_features: Mapped[int] = mapped_column(Integer)
    n_targets: Mapped[int] = mapped_column(Integer)
    kind: Mapped[DatasetKind] = mapped_column(StrEnumType(DatasetKind))
    classes: Mapped[list[Any] | None] = mapped_column(NullableJSON)
    feature_names: Mapped[list[str] | None] = mapped_column(NullableJSON)
    target_names: Mapped[list[str] | None] = mapped_column(NullableJSON)
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = _created_at()
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        CheckConstraint(check_in("status", JobStatus), name="status"),
        Index("ix_job_claim", "status", "priority", "created_at", "id"),
        Index("ix_job_reaper", "status", "lease_expires_at"),
        Index("ix_job_owner_created", "owner", "created_at", "id"),
    )

    id: Mapped[str] = _id_pk()
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    network_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("network.id"))
    dataset_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("dataset.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the training request
    spec_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    status: Mapped[JobStatus] = mapped_column(
        StrEnumType(JobStatus), default=JobStatus.QUEUED, server_default=text("'queued'")
    )
    priority: Mapped[int] = _int_zero()
    run_after: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=text("CURRENT_TIMESTAMP"))
    attempt: Mapped[int] = _int_zero()
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default=text("3"))
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    checkpoint_seq: Mapped[int] = _int_zero()
    rescue_count: Mapped[int] = _int_zero()
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    epoch: Mapped[int] = _int_zero()  # last completed epoch
    epochs: Mapped[int] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    last_metrics: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    partial_model: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    created_at: Mapped[datetime] = _created_at()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobEvent(Base):
    """Append-only log per job: status transitions and epoch records, numbered by `seq` from 1."""

    __tablename__ = "job_event"
    __table_args__ = (
        PrimaryKeyConstraint("job_id", "seq"),
        CheckConstraint(check_in("type", JobEventType), name="type"),
    )

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("job.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer, autoincrement=False)
    type: Mapped[JobEventType] = mapped_column(StrEnumType(JobEventType))
    status: Mapped[JobStatus | None] = mapped_column(StrEnumType(JobStatus))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = _created_at()


class Worker(Base):
    """One supervisor (a `backprop worker`/`serve` training slot): registered at start, heartbeated, marked stopped
    at exit. A row whose heartbeat is older than a few intervals belongs to a worker that died (for /metrics)."""

    __tablename__ = "worker"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookSecret(Base):
    """The HMAC-SHA256 key that signs an owner's webhook deliveries (kept in clear: signing needs it)."""

    __tablename__ = "webhook_secret"

    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = _created_at()


class WebhookDelivery(Base):
    """One event to POST to a job's webhook_url, written in the transaction that made the job terminal (an outbox).
    `next_attempt_at` doubles as the sender's lease: a claim pushes it past the attempt's timeout, so a sender that
    dies mid-attempt leaves the delivery due again (at-least-once)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = _id_pk()   # also the event id the receiver sees, stable across retries
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("job.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default=text("'pending'"))
    attempts: Mapped[int] = _int_zero()
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created_at()
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookAttempt(Base):
    """What each POST of a delivery got back: the log shown on the job."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (PrimaryKeyConstraint("delivery_id", "attempt"),)

    delivery_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("webhook_delivery.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer, autoincrement=False)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = _created_at()


class EpochMetric(Base):
    __tablename__ = "epoch_metric"
    __table_args__ = (PrimaryKeyConstraint("job_id", "epoch"),)  # a replayed epoch cannot add a row

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("job.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer, autoincrement=False)
    loss: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = _created_at()


class Checkpoint(Base):
    __tablename__ = "checkpoint"
    __table_args__ = (PrimaryKeyConstraint("job_id", "seq"),)

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("job.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer, autoincrement=False)
    epoch: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    blob_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created_at()


class Model(Base):
    __tablename__ = "model"
    __table_args__ = (Index("ix_model_owner_created", "owner", "created_at", "id"),)

    id: Mapped[str] = _id_pk()
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    # Unique: publishing a job's result twice (a replay after a lost lease) cannot make two models.
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("job.id"), unique=True)
    network_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("network.id"))
    dataset_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("dataset.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    classes: Mapped[list[Any] | None] = mapped_column(NullableJSON)
    partial: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    blob_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created_at()
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyKey(Base):
    __tablename__ = "idempotency_key"
    __table_args__ = (
        PrimaryKeyConstraint("owner", "key", "resource_type"),
        CheckConstraint(check_in("resource_type", ResourceType), name="resource_type"),
        Index("ix_idempotency_key_created_at", "created_at"),  # expiry sweeps
    )

    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    key: Mapped[str] = mapped_column(String(255))
    resource_type: Mapped[ResourceType] = mapped_column(StrEnumType(ResourceType))
    request_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    resource_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class BlobChunk(Base):
    """One piece (≤ the chunk size, 4 MiB by default) of a blob; every blob has at least one chunk."""

    __tablename__ = "blob_chunk"
    __table_args__ = (PrimaryKeyConstraint("blob_id", "seq"),)

    blob_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    seq: Mapped[int] = mapped_column(Integer, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _created_at()
