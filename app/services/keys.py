"""API keys: `bp_live_<8 lowercase alphanumerics>_<secret>`. Only sha256(secret) is stored (a fast hash suits a
secret of 256 random bits; bcrypt is for passwords), looked up by prefix and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import repositories as repo
from app.db.base import utcnow
from app.db.models import ApiKey
from app.errors import NotFound, Unauthorized

_ALPHABET = string.ascii_lowercase + string.digits
UNAUTHORIZED = "a valid API key is required: send 'Authorization: Bearer <key>'"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, owner: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for `owner`: (row, the full key). The full key is never stored and cannot be shown again."""
    prefix = "bp_live_" + "".join(secrets.choice(_ALPHABET) for _ in range(8))
    secret = secrets.token_urlsafe(32)
    row = ApiKey(prefix=prefix, secret_sha256=_digest(secret), owner=owner, name=name)
    session.add(row)
    session.flush()
    return row, f"{prefix}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 3)
    if len(parts) != 4 or parts[0] != "bp" or parts[1] != "live" or len(parts[2]) != 8 or not parts[3]:
        return None
    return f"bp_live_{parts[2]}", parts[3]


def authenticate(session: Session, authorization: str | None) -> ApiKey:
    """The active key behind an `Authorization: Bearer` header (the scheme in any case, RFC 9110 §11.1);
    Unauthorized (one message for every failure)."""
    scheme, space, credentials = (authorization or "").partition(" ")
    if not space or scheme.lower() != "bearer":
        raise Unauthorized(UNAUTHORIZED)
    parsed = split_key(credentials.strip())
    if parsed is None:
        raise Unauthorized(UNAUTHORIZED)
    row = repo.key_by_prefix(session, parsed[0])
    expected = row.secret_sha256 if row is not None else _digest("x" * 43)
    ok = hmac.compare_digest(expected, _digest(parsed[1]))
    if row is None or not ok or row.revoked_at is not None:
        raise Unauthorized(UNAUTHORIZED)
    return row


def needs_touch(key: ApiKey) -> bool:
    """Use is recorded at most once a minute, so authentication stays a read almost always."""
    return key.last_used_at is None or utcnow() - key.last_used_at > timedelta(minutes=1)


def touch(session: Session, key: ApiKey) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=utcnow()))


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars())


def revoke(session: Session, prefix: str) -> ApiKey:
    row = repo.key_by_prefix(session, prefix)
    if row is None:
        raise NotFound(f"no key with prefix {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
