"""The supervisor: claims jobs, runs each in a spawned training child, keeps its lease, relays cancel and shutdown.

One supervisor trains one job at a time. While the child trains, the supervisor renews the lease every
`heartbeat_seconds` (unless the child has finished no batch for `hung_seconds`: a hung child loses its lease),
polls for a cancel request, and notices at once when the child dies, giving the job back to the queue (or failing
it after `max_attempts`). Every `reaper_seconds` it also returns other workers' expired jobs to the queue.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import exists, func, select

from app.config import Settings
from app.db import repositories as repo
from app.db.models import Job
from app.db.notify import start_listener
from app.db.session import Database, is_busy_error
from app.domain import JobStatus
from app.engine.parallel import cpus
from app.worker.runner import EXIT_LEASE_LOST, RELEASE, STOP, ChildArgs, warm_main
from app.worker.webhooks import WebhookSender

log = logging.getLogger("backprop.worker")

CANCEL_POLL_SECONDS = 0.5
CANCEL_KILL_SECONDS = 10.0
RELEASE_GRACE_SECONDS = 15.0  # SIGTERM: a child that has not checkpointed and released by then is killed


def _pin_blas_threads() -> None:
    """BLAS results vary with the thread count: training children run single-threaded (set before numpy loads)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def train_processes(setting: int, workers: int) -> int | None:
    """Processes per training job: the setting when given; else the engine's choice (two where it gains) when the
    machine has two CPUs for each job it may train at once, else one (jobs would share the cores anyway)."""
    if setting:
        return setting
    return None if cpus() >= 2 * max(1, workers) else 1


class WarmChild:
    """A training process spawned ahead of need, its imports done, waiting for one job's arguments."""

    def __init__(self, ctx: Any) -> None:
        self.control = ctx.RawValue("i", 0)
        self.progress = ctx.Value("d", time.time(), lock=False)
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=warm_main, args=(child_conn, self.control, self.progress), name="train-warm", daemon=True
        )
        self.process.start()
        child_conn.close()

    def start(self, args: ChildArgs) -> bool:
        self.progress.value = time.time()
        try:
            self.conn.send(args)
        except (OSError, ValueError):
            return False
        finally:
            self.conn.close()
        return True

    def discard(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        worker_id: str | None = None,
        hung_seconds: float = 900.0,
        wake: threading.Event | None = None,
    ) -> None:
        self.settings, self.db = settings, db
        # Set by a NOTIFY listener (PostgreSQL) or a signal: an idle supervisor looks at the queue at once.
        self.wake = wake or threading.Event()
        self.idle_wait = settings.poll_seconds
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self) & 0xFFFF:04x}"
        self.hung_seconds = hung_seconds
        self.stopping = threading.Event()  # first signal: finish gracefully
        self.abort = threading.Event()  # second signal: kill the child and leave
        self._last_reap = 0.0
        self._ctx = mp.get_context("spawn")
        self._warm: WarmChild | None = None
        self.current_job: str | None = None  # for the worker registry
        _pin_blas_threads()

    def warm_up(self) -> None:
        """Have a training process ready, so a claimed job starts training without an interpreter's start-up."""
        if self._warm is None or not self._warm.process.is_alive():
            self._warm = WarmChild(self._ctx)

    def close(self) -> None:
        if self._warm is not None:
            self._warm.discard()
            self._warm = None

    # --- loop -----------------------------------------------------------------------------------------------------

    def run_forever(self) -> None:
        log.info("worker %s started", self.worker_id)
        try:
            self._loop()
        finally:
            self.close()
        log.info("worker %s stopped", self.worker_id)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.warm_up()
                self.reap_if_due()
                if not self.run_once():
                    self.wake.wait(self._idle_timeout())
                    self.wake.clear()
            except Exception as exc:
                if is_busy_error(exc):
                    log.warning("database busy; retrying")
                else:
                    log.exception("worker loop error; continuing")
                self.stopping.wait(self.settings.poll_seconds)

    def reap_if_due(self) -> None:
        if time.monotonic() - self._last_reap < self.settings.reaper_seconds:
            return
        self._last_reap = time.monotonic()
        with self.db.session() as s:
            for job_id, status in repo.reap_expired(s, now=repo.now_db(s)):
                log.warning("reaper: job %s had an expired lease -> %s", job_id, status)

    def _queue_has_work(self) -> bool:
        with self.db.read_session() as s:
            now = repo.now_db(s)
            return bool(
                s.execute(select(exists().where(Job.status == JobStatus.QUEUED, Job.run_after <= now))).scalar()
            )

    def _idle_timeout(self) -> float:
        """The idle wait, cut short when a backed-off job becomes runnable sooner (no notification marks that)."""
        with self.db.read_session() as s:
            due = s.execute(select(func.min(Job.run_after)).where(Job.status == JobStatus.QUEUED)).scalar()
            now = repo.now_db(s)
        if due is None:
            return self.idle_wait
        return min(self.idle_wait, max(0.01, (due - now).total_seconds()))

    def claim(self) -> tuple[str, str, int] | None:
        if not self._queue_has_work():
            return None
        with self.db.session() as s:
            return repo.claim_job(
                s, worker_id=self.worker_id, lease_seconds=self.settings.lease_seconds, now=repo.now_db(s)
            )

    def run_once(self) -> bool:
        """Claim one job and supervise it to the end. False if the queue had nothing runnable."""
        claimed = self.claim()
        if claimed is None:
            return False
        job_id, token, attempt = claimed
        log.info("job %s: claimed (attempt %d)", job_id, attempt)
        self.current_job = job_id
        try:
            self.supervise(job_id, token, attempt)
        finally:
            self.current_job = None
        return True

    # --- one job --------------------------------------------------------------------------------------------------

    def supervise(self, job_id: str, token: str, attempt: int) -> None:
        s = self.settings
        args = ChildArgs(
            database_url=str(s.database_url),
            job_id=job_id,
            token=token,
            attempt=attempt,
            lease_seconds=s.lease_seconds,
            checkpoint_seconds=s.checkpoint_seconds,
            processes=train_processes(s.train_processes, s.workers),
        )
        warm, self._warm = self._warm, None
        if warm is None or not warm.start(args):
            if warm is not None:
                warm.discard()
            warm = WarmChild(self._ctx)
            warm.start(args)
        child, control, progress = warm.process, warm.control, warm.progress
        last_beat = last_cancel_poll = time.monotonic()
        cancel_at: float | None = None
        release_at: float | None = None
        lost = False
        while True:
            child.join(timeout=0.1)
            if child.exitcode is not None:
                break
            now = time.monotonic()
            if self.abort.is_set():
                child.kill()
                child.join()
                log.warning("job %s: killed on a second signal; the reaper will recover it", job_id)
                return
            if self.stopping.is_set() and release_at is None:
                control.value |= RELEASE
                release_at = now
            if release_at is not None and now - release_at > RELEASE_GRACE_SECONDS:
                log.warning(
                    "job %s: not released within %.0f s of the signal; killing the child (the reaper "
                    "recovers the job once its lease expires)",
                    job_id,
                    RELEASE_GRACE_SECONDS,
                )
                child.kill()
                child.join()
                return
            try:
                if release_at is None:  # once shutting down, nothing but our own job's lease matters
                    self.reap_if_due()  # other workers' dead jobs are recovered while this one trains, too
            except Exception as exc:
                log.warning("reaper failed (%s)", exc)
            if now - last_beat >= s.heartbeat_seconds:
                last_beat = now
                if time.time() - progress.value > self.hung_seconds:
                    log.error("job %s: no batch finished in %.0f s; killing the child", job_id, self.hung_seconds)
                    child.kill()
                    continue
                try:
                    with self.db.session() as sess:
                        lost = not repo.fence(sess, job_id, token, now=repo.now_db(sess), lease_seconds=s.lease_seconds)
                except Exception as exc:
                    log.warning("job %s: heartbeat failed (%s)", job_id, exc)
                if lost:
                    log.warning("job %s: lease lost; killing the child", job_id)
                    child.kill()
                    child.join()
                    return
            if cancel_at is None and release_at is None and now - last_cancel_poll >= CANCEL_POLL_SECONDS:
                last_cancel_poll = now
                try:
                    with self.db.read_session() as sess:
                        if repo.cancel_requested(sess, job_id):
                            cancel_at = now
                            control.value |= STOP
                except Exception as exc:
                    log.warning("job %s: cancel poll failed (%s)", job_id, exc)
            if cancel_at is not None and now - cancel_at > CANCEL_KILL_SECONDS:
                log.warning("job %s: child ignored the cancel for %.0f s; killing it", job_id, CANCEL_KILL_SECONDS)
                child.kill()
                child.join()
                self._finish_cancelled(job_id, token)
                return
        code = child.exitcode
        if code == 0 or code == EXIT_LEASE_LOST:
            return
        reason = f"the training process exited with code {code}"
        log.warning("job %s: %s", job_id, reason)
        if cancel_at is not None:
            self._finish_cancelled(job_id, token)
            return
        with self.db.session() as sess:
            repo.requeue(sess, job_id, token, now=repo.now_db(sess), count_attempt=True, reason=reason)

    def _finish_cancelled(self, job_id: str, token: str) -> None:
        with self.db.session() as sess:
            repo.finish_job(
                sess,
                job_id,
                token,
                JobStatus.CANCELLED,
                now=repo.now_db(sess),
                reason="cancelled by the user (training process stopped)",
            )


def run_workers(settings: Settings, count: int, *, exit_with_parent: bool = False) -> None:
    """`backprop worker`: `count` supervisors in this process, one thread each; signals handled here.

    With `exit_with_parent` (the workers `backprop serve` embeds) the loss of the parent process counts as a
    first signal, so a killed `serve` never leaves workers behind."""
    import signal

    db = Database(str(settings.database_url))
    wake = threading.Event()
    sups = [Supervisor(settings, db, wake=wake) for _ in range(max(1, count))]
    listener = start_listener(str(settings.database_url), wake)
    if listener is not None:
        # Notifications carry the wake-ups; the poll is only the fallback for a lost connection.
        for sup in sups:
            sup.idle_wait = max(settings.poll_seconds, 2.0)

    def on_signal(signum: int, _frame: Any) -> None:
        if any(sup.stopping.is_set() for sup in sups):
            log.warning("second signal: stopping now")
            for sup in sups:
                sup.abort.set()
        else:
            log.info("signal %d: finishing gracefully (checkpoint and release running jobs)", signum)
            for sup in sups:
                sup.stopping.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=sup.run_forever, name=f"supervisor-{i}") for i, sup in enumerate(sups)]
    for t in threads:
        t.start()
    housekeeping = threading.Event()
    sender = WebhookSender(settings, db, worker_id=sups[0].worker_id)
    helpers = [
        threading.Thread(target=sender.run, args=(housekeeping,), name="webhook-sender", daemon=True),
        threading.Thread(
            target=register_workers, args=(settings, db, sups, housekeeping), name="registry", daemon=True
        ),
    ]
    for t in helpers:
        t.start()
    parent = os.getppid()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
            if exit_with_parent and os.getppid() != parent and not sups[0].stopping.is_set():
                log.warning("the serving process is gone; finishing gracefully")
                for sup in sups:
                    sup.stopping.set()
                wake.set()
    finally:
        housekeeping.set()
        for t in helpers:
            t.join(timeout=settings.webhook_timeout_seconds + 5)
        if listener is not None:
            listener.stop()
        db.dispose()


def register_workers(settings: Settings, db: Database, sups: list[Supervisor], stopping: threading.Event) -> None:
    """Keep this process's supervisors in the `worker` table (heartbeat and current job) until `stopping`."""
    hostname, pid = socket.gethostname(), os.getpid()
    started_at = None
    while True:
        try:
            with db.session() as s:
                now = repo.now_db(s)
                started_at = started_at or now
                repo.beat_workers(
                    s, {sup.worker_id: sup.current_job for sup in sups}, hostname=hostname, pid=pid, now=now,
                    started_at=started_at,
                )
        except Exception as exc:
            log.warning("worker registry heartbeat failed (%s)", exc)
        if stopping.wait(settings.heartbeat_seconds):
            break
    try:
        with db.session() as s:
            repo.stop_workers(s, [sup.worker_id for sup in sups], now=repo.now_db(s))
    except Exception as exc:
        log.warning("could not mark the workers stopped (%s)", exc)
