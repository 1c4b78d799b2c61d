"""Domain vocabulary shared by every layer: job states and their allowed transitions.

    queued ──claim──> running ──> succeeded | failed | cancelled
      │                 │
      │                 └──reaper / release──> queued     (lease lost or graceful shutdown; retried)
      └──cancel──> cancelled

`succeeded`, `failed` and `cancelled` are terminal. A status changes only through a guarded
`UPDATE ... WHERE status IN (sources(target))`, so this table is the single source of truth.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

# Status *changes* only: a heartbeat or checkpoint keeps a running job running and is not listed here.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(src: JobStatus, dst: JobStatus) -> bool:
    """True if a job may move from `src` to `dst`."""
    return dst in TRANSITIONS[src]


def sources(dst: JobStatus) -> frozenset[JobStatus]:
    """The states a job may be in to move to `dst`: the `WHERE status IN (...)` of a guarded update."""
    return frozenset(src for src, targets in TRANSITIONS.items() if dst in targets)


class DatasetKind(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class JobEventType(StrEnum):
    STATUS = "status"
    EPOCH = "epoch"


class ResourceType(StrEnum):
    """What an idempotency key protects."""

    JOB = "job"
    DATASET = "dataset"
    NETWORK = "network"
