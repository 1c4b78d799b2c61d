import re

import httpx
import pytest
from fastapi import FastAPI

from app.db import repositories as repo
from app.db.session import Database
from app.services import keys
from tests.api.conftest import OWNER, Api, assert_problem, client_for, make_key, random_id

pytestmark = pytest.mark.anyio


def v1_routes(openapi: dict) -> list[tuple[str, str]]:
    """(method, path) of every documented /v1 route, path parameters filled with random ids."""
    out = []
    for path, ops in openapi["paths"].items():
        if path.startswith("/v1"):
            concrete = re.sub(r"\{[a-z_]+\}", lambda _: random_id(), path)
            out.extend((method.upper(), concrete) for method in ops)
    return out


def prefix_of(key: str) -> str:
    parts = keys.split_key(key)
    assert parts is not None
    return parts[0]


def revoked_key(db: Database) -> str:
    key = make_key(db, OWNER, "to revoke")
    with db.session() as session:
        keys.revoke(session, prefix_of(key))
    return key


BAD_AUTH = {
    "missing": None,
    "empty": "",
    "not bearer": "Basic YWxpY2U6c2VjcmV0",
    "bearer without key": "Bearer ",
    "malformed key": "Bearer not-a-key",
    "wrong prefix shape": "Bearer bp_live_short_secret",
    "unknown key": "Bearer bp_live_abcdefgh_" + "x" * 43,
}


async def _unauthorized_body(app: FastAPI, authorization: str | None) -> dict:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client_for(app, None) as c:
        r = await c.get("/v1/networks", headers=headers)
    body = assert_problem(r, 401)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    return body


async def test_every_bad_key_gets_the_same_401(app: FastAPI, db: Database, template):
    bodies = {name: await _unauthorized_body(app, value) for name, value in BAD_AUTH.items()}
    bodies["revoked"] = await _unauthorized_body(app, f"Bearer {revoked_key(db)}")
    # A real key prefix with the wrong secret.
    prefix = prefix_of(template.keys[OWNER])
    bodies["wrong secret"] = await _unauthorized_body(app, f"Bearer {prefix}_{'y' * 43}")
    first = bodies["missing"]
    assert all(body == first for body in bodies.values()), bodies
    assert "Bearer" in first["detail"]


async def test_revoked_key_stops_working(app: FastAPI, db: Database):
    key = make_key(db, OWNER, "short-lived")
    async with client_for(app, key) as c:
        assert (await c.get("/v1/networks")).status_code == 200
        with db.session() as session:
            keys.revoke(session, prefix_of(key))
        assert_problem(await c.get("/v1/networks"), 401)


async def test_every_v1_route_needs_a_key(anon: httpx.AsyncClient):
    routes = v1_routes((await anon.get("/openapi.json")).json())
    assert len(routes) >= 18
    for method, path in routes:
        r = await anon.request(method, path, json={})
        assert_problem(r, 401)


async def test_keys_of_one_owner_share_its_resources(app: FastAPI, db: Database, api: Api):
    network = await api.network()
    async with client_for(app, make_key(db, OWNER, "second key")) as c:
        r = await c.get(f"/v1/networks/{network['id']}")
    assert r.status_code == 200


# --- another owner's ids look exactly like ids that do not exist -----------------------------------------------------


async def assert_404_like_missing(c: httpx.AsyncClient, method: str, path: str, real_id: str, **kw) -> None:
    fake = random_id()
    r_real = await c.request(method, path.format(id=real_id), **kw)
    r_fake = await c.request(method, path.format(id=fake), **kw)
    body_real = assert_problem(r_real, 404)
    body_fake = assert_problem(r_fake, 404)
    assert body_real == {k: (v.replace(fake, real_id) if isinstance(v, str) else v) for k, v in body_fake.items()}
    assert r_real.headers["content-type"] == r_fake.headers["content-type"]


async def test_other_owners_resources_are_not_found(api: Api, client: httpx.AsyncClient, other: httpx.AsyncClient):
    network = await api.network()
    dataset = await api.dataset()
    job = await api.job(network["id"], dataset["id"])
    checks = [
        ("GET", "/v1/networks/{id}", network["id"]),
        ("DELETE", "/v1/networks/{id}", network["id"]),
        ("GET", "/v1/datasets/{id}", dataset["id"]),
        ("DELETE", "/v1/datasets/{id}", dataset["id"]),
        ("GET", "/v1/jobs/{id}", job["id"]),
        ("GET", "/v1/jobs/{id}/history", job["id"]),
        ("POST", "/v1/jobs/{id}/cancel", job["id"]),
    ]
    for method, path, real_id in checks:
        await assert_404_like_missing(other, method, path, real_id)
    # Nothing happened to alice's resources, and bob's lists stay empty.
    assert (await client.get(f"/v1/networks/{network['id']}")).status_code == 200
    assert (await client.get(f"/v1/datasets/{dataset['id']}")).status_code == 200
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"
    for kind in ("networks", "datasets", "jobs", "models"):
        assert (await other.get(f"/v1/{kind}")).json() == {"data": [], "has_more": False}


async def test_other_owners_ids_cannot_be_trained_on(api: Api, other: httpx.AsyncClient):
    network = await api.network()
    dataset = await api.dataset()
    r = await other.post("/v1/jobs", json={"network_id": network["id"], "dataset_id": dataset["id"]})
    assert_problem(r, 404, network["id"], field="network_id")


async def test_other_owners_id_is_no_pagination_cursor(api: Api, other: httpx.AsyncClient):
    network = await api.network()
    r = await other.get("/v1/networks", params={"after": network["id"]})
    assert_problem(r, 422, "unknown cursor", field="after")   # as any unknown id: not an empty page


async def test_using_a_key_records_when_it_was_last_used(client: httpx.AsyncClient, db: Database, template):
    # `backprop keys list` shows LAST USED; keys.touch() exists for this, at most one write a minute.
    assert (await client.get("/v1/networks")).status_code == 200
    with db.read_session() as s:
        row = repo.key_by_prefix(s, prefix_of(template.keys[OWNER]))
        assert row is not None
        assert row.last_used_at is not None
