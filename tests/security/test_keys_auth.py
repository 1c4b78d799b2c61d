"""API keys (DESIGN.md §8): every /v1 route needs a valid key, and every kind of bad key gets one and the same 401;
keys travel only in `Authorization: Bearer`; only sha256(secret) is stored; the CLI shows a key once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import text
from starlette.routing import Route

from app.db.session import Database
from app.services import keys
from tests.security.conftest import (
    ALICE,
    KEY_RE,
    Template,
    assert_problem,
    prefix_of,
    random_id,
    secret_of,
    sha256_hex,
)

pytestmark = pytest.mark.anyio

PUBLIC = ("/healthz", "/readyz", "/docs", "/openapi.json")


def app_routes(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route the app serves. FastAPI >= 0.16x keeps included routers as wrappers in
    `app.routes`; `iter_route_contexts` flattens them (older versions list the APIRoutes directly)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI
        return [(r.path, set(r.methods)) for r in app.routes if isinstance(r, APIRoute | Route)]
    out = []
    for ctx in iter_route_contexts(app.routes):
        methods = getattr(ctx.original_route, "methods", None)
        if methods:
            out.append((ctx.path, set(methods)))
    return out


def v1_operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every /v1 route the app serves, path parameters filled with random ids."""
    out = []
    for path, methods in app_routes(app):
        if path.startswith("/v1"):
            concrete = re.sub(r"\{[^}]+\}", lambda _: random_id(), path)
            out.extend((method, concrete) for method in sorted(methods))
    return out


def bad_authorizations(template: Template) -> dict[str, dict[str, str]]:
    alice_prefix = prefix_of(template.keys[ALICE])
    return {
        "missing": {},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "malformed-scheme": {"Authorization": f"Basic {template.keys[ALICE]}"},
        "unknown": {"Authorization": f"Bearer bp_live_zzzzzzzz_{'A' * 43}"},
        "wrong-secret": {"Authorization": f"Bearer {alice_prefix}_{'B' * 43}"},
        "revoked": {"Authorization": f"Bearer {template.revoked}"},
    }


async def test_every_v1_route_refuses_every_bad_key_with_one_body(
    app: FastAPI, anon: httpx.AsyncClient, template: Template
):
    operations = v1_operations(app)
    expected = {
        ("GET", "/v1/networks"), ("POST", "/v1/networks"), ("GET", "/v1/networks/{}"), ("DELETE", "/v1/networks/{}"),
        ("GET", "/v1/datasets"), ("POST", "/v1/datasets"), ("GET", "/v1/datasets/{}"), ("DELETE", "/v1/datasets/{}"),
        ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/history"),
        ("POST", "/v1/jobs/{}/cancel"), ("GET", "/v1/models"), ("GET", "/v1/models/{}"), ("DELETE", "/v1/models/{}"),
        ("GET", "/v1/models/{}/weights"), ("POST", "/v1/models/{}/predict"),
    }
    shapes = {(m, re.sub(r"/[0-9a-f]{32}", "/{}", p)) for m, p in operations}
    assert expected <= shapes, expected - shapes
    reference: dict | None = None
    for method, path in operations:
        for name, headers in bad_authorizations(template).items():
            kw = {"json": {}} if method == "POST" else {}
            r = await anon.request(method, path, headers=headers, **kw)
            body = assert_problem(r, 401)
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), (method, path, name)
            if reference is None:
                reference = body
            assert body == reference, (method, path, name, body)
    assert reference is not None
    assert "Bearer" in reference["detail"]


async def test_public_routes_need_no_key(anon: httpx.AsyncClient):
    for path in PUBLIC:
        r = await anon.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])


async def test_a_key_in_the_query_string_is_not_accepted(anon: httpx.AsyncClient, template: Template):
    key = template.keys[ALICE]
    for param in ("api_key", "key", "access_token", "token", "authorization"):
        r = await anon.get("/v1/networks", params={param: key})
        assert_problem(r, 401)
    r = await anon.get("/v1/networks", params={"Authorization": f"Bearer {key}"})
    assert_problem(r, 401)
    # Nor as a cookie, nor under another header name.
    r = await anon.get("/v1/networks", headers={"Cookie": f"api_key={key}", "X-API-Key": key})
    assert_problem(r, 401)


async def test_the_valid_key_works(alice: httpx.AsyncClient):
    assert (await alice.get("/v1/networks")).status_code == 200


async def test_a_revoked_key_stops_working_at_once(
    app: FastAPI, db: Database, clients: Callable[..., httpx.AsyncClient]
):
    with db.session() as s:
        row, key = keys.create_key(s, owner=ALICE, name="short-lived")
    c = clients(key)
    assert (await c.get("/v1/networks")).status_code == 200
    with db.session() as s:
        keys.revoke(s, row.prefix)
    body = assert_problem(await c.get("/v1/networks"), 401)
    anon_body = assert_problem(await clients(None).get("/v1/networks"), 401)
    assert body == anon_body


def test_key_format_and_only_the_secrets_hash_is_stored(db: Database, db_path: Path):
    with db.session() as s:
        row, key = keys.create_key(s, owner="zoe", name="format")
    assert KEY_RE.match(key), key
    prefix, secret = prefix_of(key), secret_of(key)
    assert key == f"{prefix}_{secret}"
    assert prefix == row.prefix
    assert len(secret) >= 43  # secrets.token_urlsafe(32): 256 random bits
    with db.read_session() as s:
        stored = s.execute(text("SELECT * FROM api_key WHERE prefix = :p"), {"p": prefix}).mappings().one()
    assert stored["secret_sha256"] == sha256_hex(secret)
    for column, value in stored.items():
        assert secret not in str(value), column
        assert key not in str(value), column
    db.dispose()
    parts = list(db_path.parent.glob(db_path.name + "*"))  # the file, and its WAL
    raw = b"".join(p.read_bytes() for p in parts)
    assert sha256_hex(secret).encode() in raw  # (the scan below reads the right bytes)
    assert secret.encode() not in raw, parts


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_cli_create_list_revoke(db_url: str, app: FastAPI, clients: Callable[..., httpx.AsyncClient]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env["BACKPROP_DATABASE_URL"] = db_url
    created = _cli(env, "keys", "create", "x")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    key = lines[-1]
    assert KEY_RE.match(key), created.stdout
    secret = secret_of(key)
    # Shown once: alone on its last line, and nowhere else in the output.
    assert created.stdout.count(secret) == 1
    assert secret not in created.stderr
    assert (await clients(key).get("/v1/networks")).status_code == 200

    listed = _cli(env, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert prefix_of(key) in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    assert sha256_hex(secret) not in listed.stdout

    revoked = _cli(env, "keys", "revoke", prefix_of(key))
    assert revoked.returncode == 0, revoked.stderr
    assert secret not in revoked.stdout + revoked.stderr
    assert_problem(await clients(key).get("/v1/networks"), 401)
    listed = _cli(env, "keys", "list")
    line = next(x for x in listed.stdout.splitlines() if prefix_of(key) in x)
    assert "revoked" in line
