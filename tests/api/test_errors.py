"""Error answers shared by every route: malformed bodies, content types, unknown paths, size limits."""

import httpx
import pytest

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from tests.api.conftest import OWNER, Template, assert_problem, client_for, random_id

pytestmark = pytest.mark.anyio

JSON_POSTS = ["/v1/networks", "/v1/datasets", "/v1/jobs", "/v1/models/{id}/predict"]


def post_path(path: str) -> str:
    return path.replace("{id}", random_id())


@pytest.mark.parametrize("path", JSON_POSTS)
@pytest.mark.parametrize("raw", [b'{"input_dim": 2,', b"{bad", b"[1, 2", b"\xff\xfe"])
async def test_malformed_json_is_422_saying_so(client: httpx.AsyncClient, path: str, raw: bytes):
    r = await client.post(post_path(path), content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422, "JSON")


@pytest.mark.parametrize("path", JSON_POSTS)
async def test_malformed_json_names_no_bogus_field(client: httpx.AsyncClient, path: str):
    # The problem is the whole body; a character offset reported as a list index ("[16]") or an empty field name
    # points the client at something that does not exist.
    raw = b'{"input_dim": 2,'
    r = await client.post(post_path(path), content=raw, headers={"content-type": "application/json"})
    body = assert_problem(r, 422, "JSON")
    assert body.get("field") in (None, "body"), body


@pytest.mark.parametrize("path", JSON_POSTS)
async def test_unsupported_content_type_is_415_naming_it(client: httpx.AsyncClient, path: str):
    # /v1/datasets answers 415 naming the type; the JSON-only routes should say the same, not
    # "body: Input should be a valid dictionary", which hides that the content type is the problem.
    r = await client.post(post_path(path), content=b'{"a": 1}', headers={"content-type": "text/plain"})
    assert_problem(r, 415, "text/plain")


@pytest.mark.parametrize("path", JSON_POSTS)
@pytest.mark.parametrize("body", [[], "text", 3, None, {}])
async def test_json_that_is_not_the_expected_object_is_422(client: httpx.AsyncClient, path: str, body):
    r = await client.post(post_path(path), json=body)
    assert_problem(r, 422)


async def test_unknown_path_is_a_404_problem(client: httpx.AsyncClient):
    assert_problem(await client.get("/v1/nothing-here"), 404)


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient):
    assert_problem(await client.delete(f"/v1/jobs/{random_id()}"), 405)
    assert_problem(await client.put("/v1/networks"), 405)


async def test_overlong_id_is_a_4xx_problem(client: httpx.AsyncClient):
    long_id = "x" * 5000
    for path in (f"/v1/networks/{long_id}", f"/v1/jobs/{long_id}/history", f"/v1/models/{long_id}"):
        r = await client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)
    assert_problem(await client.get("/v1/networks", params={"after": long_id}), 422, field="after")


async def test_body_over_max_json_bytes_is_413(template: Template, settings: Settings, db: Database):
    small = settings.model_copy(update={"max_json_bytes": 2000})
    async with client_for(create_app(small, db=db), template.keys[OWNER]) as c:
        features = [[float(i), float(i)] for i in range(500)]
        r = await c.post("/v1/datasets", json={"features": features, "targets": [i % 2 for i in range(500)]})
    assert_problem(r, 413, "max_json_bytes")


async def test_upload_over_max_upload_bytes_is_413(template: Template, settings: Settings, db: Database):
    small = settings.model_copy(update={"max_upload_bytes": 2000})
    content = b"x,y\n" + b"".join(f"{i},{i % 2}\n".encode() for i in range(1000))
    async with client_for(create_app(small, db=db), template.keys[OWNER]) as c:
        r = await c.post("/v1/datasets", files={"file": ("big.csv", content, "text/csv")})
    assert_problem(r, 413, "max_upload_bytes")


async def test_dataset_over_max_dataset_rows_is_413(template: Template, settings: Settings, db: Database):
    small = settings.model_copy(update={"max_dataset_rows": 5})
    async with client_for(create_app(small, db=db), template.keys[OWNER]) as c:
        r = await c.post("/v1/datasets", json={"features": [[i] for i in range(6)], "targets": [0, 1] * 3})
        assert_problem(r, 413, "max_dataset_rows")
        content = b"x,y\n" + b"".join(f"{i},{i % 2}\n".encode() for i in range(6))
        r = await c.post("/v1/datasets", files={"file": ("rows.csv", content, "text/csv")})
        assert_problem(r, 413, "max_dataset_rows")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/ui", "GET, HEAD"),
        ("DELETE", "/ui/static/app.js", "GET, HEAD"),
        ("PUT", "/v1/jobs", "GET, HEAD, POST"),
    ],
)
async def test_405_names_the_allowed_methods_also_for_routes_outside_the_openapi_document(
    client: httpx.AsyncClient, method: str, path: str, allow: str
):
    r = await client.request(method, path)
    assert_problem(r, 405, allow)
    assert r.headers["allow"] == allow
