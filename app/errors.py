"""Errors the services raise on purpose; api/errors.py maps each to one problem+json answer.

AppError
├── NotFound          404  an id that does not exist, or belongs to another owner (same answer either way)
├── Conflict          409  a state change from the wrong state, e.g. cancelling a finished job
├── InvalidRequest    422  input that cannot work; `field` names where, when there is one place to point at
├── PayloadTooLarge   413  a body or upload past its limit
├── UnsupportedMedia  415  a body in a content type the route does not take
├── QuotaExceeded     429  too many active jobs or stored bytes; `retry_after` seconds
├── Unauthorized      401  a missing, malformed, revoked or unknown API key (one body for all four)
└── Unavailable       503  the database is locked or unreachable; `retry_after` seconds
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 500
    title = "Internal Server Error"
    type = "about:blank"

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.errors = errors
        self.retry_after = retry_after


class NotFound(AppError):
    status, title, type = 404, "Not Found", "/problems/not-found"


class Conflict(AppError):
    status, title, type = 409, "Conflict", "/problems/conflict"


class InvalidRequest(AppError):
    status, title, type = 422, "Unprocessable Content", "/problems/invalid-request"


class PayloadTooLarge(AppError):
    status, title, type = 413, "Content Too Large", "/problems/payload-too-large"


class UnsupportedMedia(AppError):
    status, title, type = 415, "Unsupported Media Type", "/problems/unsupported-media-type"


class QuotaExceeded(AppError):
    status, title, type = 429, "Too Many Requests", "/problems/quota-exceeded"


class Unauthorized(AppError):
    status, title, type = 401, "Unauthorized", "/problems/unauthorized"


class Unavailable(AppError):
    status, title, type = 503, "Service Unavailable", "/problems/unavailable"
