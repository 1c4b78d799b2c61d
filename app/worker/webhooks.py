"""The webhook sender: one thread per worker process POSTs due deliveries from the `webhook_delivery` outbox.

Claiming a delivery pushes its `next_attempt_at` past the attempt's timeout, so two senders never POST the same
attempt, and a sender that dies mid-POST leaves the delivery due again: at-least-once, with a stable event id for
receivers to deduplicate on. A non-2xx answer, a timeout or a refused connection is retried after
`webhook_retry_seconds`, doubling (with jitter) up to `webhook_retry_max_seconds`, `webhook_max_attempts` times in
all. The API never sends: a slow receiver delays nothing but its own deliveries."""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from app.db import repositories as repo
from app.db.session import Database
from app.services import webhooks

log = logging.getLogger("backprop.webhooks")
USER_AGENT = "backprop-webhooks/1"


class BlockedAddress(Exception):
    pass


def blocked_address(url: str) -> None:
    """Raise BlockedAddress if the URL's host resolves to a non-public address (BACKPROP_WEBHOOK_BLOCK_PRIVATE).
    httpx resolves again when it connects, so this guards against misconfiguration and plain SSRF, not against a
    DNS server that answers differently on purpose."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BlockedAddress(f"cannot resolve {host!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise BlockedAddress(f"{host!r} resolves to the non-public address {address} (webhook_block_private)")


class WebhookSender:
    def __init__(self, settings: Settings, db: Database, *, worker_id: str, client: httpx.Client | None = None) -> None:
        self.settings, self.db, self.worker_id = settings, db, worker_id
        self.client = client or httpx.Client(
            timeout=settings.webhook_timeout_seconds, follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )
        self._rng = random.Random()

    def retry_delay(self, attempt: int) -> float:
        s = self.settings
        base = min(s.webhook_retry_max_seconds, s.webhook_retry_seconds * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.8, 1.2)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays out of the others' reach: its timeout plus room to record the result."""
        t = self.settings.webhook_timeout_seconds
        return t + min(30.0, 2 * t)

    def deliver_one(self) -> bool:
        """POST the most overdue delivery once. False if none was due."""
        s = self.settings
        with self.db.session() as session:
            delivery = repo.claim_delivery(
                session, now=repo.now_db(session), lease_seconds=self.lease_seconds
            )
            if delivery is None:
                return False
            secret = webhooks.secret_for(session, delivery.owner).secret
            session.expunge(delivery)
        body = webhooks.encode(delivery.payload)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            webhooks.EVENT_ID_HEADER: delivery.id,
            "Backprop-Event-Type": delivery.event,
            "Backprop-Attempt": str(delivery.attempts),
            webhooks.TIMESTAMP_HEADER: str(timestamp),
            webhooks.SIGNATURE_HEADER: webhooks.sign(secret, timestamp, body),
        }
        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            if s.webhook_block_private:
                blocked_address(delivery.url)
            response = self.client.post(delivery.url, content=body, headers=headers)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}: {response.text[:200]}"
        except (httpx.HTTPError, BlockedAddress) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        duration_ms = (time.perf_counter() - started) * 1000
        with self.db.session() as session:
            now = repo.now_db(session)
            retry_at = None
            if delivery.attempts < s.webhook_max_attempts:
                retry_at = now + timedelta(seconds=self.retry_delay(delivery.attempts))
            outcome = repo.record_attempt(
                session, delivery, worker_id=self.worker_id, status_code=status_code, error=error,
                duration_ms=duration_ms, retry_at=retry_at, now=now,
            )
        if outcome == "delivered":
            log.info("webhook %s (%s, job %s) delivered on attempt %d", delivery.id, delivery.event,
                     delivery.job_id, delivery.attempts)
        else:
            log.warning("webhook %s (%s, job %s) attempt %d failed: %s -> %s", delivery.id, delivery.event,
                        delivery.job_id, delivery.attempts, error, outcome)
        return True

    def deliver_due(self, limit: int = 100) -> int:
        """POST up to `limit` due deliveries; how many were attempted."""
        done = 0
        while done < limit and self.deliver_one():
            done += 1
        return done

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                if self.deliver_due() == 0:
                    stopping.wait(self.settings.webhook_poll_seconds)
            except Exception:
                log.exception("webhook sender error; continuing")
                stopping.wait(self.settings.webhook_poll_seconds)
        self.client.close()
