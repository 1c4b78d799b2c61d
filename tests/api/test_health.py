import httpx
import pytest

from app.db.session import Database
from app.main import create_app
from tests.api.conftest import client_for, small_settings

pytestmark = pytest.mark.anyio

ROUTES = {
    ("POST", "/v1/networks"),
    ("GET", "/v1/networks"),
    ("GET", "/v1/networks/{network_id}"),
    ("DELETE", "/v1/networks/{network_id}"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets"),
    ("GET", "/v1/datasets/{dataset_id}"),
    ("DELETE", "/v1/datasets/{dataset_id}"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/history"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/webhooks/secret"),
    ("POST", "/v1/webhooks/secret/rotate"),
    ("GET", "/v1/models/{model_id}/export"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/models/{model_id}/weights"),
    ("POST", "/v1/models/{model_id}/predict"),
    ("DELETE", "/v1/models/{model_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}


async def test_healthz_is_ok_without_a_key(anon: httpx.AsyncClient):
    r = await anon.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


async def test_readyz_is_ok_on_a_migrated_database(anon: httpx.AsyncClient):
    r = await anon.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


async def test_readyz_is_unavailable_on_an_unmigrated_database(empty_db_url: str):
    settings = small_settings(empty_db_url)
    db = Database(settings.database_url)
    try:
        async with client_for(create_app(settings, db=db), None) as c:
            r = await c.get("/readyz")
    finally:
        db.dispose()
    assert r.status_code == 503
    assert "migrat" in r.json()["detail"]


async def test_openapi_documents_every_route(anon: httpx.AsyncClient):
    r = await anon.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == ROUTES
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            assert {"200", "201", "202", "204"} & op["responses"].keys(), (method, path)


async def test_openapi_documents_both_dataset_upload_formats(anon: httpx.AsyncClient):
    doc = (await anon.get("/openapi.json")).json()
    content = doc["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= content.keys()


async def test_docs_page_is_served(anon: httpx.AsyncClient):
    r = await anon.get("/docs")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "openapi.json" in r.text
