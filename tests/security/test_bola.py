"""Tenant isolation (DESIGN.md §8, acceptance check 9): another owner's id answers exactly like an id that does not
exist, changes nothing, never shows up in a list, and cannot be trained on."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.security.conftest import PROBLEM, Template, assert_problem, random_id

pytestmark = pytest.mark.anyio

PREDICT_BODY = {"inputs": [[0.0, 0.0]]}

# (method, path template, which of alice's ids, request kwargs). Every route that takes an id.
ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/v1/networks/{id}", "network", {}),
    ("DELETE", "/v1/networks/{id}", "network", {}),
    ("GET", "/v1/datasets/{id}", "dataset", {}),
    ("DELETE", "/v1/datasets/{id}", "dataset", {}),
    ("GET", "/v1/jobs/{id}", "job", {}),
    ("GET", "/v1/jobs/{id}/history", "job", {}),
    ("POST", "/v1/jobs/{id}/cancel", "queued_job", {}),
    ("POST", "/v1/jobs/{id}/cancel", "job", {}),  # a finished job: alice would get 409, bob must get 404
    ("GET", "/v1/models/{id}", "model", {}),
    ("DELETE", "/v1/models/{id}", "model", {}),
    ("GET", "/v1/models/{id}/weights", "model", {}),
    ("GET", "/v1/models/{id}/weights", "model", {"params": {"format": "npz"}}),
    ("POST", "/v1/models/{id}/predict", "model", {"json": PREDICT_BODY}),
]
ROUTE_IDS = [f"{m} {p}{'?' + str(kw['params']) if 'params' in kw else ''} [{which}]" for m, p, which, kw in ROUTES]

# Ids no owner has. Each reaches the route handler (no '/' in it), so it must get the handler's own 404.
MALFORMED = {
    "dots": "...",
    "encoded-traversal": "..%2Fx",  # itself percent-encoded on the wire: the handler gets the text '..%2Fx'
    "very-long": "a" * 4096,
    "unicode": "ñandú-💥-\u202e-名前",
    "sql-ish": "1 OR 1=1",
    "nul": "a\x00b",
    "uuid-upper": random_id().upper(),
}
# Ids with a "/" (or a bare "..", which URL normalization removes) cannot reach an {id} route: they are routed
# elsewhere and must still be a 404/405 problem.
UNROUTABLE = {"slash-traversal": "../x", "dot-dot": "..", "slashes": "a/b/c"}


@pytest.fixture
def template(world_template: Template) -> Template:
    return world_template


def _path(template: str, id_: str) -> str:
    return template.replace("{id}", quote(id_, safe=""))


def _normalized(body: dict[str, Any], id_: str) -> dict[str, Any]:
    """The problem body with the id it echoes replaced by a placeholder (as repr or as the raw text)."""
    out = {}
    for k, v in body.items():
        if isinstance(v, str):
            v = v.replace(repr(id_), "<ID>").replace(id_, "<ID>")
        elif isinstance(v, list):
            v = [_normalized(e, id_) if isinstance(e, dict) else e for e in v]
        out[k] = v
    return out


async def _snapshot(alice: httpx.AsyncClient, ids: dict[str, str]) -> dict[str, Any]:
    """Everything alice can read about her objects (minus the key's last-used time, which is not exposed)."""
    snap: dict[str, Any] = {}
    for kind, key in (("networks", "network"), ("datasets", "dataset"), ("models", "model")):
        r = await alice.get(f"/v1/{kind}/{ids[key]}")
        assert r.status_code == 200, r.text
        snap[kind] = r.json()
    for key in ("job", "queued_job"):
        r = await alice.get(f"/v1/jobs/{ids[key]}")
        assert r.status_code == 200, r.text
        snap[key] = r.json()
    snap["history"] = (await alice.get(f"/v1/jobs/{ids['job']}/history")).json()
    snap["weights"] = (await alice.get(f"/v1/models/{ids['model']}/weights")).json()
    npz = await alice.get(f"/v1/models/{ids['model']}/weights", params={"format": "npz"})
    assert npz.status_code == 200
    snap["npz"] = npz.content
    snap["predict"] = (await alice.post(f"/v1/models/{ids['model']}/predict", json=PREDICT_BODY)).json()
    for kind in ("networks", "datasets", "jobs", "models"):
        snap[f"list-{kind}"] = (await alice.get(f"/v1/{kind}")).json()
    return snap


@pytest.mark.parametrize(("method", "path", "which", "kw"), ROUTES, ids=ROUTE_IDS)
async def test_foreign_id_answers_exactly_like_a_missing_one(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, ids: dict[str, str], method: str, path: str, which: str, kw: dict
):
    before = await _snapshot(alice, ids)
    real = ids[which]
    missing = random_id()
    r_real = await bob.request(method, _path(path, real), **kw)
    r_missing = await bob.request(method, _path(path, missing), **kw)
    body_real = assert_problem(r_real, 404)
    body_missing = assert_problem(r_missing, 404)
    assert body_missing["type"] == "/problems/not-found", body_missing
    assert missing in body_missing["detail"]  # the app's format echoes the id it was given ...
    assert _normalized(body_real, real) == _normalized(body_missing, missing)  # ... and nothing else differs
    assert r_real.headers["content-type"] == r_missing.headers["content-type"] == PROBLEM
    hdrs_real = {k: v for k, v in r_real.headers.items() if k != "content-length"}
    hdrs_missing = {k: v for k, v in r_missing.headers.items() if k != "content-length"}
    assert hdrs_real == hdrs_missing

    # Malformed ids reach the same handler and get the same answer (with their own id echoed).
    template_body = _normalized(body_missing, missing)
    for name, bad in MALFORMED.items():
        r = await bob.request(method, _path(path, bad), **kw)
        body = assert_problem(r, 404)
        assert _normalized(body, bad) == template_body, (name, body)
    for bad in UNROUTABLE.values():
        r = await bob.request(method, path.replace("{id}", bad), **kw)
        assert r.status_code in (404, 405), (bad, r.status_code, r.text)
        assert_problem(r, r.status_code)

    # Bob's attempt changed nothing of alice's, and alice still has every object (DELETE/cancel did nothing).
    assert await _snapshot(alice, ids) == before


async def test_alice_sees_her_own_objects_through_the_same_routes(alice: httpx.AsyncClient, ids: dict[str, str]):
    """The matrix above is meaningful only if the same requests succeed for the owner."""
    for method, path, which, kw in ROUTES:
        if method == "DELETE":
            continue
        r = await alice.request(method, _path(path, ids[which]), **kw)
        # cancel: 409 for the succeeded job, 202 for the queued one
        expected = (409 if which == "job" else 202) if path.endswith("/cancel") else 200
        assert r.status_code == expected, (method, path, r.text)


async def test_foreign_ids_in_a_job_body_are_unknown_ids(
    bob: httpx.AsyncClient, ids: dict[str, str], alice: httpx.AsyncClient
):
    base = {"epochs": 2, "batch_size": 4, "seed": 1}
    cases = [
        ("network_id", {"network_id": ids["network"], "dataset_id": ids["bob_dataset"]}),
        ("dataset_id", {"network_id": ids["bob_network"], "dataset_id": ids["dataset"]}),
    ]
    for fieldname, body in cases:
        real = body[fieldname]
        missing = random_id()
        r_real = await bob.post("/v1/jobs", json={**base, **body})
        r_missing = await bob.post("/v1/jobs", json={**base, **body, fieldname: missing})
        body_real = assert_problem(r_real, 404, field=fieldname)
        body_missing = assert_problem(r_missing, 404, field=fieldname)
        assert _normalized(body_real, real) == _normalized(body_missing, missing)
    # Both of alice's ids together: also the unknown-network answer.
    r = await bob.post("/v1/jobs", json={**base, "network_id": ids["network"], "dataset_id": ids["dataset"]})
    assert_problem(r, 404, field="network_id")
    assert (await bob.get("/v1/jobs")).json() == {"data": [], "has_more": False}
    # alice's queued job count did not move.
    assert len((await alice.get("/v1/jobs", params={"status": "queued"})).json()["data"]) == 1


async def test_lists_never_hold_another_owners_ids(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, ids: dict[str, str]
):
    alice_ids = {ids[k] for k in ("network", "dataset", "job", "queued_job", "model")}
    bob_ids = {ids["bob_network"], ids["bob_dataset"]}
    for kind in ("networks", "datasets", "jobs", "models"):
        for params in ({}, {"limit": 100}):
            r = await bob.get(f"/v1/{kind}", params=params)
            assert r.status_code == 200, r.text
            seen = {item["id"] for item in r.json()["data"]}
            assert not seen & alice_ids, (kind, params, seen)
            assert seen <= bob_ids
        for alice_id in (ids["network"], ids["job"], ids["model"]):   # not bob's cursors: 422, no page
            assert_problem(await bob.get(f"/v1/{kind}", params={"after": alice_id}), 422, field="after")
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            r = await bob.get("/v1/jobs", params={"status": status})
            assert r.json() == {"data": [], "has_more": False}
    # alice's id as bob's pagination cursor answers like a missing cursor.
    for kind in ("networks", "datasets", "jobs", "models"):
        real, missing = ids["network"] if kind != "jobs" else ids["job"], random_id()
        r_real = await bob.get(f"/v1/{kind}", params={"after": real})
        r_missing = await bob.get(f"/v1/{kind}", params={"after": missing})
        assert r_real.status_code == r_missing.status_code == 422
        assert r_real.text == r_missing.text.replace(missing, real)
    # And bob's own objects are in his lists, so the lists do work.
    assert {n["id"] for n in (await bob.get("/v1/networks")).json()["data"]} == {ids["bob_network"]}
    assert {n["id"] for n in (await alice.get("/v1/networks")).json()["data"]} == {ids["network"]}


async def test_an_idempotency_key_is_per_owner(alice: httpx.AsyncClient, bob: httpx.AsyncClient, ids: dict[str, str]):
    key = {"Idempotency-Key": "shared-key-1"}
    body_a = {"network_id": ids["network"], "dataset_id": ids["dataset"], "epochs": 2, "batch_size": 4}
    r_a = await alice.post("/v1/jobs", json=body_a, headers=key)
    assert r_a.status_code == 202, r_a.text
    body_b = {"network_id": ids["bob_network"], "dataset_id": ids["bob_dataset"], "epochs": 2, "batch_size": 4}
    r_b = await bob.post("/v1/jobs", json=body_b, headers=key)
    assert r_b.status_code == 202, r_b.text
    assert r_b.json()["id"] != r_a.json()["id"]
    assert "idempotent-replayed" not in r_b.headers
    # Bob replaying alice's exact body with the shared key gets the unknown-network answer, not alice's job.
    r = await bob.post("/v1/jobs", json=body_a, headers={"Idempotency-Key": "shared-key-2"})
    assert_problem(r, 404, field="network_id")
    r = await alice.post("/v1/jobs", json=body_a, headers={"Idempotency-Key": "shared-key-2"})
    assert r.status_code == 202
    r = await bob.post("/v1/jobs", json=body_a, headers={"Idempotency-Key": "shared-key-2"})
    assert_problem(r, 404, field="network_id")


async def test_bob_cannot_read_alices_dataset_via_an_idempotent_upload(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient
):
    body = {"features": [[0.0, 1.0], [1.0, 0.0]], "targets": ["a", "b"], "name": "secret"}
    r_a = await alice.post("/v1/datasets", json=body, headers={"Idempotency-Key": "ds-1"})
    assert r_a.status_code == 201, r_a.text
    r_b = await bob.post("/v1/datasets", json=body, headers={"Idempotency-Key": "ds-1"})
    assert r_b.status_code == 201, r_b.text
    assert r_b.json()["id"] != r_a.json()["id"]
    assert "idempotent-replayed" not in r_b.headers
    assert (await bob.get(f"/v1/datasets/{r_a.json()['id']}")).status_code == 404

