"""Typed views of the API's resources: small dataclasses built from the JSON answers, each keeping it as `raw`.

Unknown fields are kept in `raw` and ignored otherwise, so a newer server does not break an older client. `Job` and
`AsyncJob` also carry the client that fetched them, for `job.wait()`, `job.refresh()` and `job.cancel()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from app.client.aio import AsyncJobs
    from app.client.sync import Jobs

T = TypeVar("T")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _dt(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Network:
    id: str
    name: str | None
    input_dim: int
    layers: list[dict[str, Any]]
    loss: str
    output_dim: int
    n_params: int
    task: str
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Network:
        return cls(
            id=d["id"],
            name=d.get("name"),
            input_dim=d.get("input_dim", 0),
            layers=list(d.get("layers") or []),
            loss=d.get("loss", ""),
            output_dim=d.get("output_dim", 0),
            n_params=d.get("n_params", 0),
            task=d.get("task", ""),
            created_at=_dt(d.get("created_at")),
            raw=d,
        )


@dataclass
class Dataset:
    id: str
    name: str | None
    n_samples: int
    n_features: int
    n_targets: int
    task: str
    classes: list[Any] | None
    feature_names: list[str] | None
    target_names: list[str] | None
    sha256: str
    nbytes: int
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dataset:
        return cls(
            id=d["id"],
            name=d.get("name"),
            n_samples=d.get("n_samples", 0),
            n_features=d.get("n_features", 0),
            n_targets=d.get("n_targets", 0),
            task=d.get("task", ""),
            classes=d.get("classes"),
            feature_names=d.get("feature_names"),
            target_names=d.get("target_names"),
            sha256=d.get("sha256", ""),
            nbytes=d.get("nbytes", 0),
            created_at=_dt(d.get("created_at")),
            raw=d,
        )


@dataclass
class JobError:
    code: str
    message: str


@dataclass
class EpochRecord:
    """One epoch of a job's history (GET /history, or an `epoch` event of the stream)."""

    epoch: int
    loss: float | None
    val_loss: float | None
    metrics: dict[str, float]
    seconds: float | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(
            epoch=int(d["epoch"]),
            loss=_float(d.get("loss")),
            val_loss=_float(d.get("val_loss")),
            metrics=dict(d.get("metrics") or {}),
            seconds=_float(d.get("seconds")),
            raw=d,
        )


@dataclass
class JobEvent:
    """One event of GET /v1/jobs/{id}/events: `seq` (the SSE id), `type` ("status" or "epoch") and its data."""

    seq: int | None
    type: str
    data: dict[str, Any]

    @property
    def status(self) -> str | None:
        return self.data.get("status") if self.type == "status" else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def epoch_record(self) -> EpochRecord | None:
        return EpochRecord.from_dict(self.data) if self.type == "epoch" and "epoch" in self.data else None


@dataclass
class JobBase:
    """A training job's state, as GET /v1/jobs/{id} answers it."""

    id: str
    status: str
    network_id: str
    dataset_id: str
    epoch: int
    epochs: int
    progress: float
    loss: float | None
    val_loss: float | None
    metrics: dict[str, float]
    model_id: str | None
    error: JobError | None
    attempt: int
    max_attempts: int
    cancel_requested: bool
    spec: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        err = d.get("error")
        return {
            "id": d["id"],
            "status": d.get("status", ""),
            "network_id": d.get("network_id", ""),
            "dataset_id": d.get("dataset_id", ""),
            "epoch": d.get("epoch", 0),
            "epochs": d.get("epochs", 0),
            "progress": d.get("progress", 0.0),
            "loss": _float(d.get("loss")),
            "val_loss": _float(d.get("val_loss")),
            "metrics": dict(d.get("metrics") or {}),
            "model_id": d.get("model_id"),
            "error": JobError(str(err.get("code", "")), str(err.get("message", ""))) if isinstance(err, dict) else None,
            "attempt": d.get("attempt", 0),
            "max_attempts": d.get("max_attempts", 0),
            "cancel_requested": bool(d.get("cancel_requested", False)),
            "spec": dict(d.get("spec") or {}),
            "created_at": _dt(d.get("created_at")),
            "started_at": _dt(d.get("started_at")),
            "finished_at": _dt(d.get("finished_at")),
            "raw": d,
        }

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass
class Job(JobBase):
    _jobs: Jobs | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], jobs: Jobs | None = None) -> Job:
        return cls(**cls._fields(d), _jobs=jobs)

    def _api(self) -> Jobs:
        if self._jobs is None:
            raise RuntimeError("this Job is not bound to a client")
        return self._jobs

    def refresh(self) -> Job:
        return self._api().get(self.id)

    def cancel(self) -> Job:
        return self._api().cancel(self.id)

    def history(self, after: int = 0) -> list[EpochRecord]:
        return self._api().history(self.id, after=after)

    def events(self, after: int | None = None) -> Iterator[JobEvent]:
        return self._api().events(self.id, after=after)

    def wait(
        self,
        timeout: float | None = None,
        *,
        on_epoch: Callable[[EpochRecord], object] | None = None,
        on_status: Callable[[str], object] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        return self._api().wait(
            self.id, timeout=timeout, on_epoch=on_epoch, on_status=on_status, poll_interval=poll_interval
        )


@dataclass
class AsyncJob(JobBase):
    _jobs: AsyncJobs | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], jobs: AsyncJobs | None = None) -> AsyncJob:
        return cls(**cls._fields(d), _jobs=jobs)

    def _api(self) -> AsyncJobs:
        if self._jobs is None:
            raise RuntimeError("this AsyncJob is not bound to a client")
        return self._jobs

    async def refresh(self) -> AsyncJob:
        return await self._api().get(self.id)

    async def cancel(self) -> AsyncJob:
        return await self._api().cancel(self.id)

    async def history(self, after: int = 0) -> list[EpochRecord]:
        return await self._api().history(self.id, after=after)

    def events(self, after: int | None = None) -> AsyncIterator[JobEvent]:
        return self._api().events(self.id, after=after)

    async def wait(
        self,
        timeout: float | None = None,
        *,
        on_epoch: Callable[[EpochRecord], object] | None = None,
        on_status: Callable[[str], object] | None = None,
        poll_interval: float = 1.0,
    ) -> AsyncJob:
        return await self._api().wait(
            self.id, timeout=timeout, on_epoch=on_epoch, on_status=on_status, poll_interval=poll_interval
        )


@dataclass
class Model:
    id: str
    job_id: str
    network_id: str
    dataset_id: str
    spec: dict[str, Any]
    task: str
    classes: list[Any] | None
    metrics: dict[str, Any]
    input_scaling: dict[str, list[float]] | None
    partial: bool
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Model:
        return cls(
            id=d["id"],
            job_id=d.get("job_id", ""),
            network_id=d.get("network_id", ""),
            dataset_id=d.get("dataset_id", ""),
            spec=dict(d.get("spec") or {}),
            task=d.get("task", ""),
            classes=d.get("classes"),
            metrics=dict(d.get("metrics") or {}),
            input_scaling=d.get("input_scaling"),
            partial=bool(d.get("partial", False)),
            created_at=_dt(d.get("created_at")),
            raw=d,
        )

    @property
    def input_dim(self) -> int:
        return int(self.spec.get("input_dim", 0))


@dataclass
class LayerWeights:
    weights: list[list[float]]
    biases: list[float]
    activation: str


@dataclass
class Weights:
    model_id: str
    layers: list[LayerWeights]
    input_scaling: dict[str, list[float]] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Weights:
        layers = [LayerWeights(lw["weights"], lw["biases"], lw.get("activation", "")) for lw in d.get("layers", [])]
        return cls(model_id=d.get("model_id", ""), layers=layers, input_scaling=d.get("input_scaling"), raw=d)


@dataclass
class Prediction:
    model_id: str
    outputs: list[list[float]]
    labels: list[Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prediction:
        return cls(model_id=d.get("model_id", ""), outputs=d.get("outputs", []), labels=d.get("labels"), raw=d)


@dataclass
class Page(Generic[T]):
    """One page of a list: `data`, `has_more`; `next_page()` fetches the one after it (None at the end)."""

    data: list[T]
    has_more: bool
    _fetch: Callable[[str], Page[T]] | None = field(default=None, repr=False, compare=False)
    _last_id: str | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def next_page(self) -> Page[T] | None:
        if not self.has_more or self._fetch is None or self._last_id is None:
            return None
        return self._fetch(self._last_id)

    def auto_paging_iter(self) -> Iterator[T]:
        """This page's items, then every later page's, fetched as needed."""
        page: Page[T] | None = self
        while page is not None:
            yield from page.data
            page = page.next_page()


@dataclass
class AsyncPage(Generic[T]):
    data: list[T]
    has_more: bool
    _fetch: Callable[[str], Awaitable[AsyncPage[T]]] | None = field(default=None, repr=False, compare=False)
    _last_id: str | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    async def next_page(self) -> AsyncPage[T] | None:
        if not self.has_more or self._fetch is None or self._last_id is None:
            return None
        return await self._fetch(self._last_id)

    async def auto_paging_iter(self) -> AsyncIterator[T]:
        page: AsyncPage[T] | None = self
        while page is not None:
            for item in page.data:
                yield item
            page = await page.next_page()

