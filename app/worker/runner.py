"""The training child: one spawned process per claimed job (DESIGN.md §4-§5).

It builds its own database engine, loads the job, its network and dataset, resumes from the newest readable
checkpoint, trains on the engine and publishes epoch records with a checkpoint, at most a few percent of the wall
time apart, then the result. Every write is fenced by the lease token it was started with: once the supervisor's
lease is gone, nothing the child writes lands. The supervisor talks to it through a shared control word (bit
`STOP`: cancel; bit `RELEASE`: checkpoint and give the job back) and reads its liveness from a shared progress
timestamp. Both are lock-free shared memory: a child frozen at any instant can never block its supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from app.db import repositories as repo
from app.db.base import utcnow
from app.db.models import Checkpoint, Dataset, Job, Network
from app.db.models import Model as ModelRow
from app.db.session import Database
from app.domain import JobStatus
from app.engine import CheckpointError, DivergenceError, NetworkSpec, SpecError, TrainConfig, Trainer
from app.errors import InvalidRequest
from app.services.resources import ENGINE_FIELDS, load_dataset_arrays, training_targets
from app.storage import blobs

log = logging.getLogger("backprop.worker")

SMALL_BLOB = 4 << 20  # checkpoints up to one chunk are written in the publishing transaction itself
EXIT_OK = 0
EXIT_LEASE_LOST = 3


class LeaseLost(Exception):
    """The job is no longer ours: another worker, the reaper or a cancel took it."""


@dataclass
class ChildArgs:
    database_url: str
    job_id: str
    token: str
    attempt: int
    lease_seconds: float
    checkpoint_seconds: float
    processes: int | None = None  # training processes for the job (None: the engine's choice for this host)
    control: Any = None  # multiprocessing RawValue('i'): STOP | RELEASE bits, written by the supervisor only
    progress: Any = None  # multiprocessing Value('d'): time.time() of the last finished batch
    extra: dict[str, Any] = field(default_factory=dict)


STOP = 1
RELEASE = 2


def warm_main(conn: Any, control: Any, progress: Any) -> None:
    """Entry point of a pre-spawned child: imports are done while the supervisor waits for work; the job's
    arguments arrive through `conn`. A closed pipe (supervisor gone or shutting down) ends it quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM reach the supervisor, which decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    try:
        args: ChildArgs = conn.recv()
    except (EOFError, OSError):
        os._exit(EXIT_OK)
    conn.close()
    args.control, args.progress = control, progress
    child_main(args)


def child_main(args: ChildArgs) -> None:
    """Train one job. Exits 0 when the job's outcome is written, 3 when the lease was lost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    db = Database(args.database_url)
    try:
        code = JobRun(db, args).run()
    finally:
        db.dispose()
    os._exit(code)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the supervisor dies (PR_SET_PDEATHSIG); elsewhere a watcher thread."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(EXIT_LEASE_LOST)
    except (OSError, AttributeError):
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(EXIT_LEASE_LOST)

        threading.Thread(target=watch, daemon=True).start()


class JobRun:
    def __init__(self, db: Database, args: ChildArgs) -> None:
        self.db, self.args = db, args
        self.pending: list[dict[str, Any]] = []  # epoch records not yet published
        self.last_publish = time.monotonic()
        self.publish_cost = 0.0
        self.trainer: Trainer | None = None
        self.keep_partial = False

    # --- helpers --------------------------------------------------------------------------------------------------

    def fenced(self, session: Any, **values: Any) -> None:
        ok = repo.fence(
            session,
            self.args.job_id,
            self.args.token,
            now=repo.now_db(session),
            lease_seconds=self.args.lease_seconds,
            values=values,
        )
        if not ok:
            raise LeaseLost(self.args.job_id)

    def _stamp(self) -> None:
        if self.args.progress is not None:
            self.args.progress.value = time.time()

    # --- the run --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._load()
            assert self.trainer is not None
            result = self.trainer.fit(self._on_epoch, batch_callback=self._on_batches, batch_callback_every=8)
            if result.finished:
                self._succeed()
            elif self._control() & RELEASE and not self._cancelling():
                self._release()
            else:
                self._cancel()
            return EXIT_OK
        except LeaseLost:
            log.warning("job %s: lease lost; dropping this run", self.args.job_id)
            return EXIT_LEASE_LOST
        except DivergenceError as exc:
            return self._fail("divergence", str(exc))
        except (SpecError, InvalidRequest) as exc:
            msg = exc.message if isinstance(exc, SpecError) else exc.detail
            return self._fail("invalid_input", f"the dataset does not fit the training request: {msg}")
        except Exception:
            log.error("job %s: training failed\n%s", self.args.job_id, traceback.format_exc())
            return self._fail(
                "internal", "an internal error stopped training; the operators have the details in the worker log"
            )

    def _cancelling(self) -> bool:
        return bool(self._control() & STOP)

    def _control(self) -> int:
        return int(self.args.control.value) if self.args.control is not None else 0

    def _load(self) -> None:
        a = self.args
        with self.db.read_session() as s:
            job = s.get(Job, a.job_id)
            if job is None or job.lease_token != a.token:
                raise LeaseLost(a.job_id)
            network = s.get(Network, job.network_id)
            dataset = s.get(Dataset, job.dataset_id)
            if network is None or dataset is None:
                raise InvalidRequest("the job's network or dataset no longer exists")
            spec = NetworkSpec.from_dict(network.spec)
            config = TrainConfig.from_dict({k: v for k, v in job.spec.items() if k in ENGINE_FIELDS})
            self.keep_partial = bool(job.spec.get("keep_partial_model"))
            self.classes = dataset.classes
            self.network_id, self.dataset_id, self.owner = network.id, dataset.id, job.owner
            x, y_stored = load_dataset_arrays(s, dataset)
            y = training_targets(spec, str(dataset.kind), dataset.classes, y_stored, dataset.n_targets)
            checkpoints = repo.latest_checkpoints(s, a.job_id)
            blobs_by_seq = []
            for ck in checkpoints:
                try:
                    blobs_by_seq.append(blobs.get_blob(s, ck.blob_id, sha256=ck.sha256))
                except blobs.BlobError as exc:
                    log.warning("job %s: checkpoint %s unreadable (%s); trying an older one", a.job_id, ck.seq, exc)
        for data in blobs_by_seq:
            try:
                self.trainer = Trainer.from_checkpoint(data, x, y, processes=a.processes)
                log.info("job %s: resumed at epoch %d, batch %d", a.job_id, self.trainer.epoch, self.trainer.batch)
                break
            except CheckpointError as exc:
                log.warning("job %s: checkpoint not usable (%s); trying an older one", a.job_id, exc)
        if self.trainer is None:
            self.trainer = Trainer(spec, config, x, y, processes=a.processes)
        self._stop_watcher()

    def _stop_watcher(self) -> None:
        """Turn the supervisor's control word into a stop at the next batch boundary (a flag the loop reads for
        free); polled every 50 ms."""
        if self.args.control is None:
            return
        trainer = self.trainer
        assert trainer is not None

        def watch() -> None:
            while not self._control():
                time.sleep(0.05)
            trainer.request_stop()

        threading.Thread(target=watch, daemon=True, name="stop-watcher").start()

    def _on_batches(self, epoch: int, batch: int) -> bool:
        self._stamp()
        if time.monotonic() - self.last_publish >= self.args.checkpoint_seconds:
            self._publish(force=True)
        return True

    def _on_epoch(self, record: dict[str, Any]) -> bool:
        self._stamp()
        self.pending.append(record)
        self._publish(force=False)
        return True

    def _publish(self, *, force: bool) -> None:
        """Checkpoint + pending epoch records in one fenced transaction, when due: writing stays <= ~1% of the time."""
        elapsed = time.monotonic() - self.last_publish
        first = not self.publish_cost
        if not (force or first or elapsed >= max(0.25, 100 * self.publish_cost)):
            return
        trainer = self.trainer
        assert trainer is not None
        t0 = time.monotonic()
        data = trainer.checkpoint()
        ref = None
        if len(data) > SMALL_BLOB:
            with self.db.session() as s:  # a large checkpoint's chunks first, unreferenced, in their own transaction
                ref = blobs.put_blob(s, data)
        with self.db.session() as s:
            self.fenced(s, **self._progress_values())
            if ref is None:  # small: one transaction (one fsync) for chunk and publish alike
                ref = blobs.put_blob(s, data)
            repo.add_epochs(s, self.args.job_id, self.pending)
            seq = int(s.execute(_max_seq(self.args.job_id)).scalar_one()) + 1
            dropped = repo.add_checkpoint(
                s,
                Checkpoint(
                    job_id=self.args.job_id,
                    seq=seq,
                    epoch=trainer.epoch,
                    batch=trainer.batch,
                    attempt=self.args.attempt,
                    blob_id=ref.blob_id,
                    sha256=ref.sha256,
                    nbytes=ref.nbytes,
                ),
            )
            s.execute(_set_seq(self.args.job_id, seq))
            for blob_id in dropped:
                blobs.delete_blob(s, blob_id)
        self.pending.clear()
        self.last_publish = time.monotonic()
        self.publish_cost = max(self.last_publish - t0, 1e-4)

    def _progress_values(self) -> dict[str, Any]:
        trainer = self.trainer
        assert trainer is not None
        values: dict[str, Any] = {
            "progress_at": utcnow(),
            "epoch": trainer.epoch,
            "progress": min(1.0, (trainer.epoch + trainer.batch / trainer.n_batches) / trainer.config.epochs),
        }
        last = trainer.weights_record()     # once early stopping restored the best weights, the best epoch's
        if last is not None:
            values["last_metrics"] = {"loss": last["loss"], "val_loss": last["val_loss"], "metrics": last["metrics"]}
        return values

    def _store_model(self, *, partial: bool) -> str:
        trainer = self.trainer
        assert trainer is not None
        model = trainer.model(meta={"classes": self.classes, "partial": partial})
        data = model.to_bytes()
        with self.db.session() as s:
            ref = blobs.put_blob(s, data)
        self._model_ref = ref
        metrics = dict(model.meta)
        metrics.pop("classes", None)
        self._model_metrics = metrics
        return ref.blob_id

    def _model_row(self, s: Any, *, partial: bool) -> str:
        ref = self._model_ref
        row = ModelRow(
            owner=self.owner,
            job_id=self.args.job_id,
            network_id=self.network_id,
            dataset_id=self.dataset_id,
            spec=self.trainer.spec.to_dict() if self.trainer else {},
            metrics=self._model_metrics,
            classes=self.classes,
            partial=partial,
            blob_id=ref.blob_id,
            sha256=ref.sha256,
            nbytes=ref.nbytes,
        )
        s.add(row)
        s.flush()
        return row.id

    def _drop_checkpoints(self, s: Any) -> None:
        for blob_id in repo.delete_checkpoints(s, self.args.job_id):
            blobs.delete_blob(s, blob_id)

    def _succeed(self) -> None:
        blob_id = self._store_model(partial=False)
        with self.db.session() as s:
            now = repo.now_db(s)
            self.fenced(s, **self._progress_values())
            repo.add_epochs(s, self.args.job_id, self.pending)
            # The fence holds the job's row: a cancel the API accepted (202) before it is seen here, and one after it
            # finds the job no longer running (409). An accepted cancel is honoured even when the training it asked
            # to stop has just finished: the job ends cancelled, its model kept only with keep_partial_model (all
            # epochs ran, so it is not marked partial).
            cancelled = repo.cancel_requested(s, self.args.job_id)
            values: dict[str, Any] = {"progress": 1.0}
            if not cancelled or self.keep_partial:
                values["model_id"] = self._model_row(s, partial=False)
            else:
                blobs.delete_blob(s, blob_id)
            self._drop_checkpoints(s)
            if not repo.finish_job(
                s,
                self.args.job_id,
                self.args.token,
                JobStatus.CANCELLED if cancelled else JobStatus.SUCCEEDED,
                now=now,
                values=values,
                reason="cancelled by the user (as training finished)" if cancelled else None,
            ):
                raise LeaseLost(self.args.job_id)
        self.pending.clear()

    def _cancel(self) -> None:
        if self.keep_partial:
            self._store_model(partial=True)
        with self.db.session() as s:
            now = repo.now_db(s)
            self.fenced(s, **self._progress_values())
            repo.add_epochs(s, self.args.job_id, self.pending)
            values: dict[str, Any] = {}
            if self.keep_partial:
                values["model_id"] = self._model_row(s, partial=True)
            self._drop_checkpoints(s)
            if not repo.finish_job(
                s,
                self.args.job_id,
                self.args.token,
                JobStatus.CANCELLED,
                now=now,
                values=values,
                reason="cancelled by the user",
            ):
                raise LeaseLost(self.args.job_id)
        self.pending.clear()

    def _release(self) -> None:
        self._publish(force=True)
        with self.db.session() as s:
            repo.requeue(
                s,
                self.args.job_id,
                self.args.token,
                now=repo.now_db(s),
                count_attempt=False,
                reason="worker shutting down; resumes from its checkpoint",
            )

    def _fail(self, code: str, message: str) -> int:
        try:
            with self.db.session() as s:
                now = repo.now_db(s)
                self.fenced(s)
                repo.add_epochs(s, self.args.job_id, self.pending)
                self._drop_checkpoints(s)
                if not repo.finish_job(
                    s,
                    self.args.job_id,
                    self.args.token,
                    JobStatus.FAILED,
                    now=now,
                    values={"error_code": code, "error": message},
                    reason=code,
                ):
                    raise LeaseLost(self.args.job_id)
            return EXIT_OK
        except LeaseLost:
            return EXIT_LEASE_LOST


def _max_seq(job_id: str) -> Any:
    from sqlalchemy import func, select

    return select(func.coalesce(func.max(Checkpoint.seq), 0)).where(Checkpoint.job_id == job_id)


def _set_seq(job_id: str, seq: int) -> Any:
    from sqlalchemy import update

    return update(Job).where(Job.id == job_id).values(checkpoint_seq=seq)
