"""Settings: the only reader of the environment (prefix `BACKPROP_`).

Nothing reads settings at import time: `Settings()` reads the environment when called, and tests build
`Settings(database_url=..., ...)` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKPROP_", extra="ignore", frozen=True)

    # Storage. A `postgresql+psycopg://` URL scales out; the SQLite default needs nothing installed.
    database_url: str = "sqlite:///./var/backprop.db"
    data_dir: Path = Path("./var")

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65_535)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    # Workers (DESIGN.md §4-§5)
    workers: int = Field(default=1, ge=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    reaper_seconds: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    poll_seconds: float = Field(default=0.1, gt=0)  # idle worker's wait between claim attempts
    metrics_token: str | None = Field(default=None, min_length=16)  # if set, GET /metrics needs it as a Bearer token
    events_poll_seconds: float = Field(default=0.25, gt=0)  # how often an open event stream looks for news
    events_keepalive_seconds: float = Field(default=15.0, gt=0)

    # Webhooks (sent by workers): a failed POST is retried after retry_seconds, doubling up to retry_max_seconds.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_retry_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # Refuse webhook URLs whose host resolves to a loopback, private, link-local or reserved address (SSRF guard for
    # deployments whose users should not reach the internal network through the workers).
    webhook_block_private: bool = False
    checkpoint_seconds: float = Field(default=60.0, gt=0)
    # Processes one job trains in (data-parallel: each batch split across them). 0: two when this machine has at
    # least two CPUs per worker slot and the network is big enough to gain, else one.
    train_processes: int = Field(default=0, ge=0, le=64)

    # Limits (DESIGN.md §8): a static violation is a 422 naming the limit, a quota a 429.
    max_json_bytes: int = Field(default=32 * MiB, gt=0)
    max_upload_bytes: int = Field(default=256 * MiB, gt=0)
    max_dataset_rows: int = Field(default=1_000_000, gt=0)
    max_features: int = Field(default=100_000, gt=0)
    max_params: int = Field(default=10_000_000, gt=0)
    max_epochs: int = Field(default=10_000, gt=0)
    max_batch_size: int = Field(default=65_536, gt=0)
    max_active_jobs_per_owner: int = Field(default=10, gt=0)
    max_stored_bytes_per_owner: int = Field(default=2 * GiB, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Self:
        # A lease must survive at least one missed heartbeat, or a healthy worker loses its job.
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half of "
                f"lease_seconds ({self.lease_seconds})"
            )
        return self
