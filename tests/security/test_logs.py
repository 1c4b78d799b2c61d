"""Logs (DESIGN.md §8): one structured line per request on `backprop.access` (method, path, status, ms, key
prefix), and no log record anywhere ever holds a full key or a secret -- good, bad, revoked or misplaced."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from app.db.session import Database
from app.main import create_app
from tests.api.conftest import network_body
from tests.security.conftest import ALICE, Template, prefix_of, random_id, secret_of, small_settings

pytestmark = pytest.mark.anyio


async def test_one_access_line_per_request_and_never_a_key(
    caplog: pytest.LogCaptureFixture,
    app: FastAPI,
    db_url: str,
    db: Database,
    clients: Callable[..., httpx.AsyncClient],
    template: Template,
):
    caplog.set_level(logging.DEBUG)
    key = template.keys[ALICE]
    prefix = prefix_of(key)
    unknown = "bp_live_qqqqqqqq_" + "S" * 43
    wrong_secret = f"{prefix}_{'W' * 43}"
    alice, anon = clients(key), clients(None)
    small = clients(key, create_app(small_settings(db_url, max_json_bytes=100), db=db))
    # (client, method, path, kwargs, status, key prefix the line should carry)
    calls = [
        (alice, "GET", "/v1/networks", {}, 200, prefix),
        (alice, "POST", "/v1/networks", {"json": network_body(2, (3,))}, 201, prefix),
        (alice, "GET", f"/v1/networks/{random_id()}", {}, 404, prefix),
        (alice, "POST", "/v1/networks", {"json": {"input_dim": "x"}}, 422, prefix),
        (small, "POST", "/v1/networks", {"json": {"name": "n" * 200}}, 413, prefix),   # the key is checked first
        (anon, "GET", "/v1/networks", {}, 401, None),
        (anon, "GET", "/v1/networks", {"headers": {"Authorization": f"Bearer {unknown}"}}, 401, None),
        (anon, "GET", "/v1/networks", {"headers": {"Authorization": f"Bearer {wrong_secret}"}}, 401, None),
        (anon, "GET", "/v1/networks", {"headers": {"Authorization": f"Bearer {template.revoked}"}}, 401, None),
        (anon, "GET", "/v1/networks", {"params": {"api_key": key}}, 401, None),
        (anon, "GET", "/healthz", {}, 200, None),
        (anon, "DELETE", "/v1/networks", {}, 401, None),      # no key: 401 before anything else
        (alice, "DELETE", "/v1/networks", {}, 405, prefix),
    ]
    caplog.clear()
    for client, method, path, kw, status, _ in calls:
        r = await client.request(method, path, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)

    access = [r for r in caplog.records if r.name == "backprop.access"]
    assert len(access) == len(calls), [r.getMessage() for r in access]
    for record, (_, method, path, _, status, want_prefix) in zip(access, calls, strict=True):
        line = json.loads(record.getMessage())
        assert {"method", "path", "status", "ms", "key"} <= line.keys(), line
        assert (line["method"], line["path"], line["status"]) == (method, path, status), line
        assert isinstance(line["ms"], int | float)
        assert line["ms"] >= 0
        assert line["key"] == want_prefix, line
        assert "\n" not in record.getMessage()

    secrets_ = [key, secret_of(key), unknown, secret_of(unknown), secret_of(wrong_secret), template.revoked,
                secret_of(template.revoked)]
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the test client
    assert len(server_side) >= len(calls)
    for record in server_side:
        text = " ".join(
            str(x) for x in (record.getMessage(), record.args, record.exc_text, getattr(record, "__dict__", ""))
        )
        for s in secrets_:
            assert s not in text, (record.name, record.getMessage()[:200])
