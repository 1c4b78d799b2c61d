"""Exceptions the client raises. An API answer that is an error becomes an `ApiError` carrying the problem+json body.

BackpropError
├── ApiError                the server answered with an error status; status, title, detail, field, errors, body
│   ├── ValidationError     400, 422  input the server rejected; `field` / `errors` name what is wrong
│   ├── AuthError           401, 403  missing, unknown or revoked API key
│   ├── NotFoundError       404
│   ├── ConflictError       409       e.g. cancelling a finished job
│   ├── RateLimitedError    429       still limited after the retries; `retry_after` seconds
│   └── ServerError         5xx       still failing after the retries
├── ApiConnectionError      the server could not be reached (after the retries)
├── StreamUnavailable       GET /v1/jobs/{id}/events is not served here (wait() falls back to polling)
├── JobFailed               wait(): the job ended `failed`; `job` and its `error` {code, message}
└── WaitTimeout             wait(): the job did not finish in time; also a TimeoutError
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from app.client.types import JobBase


class BackpropError(Exception):
    """Base of every error this client raises."""


class ApiError(BackpropError):
    """An error answer from the API (application/problem+json, RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.errors = errors or []
        self.body = body
        self.type = type
        self.headers = headers or {}
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.status} {self.title}"
        return f"{text}: {self.detail}" if self.detail and self.detail != self.title else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, title={self.title!r}, detail={self.detail!r})"


class ValidationError(ApiError):
    """400 or 422: the request cannot work; `field` and `errors` say where."""


class AuthError(ApiError):
    """401 or 403: the API key is missing, unknown, revoked, or not allowed."""


class NotFoundError(ApiError):
    """404: no such resource (or one that belongs to another owner)."""


class ConflictError(ApiError):
    """409: the resource is in the wrong state for this request."""


class RateLimitedError(ApiError):
    """429 that outlasted the retries; `retry_after` is the server's last hint in seconds, if any."""


class ServerError(ApiError):
    """5xx that outlasted the retries."""


class ApiConnectionError(BackpropError):
    """The server could not be reached, or the connection broke, on every attempt."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class StreamUnavailable(BackpropError):
    """The job event stream is not served (no route, wrong method, not text/event-stream, or unreachable)."""


class JobFailed(BackpropError):
    """wait() saw the job end in `failed`. `job` is the final job; `code`/`message` come from its `error`."""

    def __init__(self, job: JobBase) -> None:
        self.job = job
        self.code = job.error.code if job.error else None
        self.error_message = job.error.message if job.error else ""
        super().__init__(f"job {job.id} failed" + (f" ({self.code}): {self.error_message}" if self.code else ""))


class WaitTimeout(BackpropError, TimeoutError):
    """wait() gave up before the job finished; the job keeps running. `status` is the last status seen."""

    def __init__(self, job_id: str, timeout: float | None, status: str | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.status = status
        super().__init__(f"job {job_id} did not finish within {timeout} s (last status: {status or 'unknown'})")


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitedError,
}


def error_class(status: int) -> type[ApiError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)


def error_from_response(response: httpx.Response, retry_after: float | None = None) -> ApiError:
    """The ApiError for an error answer, read from its problem+json body (or whatever body it has)."""
    status = response.status_code
    body: Any = None
    content = response.content
    if content:
        try:
            body = json.loads(content)
        except ValueError:
            body = content.decode("utf-8", errors="replace")
    problem = body if isinstance(body, dict) else {}
    title = problem.get("title") if isinstance(problem.get("title"), str) else None
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = body.strip()[:500] if isinstance(body, str) and body.strip() else None
    errors = problem.get("errors")
    return error_class(status)(
        status,
        title or response.reason_phrase or "Error",
        detail,
        field=problem.get("field") if isinstance(problem.get("field"), str) else None,
        errors=errors if isinstance(errors, list) else None,
        body=body,
        type=problem.get("type") if isinstance(problem.get("type"), str) else None,
        headers=dict(response.headers),
        retry_after=retry_after,
    )
