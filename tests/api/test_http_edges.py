"""HTTP edges shared by every route: authentication before the body, the Bearer scheme's case, HEAD, pagination
cursors, why a JSON body could not be parsed, one problem type per status, and the route label of early answers."""

import json
from collections import defaultdict

import anyio
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from tests.api.conftest import OWNER, Api, Template, assert_problem, blobs_csv, client_for, random_id

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
LIST_KINDS = ("networks", "datasets", "jobs", "models")


def requests_total(text: str, **labels: str) -> float | None:
    """backprop_http_requests_total with exactly these labels, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "backprop_http_requests_total" and sample.labels == labels:
                return float(sample.value)
    return None


def assert_unauthorized(r: httpx.Response) -> None:
    assert_problem(r, 401, "Bearer")
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers


# --- 1. authentication comes before anything reads the body --------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"{", JSON),                                    # malformed JSON: was a 422
        (b'{"a": 1}', {"content-type": "text/plain"}),   # a type the route does not take: was a 415
        (b"[" * 100_000 + b"]" * 100_000, JSON),         # unparsable: was a 422
        (b"{}", JSON),                                   # valid JSON, invalid body
    ],
    ids=["malformed", "text-plain", "deep", "invalid"],
)
@pytest.mark.parametrize("authorization", [None, "Bearer bp_live_abcdefgh_" + "x" * 43], ids=["no-key", "bad-key"])
async def test_without_a_valid_key_every_body_gets_the_401(
    app: FastAPI, content: bytes, headers: dict[str, str], authorization: str | None
):
    auth = {"Authorization": authorization} if authorization else {}
    async with client_for(app, None) as anon:
        for path in ("/v1/networks", "/v1/jobs", f"/v1/models/{random_id()}/predict", "/v1/datasets"):
            assert_unauthorized(await anon.post(path, content=content, headers={**headers, **auth}))


async def test_without_a_key_an_oversized_or_multipart_upload_gets_the_401(
    settings: Settings, db: Database, template: Template
):
    small = create_app(settings.model_copy(update={"max_upload_bytes": 1000, "max_json_bytes": 1000}), db=db)
    upload = {"files": {"file": ("b.csv", blobs_csv(20), "text/csv")}, "data": {"target": "color"}}
    async with client_for(small, None) as anon:
        assert_unauthorized(await anon.post("/v1/datasets", **upload))   # over max_upload_bytes: was a 413
        assert_unauthorized(await anon.post("/v1/datasets", content=b"[" + b"1," * 1000 + b"1]", headers=JSON))
        assert_unauthorized(await anon.post("/v1/networks", content=b"x" * 5000, headers=JSON))
    async with client_for(small, template.keys[OWNER]) as c:   # with the key, the size limit answers
        assert_problem(await c.post("/v1/datasets", **upload), 413, "max_upload_bytes")


async def test_with_a_key_bodies_are_still_checked(client: httpx.AsyncClient):
    assert_problem(await client.post("/v1/networks", content=b"{", headers=JSON), 422, "JSON")
    r = await client.post("/v1/networks", content=b'{"a": 1}', headers={"content-type": "text/plain"})
    assert_problem(r, 415, "text/plain")


async def test_unknown_paths_under_v1_need_a_key_and_public_routes_none(anon: httpx.AsyncClient, client):
    assert_unauthorized(await anon.get("/v1/nothing-here"))
    assert_problem(await client.get("/v1/nothing-here"), 404)
    assert_problem(await anon.get("/nothing-here"), 404)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/ui", "/ui/static/app.js"):
        r = await anon.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])


# --- 2. the Bearer scheme is case-insensitive ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR", "Bearer"])
async def test_the_bearer_scheme_may_be_written_in_any_case(anon: httpx.AsyncClient, template: Template, scheme):
    r = await anon.get("/v1/networks", headers={"Authorization": f"{scheme} {template.keys[OWNER]}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", ["Basic {key}", "Token {key}", "bearer", "bearer{key}", "Bearers {key}", "{key}"])
async def test_other_schemes_and_malformed_headers_stay_401(anon: httpx.AsyncClient, template: Template, value):
    r = await anon.get("/v1/networks", headers={"Authorization": value.format(key=template.keys[OWNER])})
    assert_unauthorized(r)


# --- 3. HEAD wherever GET ------------------------------------------------------------------------------------------


async def test_head_answers_a_get_route_with_its_status_and_headers_and_no_body(api: Api, client: httpx.AsyncClient):
    network = await api.network()
    for path in ("/v1/jobs", "/v1/networks", f"/v1/networks/{network['id']}", "/healthz", "/readyz"):
        get, head = await client.get(path), await client.head(path)
        assert head.status_code == get.status_code == 200, (path, head.status_code, head.text)
        assert head.content == b"", path
        for name in ("content-type", "content-length"):
            assert head.headers[name] == get.headers[name], (path, name)
    head = await client.head("/metrics")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/plain")
    assert head.content == b""


async def test_head_on_an_event_stream_answers_its_headers_and_ends(api: Api, client: httpx.AsyncClient):
    network, dataset = await api.network(), await api.dataset()
    job = await api.job(network["id"], dataset["id"])   # queued: its GET stream would stay open
    with anyio.fail_after(10):
        head = await client.head(f"/v1/jobs/{job['id']}/events")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""


async def test_head_errors_are_the_get_errors_without_a_body(client: httpx.AsyncClient, anon: httpx.AsyncClient):
    missing = f"/v1/networks/{random_id()}"
    head = await client.head(missing)
    assert head.status_code == 404
    assert head.headers["content-type"].startswith("application/problem+json")
    assert head.content == b""
    head = await anon.head("/v1/jobs")
    assert head.status_code == 401
    assert head.headers["www-authenticate"].startswith("Bearer")
    assert head.content == b""
    # A path with no GET route takes no HEAD either, and says so.
    head = await client.head(f"/v1/jobs/{random_id()}/cancel")
    assert head.status_code == 405
    assert head.headers["allow"] == "POST"
    assert head.content == b""


async def test_the_allow_header_lists_head_where_head_works(client: httpx.AsyncClient):
    r = await client.put("/v1/jobs")
    assert_problem(r, 405)
    assert r.headers["allow"] == "GET, HEAD, POST"
    assert (await client.head("/v1/jobs")).status_code == 200


async def test_head_is_counted_as_head_under_its_route(client: httpx.AsyncClient):
    assert (await client.head("/healthz")).status_code == 200
    assert (await client.head("/v1/jobs")).status_code == 200
    text = (await client.get("/metrics")).text
    assert requests_total(text, method="HEAD", route="/healthz", status="200") == 1
    assert requests_total(text, method="HEAD", route="/v1/jobs", status="200") == 1


# --- 4. pagination cursors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LIST_KINDS)
@pytest.mark.parametrize("after", ["", "nonexistent", "0" * 32])
async def test_an_unknown_or_empty_cursor_is_422_naming_after(client: httpx.AsyncClient, kind: str, after: str):
    r = await client.get(f"/v1/{kind}", params={"after": after})
    assert_problem(r, 422, "unknown cursor", field="after")


@pytest.mark.parametrize("kind", ["networks", "datasets", "jobs"])   # models: tests/security/test_bola.py
async def test_another_owners_id_is_an_unknown_cursor_like_any_other(
    api: Api, client: httpx.AsyncClient, other: httpx.AsyncClient, kind: str
):
    network = await api.network()
    dataset = await api.dataset()
    job = await api.job(network["id"], dataset["id"])
    real_id = {"networks": network["id"], "datasets": dataset["id"], "jobs": job["id"]}[kind]
    fake_id = random_id()
    body_real = assert_problem(await other.get(f"/v1/{kind}", params={"after": real_id}), 422, field="after")
    body_fake = assert_problem(await other.get(f"/v1/{kind}", params={"after": fake_id}), 422, field="after")
    assert json.dumps(body_real) == json.dumps(body_fake).replace(fake_id, real_id)
    assert (await client.get(f"/v1/{kind}", params={"after": real_id})).status_code == 200


async def test_a_cursor_deleted_since_its_page_was_read_still_pages_on(api: Api, client: httpx.AsyncClient):
    for _ in range(3):
        await api.network()
    everything = [n["id"] for n in (await client.get("/v1/networks")).json()["data"]]
    first = (await client.get("/v1/networks", params={"limit": 1})).json()
    assert [n["id"] for n in first["data"]] == everything[:1]
    assert first["has_more"] is True
    assert (await client.delete(f"/v1/networks/{everything[0]}")).status_code == 204
    rest = (await client.get("/v1/networks", params={"after": everything[0]})).json()
    assert [n["id"] for n in rest["data"]] == everything[1:]


# --- 5. why a JSON body could not be parsed ------------------------------------------------------------------------


async def test_too_deep_nesting_is_422_saying_so(client: httpx.AsyncClient):
    r = await client.post("/v1/networks", content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
    body = assert_problem(r, 422, "nested too deeply")
    assert "UTF-8" not in body["detail"]


async def test_an_integer_of_too_many_digits_is_422_saying_so(client: httpx.AsyncClient):
    raw = b'{"input_dim": ' + b"9" * 5001 + b', "layers": [{"units": 1}]}'
    body = assert_problem(await client.post("/v1/networks", content=raw, headers=JSON), 422, "too large", "4300 digits")
    assert "UTF-8" not in body["detail"]


async def test_invalid_utf8_is_422_naming_the_byte(client: httpx.AsyncClient):
    r = await client.post("/v1/networks", content=b'{"name": "\xff"}', headers=JSON)
    assert_problem(r, 422, "not valid UTF-8", "byte 10")


async def test_a_json_syntax_error_names_its_line_and_column(client: httpx.AsyncClient):
    raw = b'{\n  "input_dim": 2,\n  layers: []\n}'
    r = await client.post("/v1/networks", content=raw, headers=JSON)
    assert_problem(r, 422, "malformed JSON at line 3, column 3", "property name")


# --- 6. one problem type per status --------------------------------------------------------------------------------


async def test_each_status_has_one_problem_type_wherever_it_is_answered(
    settings: Settings, db: Database, template: Template
):
    small = create_app(settings.model_copy(update={"max_json_bytes": 5000, "max_dataset_rows": 5}), db=db)

    async def chunked():   # no Content-Length: refused while FastAPI reads it
        yield b'{"features": [' + b"[1]," * 2000 + b"[1]]}"

    async with client_for(small, template.keys[OWNER]) as c, client_for(small, None) as anon:
        answers = [
            await c.post("/v1/networks", content=b"x", headers={"content-type": "text/plain"}),   # 415 dependency
            await c.post("/v1/datasets", content=b"x", headers={"content-type": "text/plain"}),   # 415 in the route
            await c.get("/v1/nothing-here"),                                                       # 404 router
            await anon.get("/nothing-here"),                                                       # 404 router
            await c.get(f"/v1/networks/{random_id()}"),                                            # 404 NotFound
            await c.delete(f"/v1/jobs/{random_id()}"),                                             # 405
            await c.post("/v1/networks", content=b"{", headers=JSON),                              # 422 syntax
            await c.post("/v1/networks", content=b"[" * 2000 + b"]" * 2000, headers=JSON),         # 422 unparsable
            await c.post("/v1/networks", json={}),                                                 # 422 validation
            await c.get("/v1/networks", params={"after": "x"}),                                    # 422 InvalidRequest
            await anon.get("/v1/networks"),                                                        # 401
            await c.post("/v1/networks", content=b"x" * 6000, headers=JSON),                       # 413 middleware
            await c.post("/v1/networks", content=chunked(), headers=JSON),                         # 413 while read
            await c.post("/v1/datasets", json={"features": [[i] for i in range(6)], "targets": [0, 1] * 3}),  # 413
        ]
    types: dict[int, set[str]] = defaultdict(set)
    for r in answers:
        types[r.status_code].add(r.json()["type"])
    assert set(types) == {401, 404, 405, 413, 415, 422}, types
    assert all(len(t) == 1 for t in types.values()), types
    assert types[415] == {"/problems/unsupported-media-type"}
    assert types[404] == {"/problems/not-found"}
    assert types[413] == {"/problems/payload-too-large"}


# --- 7. the route label of answers given before routing ------------------------------------------------------------


async def test_answers_given_before_routing_count_under_the_route_of_their_path(
    settings: Settings, db: Database, template: Template
):
    small = create_app(settings.model_copy(update={"max_upload_bytes": 1000, "max_json_bytes": 1000}), db=db)
    async with client_for(small, template.keys[OWNER]) as c, client_for(small, None) as anon:
        r = await c.post("/v1/datasets", files={"file": ("b.csv", blobs_csv(20), "text/csv")})
        assert_problem(r, 413, "max_upload_bytes")   # by its Content-Length, before routing
        assert_problem(await c.post(f"/v1/jobs/{random_id()}/cancel", content=b"x" * 2000, headers=JSON), 413)
        assert_problem(await c.post("/v1/no-such-route", content=b"x" * 2000, headers=JSON), 413)
        assert_unauthorized(await anon.get(f"/v1/models/{random_id()}"))
        text = (await anon.get("/metrics")).text
    assert requests_total(text, method="POST", route="/v1/datasets", status="413") == 1
    assert requests_total(text, method="POST", route="/v1/jobs/{job_id}/cancel", status="413") == 1
    assert requests_total(text, method="POST", route="<unmatched>", status="413") == 1
    assert requests_total(text, method="GET", route="/v1/models/{model_id}", status="401") == 1
