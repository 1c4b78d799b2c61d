"""initial schema: keys, networks, datasets, jobs and their logs, models, idempotency keys, blob chunks

Revision ID: 613400fe7faf
Revises:
Create Date: 2026-12-01 04:18:52.627738+00:00

Written from autogenerate output, then checked by hand against app/db/models.py (the migration tests also
compare the migrated schema with the models). Plain SQLAlchemy types only: UTCDateTime is
DateTime(timezone=True) and the StrEnum columns are String(16) with a CHECK constraint.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "613400fe7faf"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id(name: str = "id") -> sa.Column:
    return sa.Column(name, sa.String(length=32), nullable=False)


def _created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
    )


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _int0(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)


def _blob_columns() -> list[sa.Column]:
    return [
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "api_key",
        _id(),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        _created_at(),
        _ts("last_used_at"),
        _ts("revoked_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_key_prefix")),
    )
    op.create_index(op.f("ix_api_key_owner"), "api_key", ["owner"])

    op.create_table(
        "blob_chunk",
        _id("blob_id"),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("blob_id", "seq", name=op.f("pk_blob_chunk")),
    )

    op.create_table(
        "network",
        _id(),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("n_params", sa.BigInteger(), nullable=False),
        _created_at(),
        _ts("deleted_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network")),
    )
    op.create_index("ix_network_owner_created", "network", ["owner", "created_at", "id"])

    op.create_table(
        "dataset",
        _id(),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("n_samples", sa.BigInteger(), nullable=False),
        sa.Column("n_features", sa.Integer(), nullable=False),
        sa.Column("n_targets", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=True),
        sa.Column("feature_names", sa.JSON(), nullable=True),
        sa.Column("target_names", sa.JSON(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        _created_at(),
        _ts("deleted_at"),
        sa.CheckConstraint("kind IN ('classification', 'regression')", name=op.f("ck_dataset_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
    )
    op.create_index("ix_dataset_owner_created", "dataset", ["owner", "created_at", "id"])

    op.create_table(
        "idempotency_key",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("resource_type", sa.String(length=16), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=32), nullable=True),
        _created_at(),
        sa.CheckConstraint("resource_type IN ('job', 'dataset')", name=op.f("ck_idempotency_key_resource_type")),
        sa.PrimaryKeyConstraint("owner", "key", "resource_type", name=op.f("pk_idempotency_key")),
    )
    op.create_index("ix_idempotency_key_created_at", "idempotency_key", ["created_at"])

    op.create_table(
        "job",
        _id(),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("network_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), server_default=sa.text("'queued'"), nullable=False),
        _int0("priority"),
        sa.Column("run_after", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        _int0("attempt"),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("3"), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        _ts("lease_expires_at"),
        _ts("heartbeat_at"),
        _ts("progress_at"),
        _ts("cancel_requested_at"),
        _int0("checkpoint_seq"),
        _int0("rescue_count"),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_id", sa.String(length=32), nullable=True),  # no FK: model.job_id is the link
        _int0("epoch"),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_metrics", sa.JSON(), nullable=True),
        sa.Column("partial_model", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("webhook_url", sa.String(length=2048), nullable=True),
        _created_at(),
        _ts("started_at"),
        _ts("finished_at"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_job_status")
        ),
        sa.ForeignKeyConstraint(["dataset_id"], ["dataset.id"], name=op.f("fk_job_dataset_id_dataset")),
        sa.ForeignKeyConstraint(["network_id"], ["network.id"], name=op.f("fk_job_network_id_network")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job")),
    )
    op.create_index("ix_job_claim", "job", ["status", "priority", "created_at", "id"])
    op.create_index("ix_job_reaper", "job", ["status", "lease_expires_at"])
    op.create_index("ix_job_owner_created", "job", ["owner", "created_at", "id"])

    op.create_table(
        "job_event",
        _id("job_id"),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        _created_at(),
        sa.CheckConstraint("type IN ('status', 'epoch')", name=op.f("ck_job_event_type")),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_job_event_job_id_job"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_job_event")),
    )

    op.create_table(
        "epoch_metric",
        _id("job_id"),
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_epoch_metric_job_id_job"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "epoch", name=op.f("pk_epoch_metric")),
    )

    op.create_table(
        "checkpoint",
        _id("job_id"),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        *_blob_columns(),
        _created_at(),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_checkpoint_job_id_job"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_checkpoint")),
    )

    op.create_table(
        "model",
        _id(),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("network_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=True),
        sa.Column("partial", sa.Boolean(), server_default=sa.false(), nullable=False),
        *_blob_columns(),
        _created_at(),
        _ts("deleted_at"),
        sa.ForeignKeyConstraint(["dataset_id"], ["dataset.id"], name=op.f("fk_model_dataset_id_dataset")),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_model_job_id_job")),
        sa.ForeignKeyConstraint(["network_id"], ["network.id"], name=op.f("fk_model_network_id_network")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("job_id", name=op.f("uq_model_job_id")),
    )
    op.create_index("ix_model_owner_created", "model", ["owner", "created_at", "id"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes and constraints on both databases.
    for table in (
        "model",
        "checkpoint",
        "epoch_metric",
        "job_event",
        "job",
        "idempotency_key",
        "dataset",
        "network",
        "blob_chunk",
        "api_key",
    ):
        op.drop_table(table)
