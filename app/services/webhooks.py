"""Webhooks: per-owner signing secrets, the signature scheme, and what the job resource shows of its deliveries.

A delivery is a POST of one JSON event (`id`, `type`, `job_id`, `status`, `metrics`, `model_id`, `error`, ...) with
    Backprop-Event-Id:   the event id (the same on every retry: receivers deduplicate on it)
    Backprop-Timestamp:  Unix seconds when this attempt was signed
    Backprop-Signature:  v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>
The receiver recomputes the HMAC over the raw body with its owner's secret (GET /v1/webhooks/secret), compares in
constant time, and rejects timestamps too far from its clock (replays)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from app.db import repositories as repo
from app.db.models import WebhookSecret
from app.errors import InvalidRequest

SIGNATURE_HEADER = "Backprop-Signature"
TIMESTAMP_HEADER = "Backprop-Timestamp"
EVENT_ID_HEADER = "Backprop-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def encode(payload: dict[str, Any]) -> bytes:
    """The body as sent: compact, keys sorted, so every retry sends the same bytes."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    body: bytes,
    *,
    signature: str,
    timestamp: str | int,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if `signature` (a Backprop-Signature header; several `v1=` values may be comma-separated during a secret
    rotation) signs `body` at `timestamp`, and the timestamp is within `tolerance_seconds` of now."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_seconds:
        return False
    expected = sign(secret, ts, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))


def check_url(url: str) -> str:
    """A webhook URL must be absolute http(s) with a host and no credentials."""
    if len(url) > 2048:
        raise InvalidRequest("webhook_url is longer than 2048 characters", field="webhook_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"webhook_url is not a valid URL: {exc}", field="webhook_url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook_url must be an absolute http:// or https:// URL", field="webhook_url")
    if parts.username or parts.password:
        raise InvalidRequest("webhook_url must not carry credentials; requests are signed instead", field="webhook_url")
    if port == 0:
        raise InvalidRequest("webhook_url has port 0", field="webhook_url")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidRequest("webhook_url contains whitespace or control characters", field="webhook_url")
    return url


def secret_for(session: Session, owner: str) -> WebhookSecret:
    return repo.webhook_secret(session, owner, create=new_secret)


def rotate_secret(session: Session, owner: str) -> WebhookSecret:
    return repo.rotate_webhook_secret(session, owner, new_secret())


def secret_view(row: WebhookSecret) -> dict[str, Any]:
    return {
        "secret": row.secret,
        "created_at": row.created_at,
        "algorithm": "HMAC-SHA256",
        "signature_header": SIGNATURE_HEADER,
        "timestamp_header": TIMESTAMP_HEADER,
        "signed_content": "{timestamp}.{raw body}",
    }


def deliveries_view(session: Session, job_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "event": d.event,
            "url": d.url,
            "status": d.status,
            "attempts": [
                {
                    "attempt": a.attempt,
                    "at": a.created_at,
                    "status_code": a.status_code,
                    "error": a.error,
                    "duration_ms": round(a.duration_ms, 3),
                }
                for a in attempts
            ],
            "next_attempt_at": d.next_attempt_at if d.status == "pending" else None,
            "delivered_at": d.delivered_at,
            "created_at": d.created_at,
        }
        for d, attempts in repo.deliveries_for(session, job_id)
    ]
