"""The `backprop` console script: serve (API + embedded workers), worker, migrate, keys; and the HTTP client's
train, predict and jobs (app/client/cli.py)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import uvicorn

from app.config import Settings


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from app.db.migrate import upgrade

    upgrade(str(settings.database_url))
    print(f"database at {_safe_url(settings.database_url)} is at the latest migration")
    return 0


def _safe_url(url: Any) -> str:
    from sqlalchemy.engine import make_url

    return make_url(str(url)).render_as_string(hide_password=True)


def _require_current(settings: Settings) -> Any:
    from app.db.migrate import is_current
    from app.db.session import Database

    db = Database(str(settings.database_url))
    if not is_current(db.write_engine):
        db.dispose()
        print("the database schema is not current: run `backprop migrate` first", file=sys.stderr)
        raise SystemExit(2)
    return db


def cmd_keys(settings: Settings, ns: argparse.Namespace) -> int:
    from app.errors import NotFound
    from app.services import keys

    db = _require_current(settings)
    try:
        with db.session() as s:
            if ns.keys_cmd == "create":
                row, key = keys.create_key(s, owner=ns.owner or ns.name, name=ns.name)
                print(f"created key {row.prefix} for owner {row.owner!r}; it is shown only this once:")
                print(key)
            elif ns.keys_cmd == "list":
                rows = keys.list_keys(s)
                print(f"{'PREFIX':<18} {'OWNER':<20} {'NAME':<20} {'CREATED':<20} {'LAST USED':<20} STATUS")
                for r in rows:
                    print(
                        f"{r.prefix:<18} {r.owner:<20} {(r.name or ''):<20} {r.created_at:%Y-%m-%d %H:%M:%S}  "
                        f"{(f'{r.last_used_at:%Y-%m-%d %H:%M:%S}' if r.last_used_at else '-'):<20} "
                        f"{'revoked' if r.revoked_at else 'active'}"
                    )
            elif ns.keys_cmd == "revoke":
                try:
                    row = keys.revoke(s, ns.prefix)
                except NotFound as exc:
                    print(exc.detail, file=sys.stderr)
                    return 1
                print(f"revoked {row.prefix}")
    finally:
        db.dispose()
    return 0


def cmd_worker(settings: Settings, ns: argparse.Namespace) -> int:
    from app.worker.loop import run_workers

    _require_current(settings).dispose()
    run_workers(settings, ns.workers if ns.workers is not None else max(1, settings.workers),
                exit_with_parent=ns.exit_with_parent)
    return 0


def cmd_serve(settings: Settings, ns: argparse.Namespace) -> int:
    from app.db import repositories as repo
    from app.main import create_app
    from app.services import keys

    db = _require_current(settings)
    with db.session() as s:
        if repo.count_keys(s, active_only=False) == 0:
            _, key = keys.create_key(s, owner="default", name="first key")
            print(
                "No API keys existed, so one was created for owner 'default'. Send it as "
                "'Authorization: Bearer <key>'. It is shown only this once:",
                flush=True,
            )
            print(key, flush=True)
    host = ns.host or settings.host
    port = ns.port if ns.port is not None else settings.port
    n_workers = ns.workers if ns.workers is not None else settings.workers
    worker: subprocess.Popen[bytes] | None = None
    if n_workers > 0:
        # Its own session: a terminal's Ctrl-C reaches only us, and we relay exactly one signal.
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--workers", str(n_workers), "--exit-with-parent"],
            env=os.environ.copy(),
            start_new_session=True,
        )
    signals = 0

    def relay(sig: int) -> None:
        # First signal: the worker checkpoints and releases its jobs while the API drains. Second: both stop now.
        nonlocal signals
        signals += 1
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)

    server = _Server(uvicorn.Config(create_app(settings, db=db), host=host, port=port, log_level=settings.log_level,
                                    access_log=False, timeout_graceful_shutdown=10), relay)
    try:
        server.run()
    finally:
        if worker is not None:
            if signals == 0 and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        db.dispose()
    return 0


class _Server(uvicorn.Server):
    """uvicorn, relaying each shutdown signal to the worker process; a second signal exits at once."""

    def __init__(self, config: uvicorn.Config, relay: Any) -> None:
        super().__init__(config)
        self._relay = relay

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._relay(sig)
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True   # (not re-raised after shutdown: we exit normally once the worker has)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backprop", description="Backprop Service: training as a service.")
    sub = p.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API with embedded workers")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="embedded worker count (default BACKPROP_WORKERS)")
    worker = sub.add_parser("worker", help="run workers that train queued jobs")
    worker.add_argument("--workers", type=int, help="concurrent jobs in this process (default BACKPROP_WORKERS)")
    worker.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="create or upgrade the database schema")
    keys = sub.add_parser("keys", help="manage API keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = ksub.add_parser("create", help="create a key; prints it once, alone on the last line")
    create.add_argument("name")
    create.add_argument("--owner", help="the tenant the key acts for (default: NAME)")
    ksub.add_parser("list", help="list keys (prefixes only)")
    revoke = ksub.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    from app.client.cli import add_commands  # the HTTP client's commands: train, predict, jobs

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    if getattr(ns, "client_command", None) is not None:
        # A client of a server, maybe a remote one: it needs no Settings or database.
        from app.client.cli import run

        raise SystemExit(run(ns))
    if ns.cmd in ("serve", "worker"):
        # Before NumPy loads: training children run BLAS on one thread (reproducible results), and the API's
        # predicts would otherwise contend with them for the cores. An operator's explicit setting wins.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    settings = Settings()
    _logging(settings.log_level if settings.log_level != "trace" else "debug")
    handlers = {"serve": cmd_serve, "worker": cmd_worker, "migrate": cmd_migrate, "keys": cmd_keys}
    raise SystemExit(handlers[ns.cmd](settings, ns))


if __name__ == "__main__":
    main()
