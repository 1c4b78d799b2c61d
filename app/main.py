"""create_app(settings) -> FastAPI: the one place the API is wired (settings, database, caches, routes)."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import errors, metrics, openapi
from app.api.deps import AppState
from app.api.middleware import AccessLog, Authenticate, BodyLimit, HeadAsGet
from app.api.routes import datasets, health, jobs, models, networks, ui, webhooks
from app.config import Settings
from app.db.session import Database
from app.services.resources import Limits, ModelCache

DESCRIPTION = """
Train multilayer perceptrons over HTTP. Define a **network**, submit a **dataset** (JSON rows or a CSV upload),
launch a training **job** that a background worker runs on our NumPy backpropagation engine, poll its progress and
per-epoch history, then fetch the trained **model** and predict on new rows.

Every `/v1` route needs `Authorization: Bearer <key>` (`backprop keys create NAME` makes one); without a valid key
the answer is 401, whatever the request's body. Errors are `application/problem+json`: `type`, `title`, `status`,
`detail`, and `field`/`errors` where the input is at fault. Lists take `limit` (max 100) and `after` (the last id of
the previous page; any other value is a 422) and answer `{data, has_more}`. Every GET route also answers HEAD.
"""


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_params=settings.max_params,
        max_epochs=settings.max_epochs,
        max_batch_size=settings.max_batch_size,
        max_active_jobs=settings.max_active_jobs_per_owner,
        max_stored_bytes=settings.max_stored_bytes_per_owner,
        max_attempts=settings.max_attempts,
    )


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> FastAPI:
    settings = settings or Settings()
    db = db or Database(str(settings.database_url))
    app = FastAPI(
        title="Backprop Service",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "networks"},
            {"name": "datasets"},
            {"name": "jobs"},
            {"name": "models"},
            {"name": "webhooks"},
            {"name": "health"},
        ],
    )
    app.state.backprop = AppState(settings=settings, db=db, models=ModelCache(), limits=limits_from(settings))
    errors.install(app)
    openapi.install(app)
    for module in (networks, datasets, jobs, models, webhooks, health, ui):
        app.include_router(module.router)
    # Each add_middleware wraps the previous ones: a request meets AccessLog, HeadAsGet, Authenticate (401 before the
    # body is read or validated), then BodyLimit.
    app.add_middleware(BodyLimit, max_json_bytes=settings.max_json_bytes, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(Authenticate, prefix="/v1")
    app.add_middleware(HeadAsGet)
    app.add_middleware(AccessLog)
    metrics.install(app)  # last: its middleware is the outermost, so it sees every answer
    return app
