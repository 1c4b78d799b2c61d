"""What the sync and async clients share, free of I/O: settings, retry decisions, uploads, wait() bookkeeping."""

from __future__ import annotations

import email.utils
import io
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from app.client.errors import ApiConnectionError, ApiError, error_from_response
from app.client.types import EpochRecord, JobEvent

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "backprop-client/0.1"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Answers that say the request was not acted on: safe to resend even a request the server cannot deduplicate.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
# Errors raised before a request could reach the server.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
KEEPALIVE_SECONDS = 15.0  # the event stream sends a comment this often while nothing happens
STREAM_GIVE_UP = 5  # consecutive /events attempts that got nothing at all before wait() polls instead
STREAM_REFUSED_GIVE_UP = 3  # ... of which connection refusals
PREDICT_BATCH = 1000


def resolve_url(url: str | None) -> str:
    return (url or os.environ.get("BACKPROP_URL") or DEFAULT_URL).rstrip("/")


def resolve_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else (os.environ.get("BACKPROP_API_KEY") or None)


def base_headers(api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry 429/502/503/504 and connection errors.

    Delays grow as `backoff * 2**(retry - 1)`, capped at `max_backoff`, with "equal jitter" (half fixed, half
    random), unless the server sends `Retry-After` (seconds or an HTTP date), which is honoured as is. A call gives up
    after `max_attempts` attempts, or when the next wait would end past `max_elapsed` seconds from its start, or
    when the server asks for a wait longer than `max_retry_after`.
    """

    max_attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_elapsed: float = 60.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_elapsed < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, max_backoff, max_elapsed and max_retry_after must be >= 0")

    def backoff_delay(self, retry: int, rng: random.Random) -> float:
        """The jittered wait before retry number `retry` (1 for the first retry)."""
        base = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return base / 2 + rng.uniform(0, base / 2)


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (negative waits become 0)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Attempts:
    """The retry bookkeeping of one call: decide after each failed attempt whether, and how long, to wait."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, *, replay_safe: bool) -> None:
        self.policy, self.rng, self.replay_safe = policy, rng, replay_safe
        self.count = 0
        self.started = time.monotonic()
        # True once an attempt may have reached the server: a later error can be the echo of our own success.
        self.maybe_applied = False

    def start(self) -> None:
        self.count += 1

    def _fits(self, delay: float) -> bool:
        return (
            self.count < self.policy.max_attempts
            and time.monotonic() - self.started + delay <= self.policy.max_elapsed
        )

    def after_status(self, response: httpx.Response) -> float | None:
        """The wait before retrying this answer, or None to give up (and raise it)."""
        status = response.status_code
        if status not in RETRY_STATUSES:
            return None
        if status not in NOT_PROCESSED_STATUSES:
            self.maybe_applied = True
            if not self.replay_safe:
                return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None and retry_after > self.policy.max_retry_after:
            return None
        delay = retry_after if retry_after is not None else self.policy.backoff_delay(self.count, self.rng)
        return delay if self._fits(delay) else None

    def after_error(self, exc: httpx.TransportError) -> float | None:
        not_sent = isinstance(exc, NOT_SENT_ERRORS)
        if not not_sent:
            self.maybe_applied = True
        if not isinstance(exc, httpx.NetworkError | httpx.TimeoutException | httpx.RemoteProtocolError):
            return None  # e.g. an unsupported protocol or a bad URL: retrying cannot help
        if not not_sent and not self.replay_safe:
            return None
        delay = self.policy.backoff_delay(self.count, self.rng)
        return delay if self._fits(delay) else None


def raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_from_response(response, parse_retry_after(response.headers.get("Retry-After")))


def connection_error(exc: httpx.TransportError, url: str, attempts: int) -> ApiConnectionError:
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    return ApiConnectionError(f"cannot reach the Backprop server at {url}: {exc or type(exc).__name__}{tries}", url=url)


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ApiError(
            response.status_code, "Invalid response", f"the server's answer is not JSON: {response.text[:200]!r}"
        ) from exc


# --- uploads ------------------------------------------------------------------------------------------------------

FileInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


class Upload:
    """A CSV to send as multipart `file`, re-readable for every retry: a path is reopened, bytes are reused, and a
    seekable file object is rewound to where it started (an unseekable one is read into memory first)."""

    def __init__(self, source: FileInput, filename: str | None = None) -> None:
        self._path: Path | None = None
        self._bytes: bytes | None = None
        self._file: IO[bytes] | None = None
        self._start = 0
        if isinstance(source, str | os.PathLike):
            self._path = Path(source)
            if not self._path.is_file():
                raise FileNotFoundError(f"no such file: {self._path}")
            self.filename = filename or self._path.name
        elif isinstance(source, bytes | bytearray | memoryview):
            self._bytes = bytes(source)
            self.filename = filename or "data.csv"
        elif hasattr(source, "read"):
            name = getattr(source, "name", None)
            self.filename = filename or (Path(name).name if isinstance(name, str) else "data.csv")
            if _seekable(source):
                self._file, self._start = source, source.tell()
            else:
                self._bytes = source.read()
                if isinstance(self._bytes, str):
                    raise TypeError("open the file in binary mode ('rb')")
        else:
            raise TypeError(f"file must be a path, bytes or a binary file object, not {type(source).__name__}")

    def open(self) -> tuple[IO[bytes], Callable[[], None]]:
        """The content positioned at its start, and what to call once the attempt is over."""
        if self._path is not None:
            f = self._path.open("rb")
            return f, f.close
        if self._file is not None:
            self._file.seek(self._start)
            return self._file, lambda: None
        assert self._bytes is not None
        return io.BytesIO(self._bytes), lambda: None


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable()) and isinstance(f.tell(), int)
    except (AttributeError, OSError, ValueError):
        return False


def upload_form(
    target: str | int | list[str | int] | tuple[str | int, ...] | None,
    header: bool | None,
    task: str | None,
    name: str | None,
    delimiter: str | None = None,
) -> dict[str, str]:
    data: dict[str, str] = {}
    if target is not None:
        targets = list(target) if isinstance(target, list | tuple) else [target]
        data["target"] = ",".join(str(t) for t in targets)
    if header is not None:
        data["header"] = "true" if header else "false"
    if task is not None:
        data["task"] = task
    if name is not None:
        data["name"] = name
    if delimiter is not None:
        data["delimiter"] = delimiter
    return data


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --- wait() -------------------------------------------------------------------------------------------------------


class Tracker:
    """wait()'s memory, whichever way events arrive (stream or polling): the last epoch handed to `on_epoch` (so
    each epoch reaches it once, in order) and the last status handed to `on_status`."""

    def __init__(
        self,
        on_epoch: Callable[[EpochRecord], object] | None,
        on_status: Callable[[str], object] | None,
    ) -> None:
        self.on_epoch, self.on_status = on_epoch, on_status
        self.last_epoch = 0
        self.status: str | None = None
        self.terminal = False

    def status_seen(self, status: str | None) -> None:
        if status and status != self.status:
            self.status = status
            if self.on_status is not None:
                self.on_status(status)

    def gap_before(self, record: EpochRecord) -> bool:
        """True if epochs between the last one delivered and this one were never seen (fetch them from history)."""
        return record.epoch > self.last_epoch + 1

    def epoch(self, record: EpochRecord) -> None:
        if record.epoch <= self.last_epoch:
            return  # already delivered (a replay after a resume)
        self.last_epoch = record.epoch
        if self.on_epoch is not None:
            self.on_epoch(record)

    def event(self, event: JobEvent) -> None:
        if event.type == "status":
            self.status_seen(event.status)
            self.terminal = self.terminal or event.is_terminal


def event_from_sse(event_name: str, data: str, event_id: str | None) -> JobEvent | None:
    """A JobEvent from a dispatched SSE event; None for data that is not a JSON object (ignored)."""
    import json

    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    seq: int | None
    try:
        seq = int(event_id) if event_id is not None else payload.get("seq")
    except ValueError:
        seq = payload.get("seq") if isinstance(payload.get("seq"), int) else None
    kind = payload.get("type") or (event_name if event_name != "message" else "")
    return JobEvent(seq=seq, type=str(kind), data=payload)


def is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream"


def stream_timeout(base: httpx.Timeout, remaining: float | None) -> httpx.Timeout:
    """Reads may wait three keepalives (then the connection is presumed dead), but never past the deadline."""
    read = 3 * KEEPALIVE_SECONDS
    if remaining is not None:
        read = max(0.05, min(read, remaining))
    return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)
