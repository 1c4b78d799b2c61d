"""The worker registry: each supervisor's row is heartbeated with its current job and marked stopped at exit."""

from __future__ import annotations

import threading

from sqlalchemy import select

from app.config import Settings
from app.db.models import Worker
from app.db.session import Database
from app.worker.loop import Supervisor, register_workers
from tests.worker.conftest import wait_for


def rows(db: Database) -> dict[str, Worker]:
    with db.read_session() as s:
        return {w.id: w for w in s.execute(select(Worker)).scalars()}


def test_supervisors_are_registered_heartbeated_and_marked_stopped(settings: Settings, db: Database):
    sups = [Supervisor(settings, db, worker_id=f"w{i}") for i in range(2)]
    stopping = threading.Event()
    thread = threading.Thread(target=register_workers, args=(settings, db, sups, stopping), daemon=True)
    thread.start()
    try:
        first = wait_for(lambda: rows(db) if len(rows(db)) == 2 else None, timeout=10, what="two worker rows")
        assert all(w.stopped_at is None and w.job_id is None for w in first.values())
        sups[1].current_job = "job-123"
        beat = first["w0"].heartbeat_at
        wait_for(lambda: rows(db)["w1"].job_id == "job-123", timeout=10, what="the current job in the registry")
        later = wait_for(
            lambda: rows(db) if rows(db)["w0"].heartbeat_at > beat else None, timeout=10, what="a heartbeat"
        )
        assert later["w0"].started_at == first["w0"].started_at
    finally:
        stopping.set()
        thread.join(timeout=10)
        for sup in sups:
            sup.close()
    assert not thread.is_alive()
    final = rows(db)
    assert all(w.stopped_at is not None and w.job_id is None for w in final.values())
