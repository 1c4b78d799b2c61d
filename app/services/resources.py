"""Use cases for networks, datasets, jobs and models. No FastAPI here; the caller owns the transaction.

Every function takes the caller's `owner` and only ever sees that owner's rows: another owner's id is treated
exactly like an id that does not exist.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import repositories as repo
from app.db.base import utcnow
from app.db.models import Dataset, EpochMetric, IdempotencyKey, Job, Model, Network
from app.db.notify import notify_queue
from app.domain import TERMINAL, DatasetKind, JobEventType, JobStatus
from app.engine import Model as EngineModel
from app.engine import NetworkSpec, SpecError, TrainConfig
from app.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from app.services import webhooks
from app.services.dataset_codec import ParsedDataset
from app.storage import blobs

ENGINE_FIELDS = TrainConfig.FIELDS


@dataclass(frozen=True)
class Limits:
    max_params: int = 10_000_000
    max_epochs: int = 10_000
    max_batch_size: int = 65_536
    max_active_jobs: int = 10
    max_stored_bytes: int = 2 << 30
    max_attempts: int = 3


def _owned(session: Session, cls: type[repo.T], owner: str, id_: str, noun: str) -> repo.T:
    """The owner's row, or the one 404 that a missing id and another owner's id share."""
    row = repo.get_owned(session, cls, owner, id_)
    if row is None:
        raise NotFound(f"no {noun} with id {id_!r}")
    return row


# --- networks ---------------------------------------------------------------------------------------------------


def create_network(
    session: Session, *, owner: str, body: dict[str, Any], limits: Limits, idempotency_key: str | None = None
) -> tuple[Network, bool]:
    """Validate and store a network: (row, replayed). A repeated Idempotency-Key with the same body returns the
    network the first request made."""
    request_sha = _canonical(body)
    if idempotency_key is not None:
        prior = _replay(session, Network, owner, idempotency_key, "network", request_sha)
        if prior is not None:
            return prior, True
    row = _new_network(session, owner=owner, body=body, limits=limits)
    if idempotency_key is not None:
        _remember(session, owner, idempotency_key, "network", request_sha, row.id)
    return row, False


def _new_network(session: Session, *, owner: str, body: dict[str, Any], limits: Limits) -> Network:
    try:
        spec = NetworkSpec.from_dict({k: v for k, v in body.items() if k != "name"})
    except SpecError as exc:
        raise InvalidRequest(exc.message, field=exc.field) from exc
    if spec.n_params > limits.max_params:
        raise InvalidRequest(
            f"the network has {spec.n_params} parameters; the limit (max_params) is {limits.max_params}", field="layers"
        )
    row = Network(owner=owner, name=body.get("name"), spec=spec.to_dict(), n_params=spec.n_params)
    session.add(row)
    session.flush()
    return row


def network_view(row: Network) -> dict[str, Any]:
    spec = NetworkSpec.from_dict(row.spec)
    return {
        "id": row.id,
        "name": row.name,
        **spec.to_dict(),
        "output_dim": spec.output_dim,
        "n_params": row.n_params,
        "task": "classification" if spec.is_classifier else "regression",
        "created_at": row.created_at,
    }


def get_network(session: Session, *, owner: str, network_id: str) -> Network:
    return _owned(session, Network, owner, network_id, "network")


# --- datasets ---------------------------------------------------------------------------------------------------


def stored_bytes(session: Session, owner: str) -> int:
    from sqlalchemy import func, select

    total = 0
    for cls in (Dataset, Model):
        total += int(
            session.execute(
                select(func.coalesce(func.sum(cls.nbytes), 0)).where(cls.owner == owner, cls.deleted_at.is_(None))
            ).scalar_one()
        )
    return total


def create_dataset(session: Session, *, owner: str, parsed: ParsedDataset, name: str | None, limits: Limits) -> Dataset:
    data = parsed.to_bytes()
    repo.lock_owner(session, owner)
    used = stored_bytes(session, owner)
    if used + len(data) > limits.max_stored_bytes:
        raise QuotaExceeded(
            f"storing this dataset ({len(data)} bytes) would pass the per-owner storage quota "
            f"(max_stored_bytes_per_owner {limits.max_stored_bytes}; {used} in use); delete "
            f"datasets or models first",
            retry_after=60,
        )
    ref = blobs.put_blob(session, data)
    row = Dataset(
        owner=owner,
        name=name,
        n_samples=parsed.n_samples,
        n_features=parsed.n_features,
        n_targets=parsed.n_targets,
        kind=DatasetKind(parsed.task),
        classes=parsed.classes,
        feature_names=parsed.feature_names,
        target_names=parsed.target_names,
        sha256=ref.sha256,
        nbytes=ref.nbytes,
        blob_id=ref.blob_id,
    )
    session.add(row)
    session.flush()
    return row


def create_dataset_idempotent(
    session: Session,
    *,
    owner: str,
    parsed: ParsedDataset,
    name: str | None,
    limits: Limits,
    idempotency_key: str | None,
    request_sha: str,
) -> tuple[Dataset, bool]:
    """create_dataset, made safe to retry with an Idempotency-Key: (dataset, replayed)."""
    sha = hashlib.sha256(request_sha.encode()).hexdigest()
    if idempotency_key is not None:
        prior = _replay(session, Dataset, owner, idempotency_key, "dataset", sha)
        if prior is not None:
            return prior, True
    row = create_dataset(session, owner=owner, parsed=parsed, name=name, limits=limits)
    if idempotency_key is not None:
        _remember(session, owner, idempotency_key, "dataset", sha, row.id)
    return row, False


def dataset_view(row: Dataset) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "n_samples": row.n_samples,
        "n_features": row.n_features,
        "n_targets": row.n_targets,
        "task": str(row.kind),
        "classes": row.classes,
        "feature_names": row.feature_names,
        "target_names": row.target_names,
        "sha256": row.sha256,
        "nbytes": row.nbytes,
        "created_at": row.created_at,
    }


def get_dataset(session: Session, *, owner: str, dataset_id: str) -> Dataset:
    return _owned(session, Dataset, owner, dataset_id, "dataset")


def load_dataset_arrays(session: Session, dataset: Dataset) -> tuple[NDArray[np.float64], NDArray[Any]]:
    data = blobs.get_blob(session, dataset.blob_id, sha256=dataset.sha256)
    return ParsedDataset.arrays_from_bytes(data)


def training_targets(
    spec: NetworkSpec, kind: str, classes: list[Any] | None, y: NDArray[Any], n_targets: int
) -> NDArray[Any]:
    """The dataset's stored targets as the engine wants them for this network, or InvalidRequest saying why not."""
    units = spec.output_dim
    if spec.loss == "cross_entropy":
        if kind != "classification" or classes is None:
            raise InvalidRequest(
                "loss cross_entropy needs a dataset of class labels, but this dataset's targets "
                "are numbers (regression)",
                field="dataset_id",
            )
        if units != len(classes):
            raise InvalidRequest(
                f"the network's output layer has {units} units but the dataset has "
                f"{len(classes)} classes {classes[:20]}",
                field="network_id",
            )
        return y.astype(np.int64)
    if spec.loss == "binary_cross_entropy":
        if kind == "classification" and classes is not None:
            if len(classes) != 2 or units != 1:
                raise InvalidRequest(
                    f"binary_cross_entropy with class labels needs exactly 2 classes and 1 output "
                    f"unit; the dataset has {len(classes)} classes and the network {units} "
                    f"output units (use softmax + cross_entropy for more classes)",
                    field="network_id",
                )
            return y.astype(np.float64).reshape(-1, 1)
        if y.shape[1] != units:
            raise InvalidRequest(
                f"the network has {units} outputs but the dataset has {y.shape[1]} target columns", field="network_id"
            )
        if y.min() < 0 or y.max() > 1:
            raise InvalidRequest(
                f"binary_cross_entropy needs targets in [0, 1]; this dataset's range from {float(y.min()):g} to "
                f"{float(y.max()):g} (use a regression loss such as mse, or class labels)",
                field="dataset_id",
            )
        return y
    # regression losses
    if kind == "classification" and classes is not None:
        if units == 1 and all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
            return np.asarray(classes, dtype=np.float64)[y.astype(np.int64)].reshape(-1, 1)
        if units == len(classes):
            return np.eye(len(classes))[y.astype(np.int64)]
        raise InvalidRequest(
            f"loss {spec.loss} on class labels needs {len(classes)} output units (one-hot) or 1 "
            f"unit for numeric labels; the network has {units}",
            field="network_id",
        )
    if y.shape[1] != units:
        raise InvalidRequest(
            f"the network has {units} outputs but the dataset has {y.shape[1]} target columns", field="network_id"
        )
    return y


# --- jobs -------------------------------------------------------------------------------------------------------


def _canonical(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit_job(
    session: Session, *, owner: str, body: dict[str, Any], limits: Limits, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Validate a training request against its network and dataset and queue it: (job, replayed)."""
    request_sha = _canonical(body)
    if idempotency_key is not None:
        prior = _replay(session, Job, owner, idempotency_key, "job", request_sha)
        if prior is not None:
            return prior, True
    network = repo.get_owned(session, Network, owner, body["network_id"])
    if network is None:
        raise NotFound(f"no network with id {body['network_id']!r}", field="network_id")
    dataset = repo.get_owned(session, Dataset, owner, body["dataset_id"])
    if dataset is None:
        raise NotFound(f"no dataset with id {body['dataset_id']!r}", field="dataset_id")
    spec = NetworkSpec.from_dict(network.spec)
    if spec.input_dim != dataset.n_features:
        raise InvalidRequest(
            f"the network's input_dim is {spec.input_dim} but the dataset has {dataset.n_features} features per row",
            field="network_id",
        )
    _check_outputs(session, spec, dataset)
    for name, value, limit in (
        ("epochs", body.get("epochs"), limits.max_epochs),
        ("batch_size", body.get("batch_size"), limits.max_batch_size),
    ):
        if isinstance(value, int) and value > limit:
            raise InvalidRequest(f"{name} is {value}; the limit (max_{name}) is {limit}", field=name)
    engine_cfg = {k: v for k, v in body.items() if k in ENGINE_FIELDS and v is not None}
    if engine_cfg.get("seed") is None:
        engine_cfg["seed"] = secrets.randbelow(2**31)
    opt = dict(engine_cfg.get("optimizer") or {})
    engine_cfg["optimizer"] = {k: v for k, v in opt.items() if v is not None}
    if engine_cfg.get("schedule"):
        engine_cfg["schedule"] = {k: v for k, v in engine_cfg["schedule"].items() if v is not None}
    try:
        config = TrainConfig.from_dict(engine_cfg, max_epochs=limits.max_epochs, max_batch_size=limits.max_batch_size)
    except SpecError as exc:
        raise InvalidRequest(exc.message, field=exc.field) from exc
    if (
        config.validation_split > 0
        and dataset.n_samples - max(1, round(dataset.n_samples * config.validation_split)) < 1
    ):
        raise InvalidRequest(
            f"validation_split {config.validation_split} leaves no training rows out of {dataset.n_samples}",
            field="validation_split",
        )
    if (
        config.early_stopping is not None
        and (config.early_stopping.monitor or "").startswith("val_")
        and config.validation_split == 0
    ):
        raise InvalidRequest(
            f"early_stopping.monitor {config.early_stopping.monitor} needs validation_split > 0",
            field="early_stopping.monitor",
        )
    es = config.early_stopping
    if es is not None and es.monitor is not None:
        base = es.monitor.removeprefix("val_")
        if base != "loss" and (base == "accuracy") != spec.is_classifier:
            kind = "classifier" if spec.is_classifier else "regressor"
            metrics = "loss, accuracy" if spec.is_classifier else "loss, mae, rmse, r2"
            raise InvalidRequest(
                f"early_stopping.monitor {es.monitor} is not a metric of this {kind} "
                f"(it has {metrics}, and their val_ forms)",
                field="early_stopping.monitor",
            )
    repo.lock_owner(session, owner)
    active = repo.count_active_jobs(session, owner)
    if active >= limits.max_active_jobs:
        raise QuotaExceeded(
            f"{active} jobs are queued or running; the limit (max_active_jobs_per_owner) is {limits.max_active_jobs}",
            retry_after=30,
        )
    stored = config.to_dict()
    stored["keep_partial_model"] = bool(body.get("keep_partial_model", False))
    webhook_url = webhooks.check_url(body["webhook_url"]) if body.get("webhook_url") else None
    job = Job(
        owner=owner,
        network_id=network.id,
        dataset_id=dataset.id,
        spec=stored,
        spec_sha256=_canonical(stored),
        status=JobStatus.QUEUED,
        epochs=config.epochs,
        max_attempts=limits.max_attempts,
        partial_model=stored["keep_partial_model"],
        webhook_url=webhook_url,
        run_after=utcnow(),
    )
    session.add(job)
    session.flush()
    if webhook_url:
        webhooks.secret_for(session, owner)  # made now, so the owner can fetch it before the first delivery
    repo.add_event(session, job.id, JobEventType.STATUS, status=JobStatus.QUEUED)
    notify_queue(session)
    if idempotency_key is not None:
        _remember(session, owner, idempotency_key, "job", request_sha, job.id)
    return job, False


def _replay(session: Session, cls: type[repo.T], owner: str, key: str, kind: str, request_sha: str) -> repo.T | None:
    """The resource an earlier request with this key made, None if the key is new; 422 if the body differs."""
    prior = repo.find_idempotency(session, owner, key, kind)
    if prior is None:
        return None
    if prior.request_sha256 != request_sha:
        raise InvalidRequest("this Idempotency-Key was used with a different request body", field="Idempotency-Key")
    row = repo.get_owned(session, cls, owner, prior.resource_id or "")
    if row is None:
        raise Conflict(f"the {kind} made with this Idempotency-Key no longer exists; use a new key")
    return row


def _remember(session: Session, owner: str, key: str, kind: str, request_sha: str, resource_id: str) -> None:
    """Record the key in the creating transaction; a concurrent twin that got there first makes this a 409."""
    try:
        with session.begin_nested():
            session.add(
                IdempotencyKey(
                    owner=owner, key=key, resource_type=kind, request_sha256=request_sha, resource_id=resource_id
                )
            )
    except IntegrityError:
        raise Conflict("a request with this Idempotency-Key is being processed; retry shortly") from None


def _check_outputs(session: Session, spec: NetworkSpec, dataset: Dataset) -> None:
    """Whether the network's outputs fit the dataset's targets, judged on one stand-in row of the stored shape; and
    where the values matter too (binary_cross_entropy on numeric targets: each in [0, 1]), on the stored targets."""
    k = dataset.n_targets
    one_row = np.zeros(1) if dataset.kind == DatasetKind.CLASSIFICATION else np.zeros((1, k))
    training_targets(spec, str(dataset.kind), dataset.classes, one_row, k)
    if spec.loss == "binary_cross_entropy" and dataset.kind != DatasetKind.CLASSIFICATION:
        _, y = load_dataset_arrays(session, dataset)
        training_targets(spec, str(dataset.kind), dataset.classes, y, k)


def get_job(session: Session, *, owner: str, job_id: str) -> Job:
    return _owned(session, Job, owner, job_id, "job")


def job_view(session: Session, job: Job) -> dict[str, Any]:
    last = job.last_metrics or {}
    transitions = [
        {"status": str(e.status), "at": e.created_at, "reason": (e.data or {}).get("reason")}
        for e in repo.status_events(session, job.id)
    ]
    return {
        "id": job.id,
        "status": str(job.status),
        "network_id": job.network_id,
        "dataset_id": job.dataset_id,
        "epoch": job.epoch,
        "epochs": job.epochs,
        "progress": job.progress,
        "loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "metrics": last.get("metrics") or {},
        "model_id": job.model_id,
        "error": {"code": job.error_code, "message": job.error or ""} if job.error_code else None,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested_at is not None,
        "transitions": transitions,
        "spec": job.spec,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "webhook_url": job.webhook_url,
        "webhook_deliveries": webhooks.deliveries_view(session, job.id) if job.webhook_url else [],
    }


def job_events(session: Session, *, job_id: str, after: int, limit: int = 500) -> tuple[list[dict[str, Any]], bool]:
    """The job's events after seq `after` as stream payloads, and whether the job is terminal. The terminal status
    event carries the final metrics, model id and error, read from the job row that the same transaction made
    terminal."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    out: list[dict[str, Any]] = []
    for e in repo.events_after(session, job_id, after=after, limit=limit):
        data = dict(e.data or {})
        payload: dict[str, Any] = {"job_id": job_id, "seq": e.seq, "type": str(e.type)}
        if e.type == JobEventType.EPOCH:
            payload |= {
                "epoch": data.get("epoch"),
                "loss": data.get("loss"),
                "val_loss": data.get("val_loss"),
                "metrics": data.get("metrics") or {},
                "seconds": data.get("seconds", 0.0),
            }
        else:
            payload |= {"status": str(e.status), "reason": data.get("reason")}
            if e.status in TERMINAL:
                payload |= repo.terminal_summary(job)
        payload["at"] = e.created_at.isoformat() if e.created_at else None
        out.append(payload)
    return out, job.status in TERMINAL


def cancel_job(session: Session, *, owner: str, job_id: str) -> Job:
    job = get_job(session, owner=owner, job_id=job_id)
    now = utcnow()
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    if repo.cancel_queued(session, job_id, now):
        repo.add_event(
            session, job_id, JobEventType.STATUS, status=JobStatus.CANCELLED, data={"reason": "cancelled by the user"}
        )
    elif not repo.request_cancel(session, job_id, now):
        session.refresh(job)
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    session.flush()
    session.refresh(job)
    return job


def epoch_view(row: EpochMetric) -> dict[str, Any]:
    return {
        "epoch": row.epoch,
        "loss": row.loss,
        "val_loss": row.val_loss,
        "metrics": row.metrics or {},
        "seconds": row.seconds,
    }


# --- models -----------------------------------------------------------------------------------------------------


def get_model(session: Session, *, owner: str, model_id: str) -> Model:
    return _owned(session, Model, owner, model_id, "model")


class ModelCache:
    """Loaded engine models by id (immutable once written), least recently used evicted first."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, EngineModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: Session, row: Model) -> EngineModel:
        with self._lock:
            model = self._items.get(row.id)
            if model is not None:
                self._items.move_to_end(row.id)
                return model
        model = EngineModel.from_bytes(blobs.get_blob(session, row.blob_id, sha256=row.sha256))
        with self._lock:
            self._items[row.id] = model
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return model

    def drop(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)


def model_view(row: Model, model: EngineModel) -> dict[str, Any]:
    spec = model.spec
    scaling = None
    if model.x_mean is not None and model.x_scale is not None:
        scaling = {"mean": model.x_mean.tolist(), "scale": model.x_scale.tolist()}
    return {
        "id": row.id,
        "job_id": row.job_id,
        "network_id": row.network_id,
        "dataset_id": row.dataset_id,
        "spec": row.spec,
        "task": "classification" if spec.is_classifier else "regression",
        "classes": row.classes,
        "metrics": row.metrics or {},
        "input_scaling": scaling,
        "partial": row.partial,
        "created_at": row.created_at,
    }


def predict(row: Model, model: EngineModel, inputs: list[list[float]]) -> dict[str, Any]:
    d = model.spec.input_dim
    for i, r in enumerate(inputs):
        if len(r) != d:
            raise InvalidRequest(f"the model takes {d} features per row; row {i} has {len(r)}", field=f"inputs[{i}]")
    with np.errstate(all="ignore"):
        out = model.predict(np.asarray(inputs, dtype=np.float64)).astype(np.float64)
    if not np.isfinite(out).all():
        row = int(np.argwhere(~np.isfinite(out))[0][0])
        raise InvalidRequest(
            f"inputs row {row} drives the model's outputs past the float range (NaN or Inf); "
            f"are its values on the scale of the training data?",
            field=f"inputs[{row}]",
        )
    labels = None
    classes = row.classes
    if classes:
        if model.spec.loss == "cross_entropy" and len(classes) == out.shape[1]:
            labels = [classes[i] for i in out.argmax(axis=1)]
        elif model.spec.loss == "binary_cross_entropy" and len(classes) == 2 and out.shape[1] == 1:
            labels = [classes[int(p > 0.5)] for p in out[:, 0]]
        elif model.spec.loss not in ("cross_entropy", "binary_cross_entropy") and len(classes) == out.shape[1]:
            labels = [classes[i] for i in out.argmax(axis=1)]
    return {"model_id": row.id, "outputs": out.tolist(), "labels": labels}
