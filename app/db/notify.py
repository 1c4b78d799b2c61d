"""Wake-ups for idle workers on PostgreSQL: LISTEN/NOTIFY on one channel (polling stays the fallback, and the
only way on SQLite). A notification only says "look at the queue"; the claim itself stays the guarded UPDATE."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger("backprop.worker")
CHANNEL = "backprop_jobs"


def notify_queue(session: Session) -> None:
    """Announce a runnable job; PostgreSQL delivers it when (and only if) the transaction commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class QueueListener(threading.Thread):
    """Sets `wake` on every notification; reconnects with backoff if the connection drops."""

    def __init__(self, database_url: str, wake: threading.Event) -> None:
        super().__init__(name="queue-listener", daemon=True)
        url = make_url(database_url)
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wake = wake
        self.stopping = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        import psycopg

        delay = 0.5
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    delay = 0.5
                    self.wake.set()           # anything queued while we were away
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake.set()
            except Exception as exc:  # the connection dropped: poll meanwhile, reconnect soon
                self.connected.clear()
                log.warning("queue listener: %s; reconnecting in %.1f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def stop(self) -> None:
        self.stopping.set()


def start_listener(database_url: str, wake: threading.Event) -> Any:
    if make_url(database_url).get_backend_name() != "postgresql":
        return None
    listener = QueueListener(database_url, wake)
    listener.start()
    return listener
