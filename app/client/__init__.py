"""Python client for the Backprop Service HTTP API (sync `Client`, async `AsyncClient`), and the `backprop` CLI's
client commands (train, predict, jobs) in `app.client.cli`.

A standalone layer: it speaks HTTP through httpx and imports nothing else from `app` (no settings, FastAPI,
SQLAlchemy or engine), so it could ship on its own. The server is $BACKPROP_URL (default http://127.0.0.1:8000)
and the key $BACKPROP_API_KEY, unless passed to the constructor.
"""

from __future__ import annotations

from app.client._core import DEFAULT_URL, NO_RETRY, RetryPolicy
from app.client.aio import AsyncClient
from app.client.errors import (
    ApiConnectionError,
    ApiError,
    AuthError,
    BackpropError,
    ConflictError,
    JobFailed,
    NotFoundError,
    RateLimitedError,
    ServerError,
    StreamUnavailable,
    ValidationError,
    WaitTimeout,
)
from app.client.sse import ServerSentEvent, SSEDecoder
from app.client.sync import Client
from app.client.types import (
    AsyncJob,
    AsyncPage,
    Dataset,
    EpochRecord,
    Job,
    JobError,
    JobEvent,
    LayerWeights,
    Model,
    Network,
    Page,
    Prediction,
    Weights,
)

__all__ = [
    "DEFAULT_URL",
    "NO_RETRY",
    "ApiConnectionError",
    "ApiError",
    "AsyncClient",
    "AsyncJob",
    "AsyncPage",
    "AuthError",
    "BackpropError",
    "Client",
    "ConflictError",
    "Dataset",
    "EpochRecord",
    "Job",
    "JobError",
    "JobEvent",
    "JobFailed",
    "LayerWeights",
    "Model",
    "Network",
    "NotFoundError",
    "Page",
    "Prediction",
    "RateLimitedError",
    "RetryPolicy",
    "SSEDecoder",
    "ServerError",
    "ServerSentEvent",
    "StreamUnavailable",
    "ValidationError",
    "WaitTimeout",
    "Weights",
]
