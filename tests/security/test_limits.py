"""Limits (DESIGN.md §8, acceptance check 10): each cap is hit once (and its boundary where cheap) with the expected
status and a message naming the limit; the API's memory stays bounded while a 300 MB upload is refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.db.session import Database
from app.main import create_app
from tests.api.conftest import network_body
from tests.security.conftest import ALICE, BOB, SUMMARY, Template, assert_problem, small_settings

pytestmark = pytest.mark.anyio

LIMITS = {
    "max_json_bytes": 4000,
    "max_upload_bytes": 4000,
    "max_dataset_rows": 5,
    "max_features": 3,
    "max_params": 9,  # input_dim 2 -> 3 softmax units: 2*3 + 3
    "max_epochs": 50,
    "max_batch_size": 16,
    "max_active_jobs_per_owner": 2,
    "max_stored_bytes_per_owner": 6000,
}
XOR = {"features": [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]], "targets": ["a", "b", "c"]}


@pytest.fixture
def small_app(db_url: str, db: Database) -> FastAPI:
    return create_app(small_settings(db_url, **LIMITS), db=db)


@pytest.fixture
def a(clients: Callable[..., httpx.AsyncClient], small_app: FastAPI, template: Template) -> httpx.AsyncClient:
    return clients(template.keys[ALICE], small_app)


@pytest.fixture
def b(clients: Callable[..., httpx.AsyncClient], small_app: FastAPI, template: Template) -> httpx.AsyncClient:
    return clients(template.keys[BOB], small_app)


def csv_bytes(rows: int, features: int = 1) -> bytes:
    header = ",".join(f"x{j}" for j in range(features)) + ",y\n"
    lines = (",".join(str(i + j) for j in range(features)) + f",{i % 2}\n" for i in range(rows))
    return (header + "".join(lines)).encode()


async def chunks(total: int, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    """`total` bytes in `size`-byte chunks, counting in `sent` how many the server pulled."""
    n = 0
    while n < total:
        piece = min(size, total - n)
        n += piece
        sent[0] = n
        yield b" " * piece


# --- body sizes (413) ------------------------------------------------------------------------------------------------


async def test_json_over_max_json_bytes_by_content_length(a: httpx.AsyncClient):
    body = {**network_body(2, (3,)), "name": "n" * 150}
    assert len(str(body)) < LIMITS["max_json_bytes"]
    padded = b'{"pad": "' + b"x" * LIMITS["max_json_bytes"] + b'"}'
    r = await a.post("/v1/networks", content=padded, headers={"content-type": "application/json"})
    assert_problem(r, 413, "max_json_bytes")
    assert r.headers["content-type"] == "application/problem+json"


JSON_POSTS = ["/v1/networks", "/v1/datasets", "/v1/jobs", "/v1/models/{id}/predict"]


@pytest.mark.parametrize("path", JSON_POSTS)
async def test_json_over_max_json_bytes_streamed_without_content_length(a: httpx.AsyncClient, path: str):
    sent = [0]
    total = 2_000_000

    async def body() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        async for piece in chunks(total, 1000, sent):
            yield piece.replace(b" ", b"n")
        yield b'"}'

    r = await a.post(
        path.replace("{id}", "0" * 32), content=body(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "max_json_bytes")
    assert sent[0] < 100_000, f"the server read {sent[0]} bytes before refusing"


async def test_upload_over_max_upload_bytes_by_content_length(a: httpx.AsyncClient):
    content = csv_bytes(2000)
    assert len(content) > LIMITS["max_upload_bytes"]
    r = await a.post("/v1/datasets", files={"file": ("big.csv", content, "text/csv")})
    assert "content-length" in r.request.headers
    assert_problem(r, 413, "max_upload_bytes")


async def test_upload_over_max_upload_bytes_streamed(a: httpx.AsyncClient):
    sent = [0]
    boundary = "xyzzy"

    async def body() -> AsyncIterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
               f"Content-Type: text/csv\r\n\r\nx,y\n").encode()
        async for piece in chunks(5_000_000, 1000, sent):
            yield piece.replace(b" ", b"1") + b"\n"
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await a.post(
        "/v1/datasets", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "max_upload_bytes")
    assert sent[0] < 200_000, f"the server read {sent[0]} bytes before refusing"


# --- dataset shape ---------------------------------------------------------------------------------------------------


async def test_dataset_rows_over_max_dataset_rows(a: httpx.AsyncClient):
    n = LIMITS["max_dataset_rows"]
    ok = await a.post("/v1/datasets", json={"features": [[float(i)] for i in range(n)], "targets": [0, 1] * 2 + [0]})
    assert ok.status_code == 201, ok.text
    r = await a.post("/v1/datasets", json={"features": [[float(i)] for i in range(n + 1)], "targets": [0, 1] * 3})
    body = assert_problem(r, 413, "max_dataset_rows")
    assert body.get("field") == "features"
    r = await a.post("/v1/datasets", files={"file": ("rows.csv", csv_bytes(n + 1), "text/csv")})
    assert_problem(r, 413, "max_dataset_rows")


async def test_dataset_features_over_max_features(a: httpx.AsyncClient):
    d = LIMITS["max_features"]
    ok = await a.post("/v1/datasets", json={"features": [[1.0] * d, [2.0] * d], "targets": [0, 1]})
    assert ok.status_code == 201, ok.text
    r = await a.post("/v1/datasets", json={"features": [[1.0] * (d + 1), [2.0] * (d + 1)], "targets": [0, 1]})
    assert_problem(r, 422, "max_features", field="features")
    r = await a.post("/v1/datasets", files={"file": ("wide.csv", csv_bytes(2, d + 1), "text/csv")})
    assert r.status_code in (413, 422), r.text
    assert_problem(r, r.status_code, "max_features")


# --- network and job limits (422) ------------------------------------------------------------------------------------


async def test_network_over_max_params(a: httpx.AsyncClient):
    ok = await a.post("/v1/networks", json=network_body(2, (3,)))
    assert ok.status_code == 201, ok.text
    assert ok.json()["n_params"] == LIMITS["max_params"]
    r = await a.post("/v1/networks", json=network_body(3, (3,)))
    assert_problem(r, 422, "max_params")


async def _net_and_data(c: httpx.AsyncClient) -> tuple[str, str]:
    net = await c.post("/v1/networks", json=network_body(2, (3,)))
    data = await c.post("/v1/datasets", json=XOR)
    assert net.status_code == 201, net.text
    assert data.status_code == 201, data.text
    return net.json()["id"], data.json()["id"]


async def test_epochs_and_batch_size_over_their_limits(a: httpx.AsyncClient):
    net, data = await _net_and_data(a)
    base = {"network_id": net, "dataset_id": data}
    r = await a.post("/v1/jobs", json={**base, "epochs": LIMITS["max_epochs"] + 1})
    assert_problem(r, 422, "max_epochs", field="epochs")
    r = await a.post("/v1/jobs", json={**base, "batch_size": LIMITS["max_batch_size"] + 1})
    assert_problem(r, 422, "max_batch_size", field="batch_size")
    r = await a.post("/v1/jobs", json={**base, "epochs": LIMITS["max_epochs"], "batch_size": LIMITS["max_batch_size"]})
    assert r.status_code == 202, r.text


# --- quotas (429 + Retry-After) --------------------------------------------------------------------------------------


async def test_active_jobs_over_max_active_jobs_per_owner(a: httpx.AsyncClient, b: httpx.AsyncClient):
    net, data = await _net_and_data(a)
    job = {"network_id": net, "dataset_id": data, "epochs": 2, "batch_size": 2}
    first = await a.post("/v1/jobs", json=job)
    assert first.status_code == 202, first.text
    for _ in range(LIMITS["max_active_jobs_per_owner"] - 1):
        assert (await a.post("/v1/jobs", json=job)).status_code == 202
    r = await a.post("/v1/jobs", json=job)
    assert_problem(r, 429, "max_active_jobs_per_owner")
    assert int(r.headers["retry-after"]) > 0
    # Another owner's quota is his own.
    b_net, b_data = await _net_and_data(b)
    assert (await b.post("/v1/jobs", json={**job, "network_id": b_net, "dataset_id": b_data})).status_code == 202
    # Cancelling one frees a slot.
    assert (await a.post(f"/v1/jobs/{first.json()['id']}/cancel")).status_code == 202
    assert (await a.post("/v1/jobs", json=job)).status_code == 202


async def test_stored_bytes_over_max_stored_bytes_per_owner(a: httpx.AsyncClient, b: httpx.AsyncClient):
    features = [[float(i), float(i + 1), float(i + 2)] for i in range(5)]
    body = {"features": features, "targets": [0, 1, 0, 1, 0]}
    stored = []
    r = None
    for _ in range(50):
        r = await a.post("/v1/datasets", json=body)
        if r.status_code != 201:
            break
        stored.append(r.json())
    assert stored, "the first dataset should fit"
    assert r is not None
    assert r.status_code in (413, 429), r.text
    assert_problem(r, r.status_code, "max_stored_bytes_per_owner")
    if r.status_code == 429:
        assert int(r.headers["retry-after"]) > 0
    assert sum(d["nbytes"] for d in stored) <= LIMITS["max_stored_bytes_per_owner"]
    # Bob still has his whole quota; deleting frees alice's.
    assert (await b.post("/v1/datasets", json=body)).status_code == 201
    assert (await a.delete(f"/v1/datasets/{stored[0]['id']}")).status_code == 204
    assert (await a.post("/v1/datasets", json=body)).status_code == 201


# --- memory while a huge upload is refused (real server) --------------------------------------------------------------


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env.update(
        BACKPROP_DATABASE_URL=db_url, BACKPROP_MAX_UPLOAD_BYTES=str(10 * 1024 * 1024), BACKPROP_LOG_LEVEL="warning"
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--workers", "0", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.integration
def test_memory_stays_bounded_while_a_300_mb_upload_is_refused(
    server: tuple[subprocess.Popen[bytes], str], template: Template
):
    proc, url = server
    headers = {"Authorization": f"Bearer {template.keys[ALICE]}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:  # warm up: imports, first auth, pools
        assert c.get("/v1/networks").status_code == 200
        r = c.post("/v1/datasets", files={"file": ("s.csv", csv_bytes(10), "text/csv")})
        assert r.status_code == 201, r.text
    rss0, hwm0 = _rss_kb(proc.pid), _rss_kb(proc.pid, "VmHWM")
    boundary = "bpboundary"
    total, chunk = 300 * 1024 * 1024, 256 * 1024
    sent = [0]

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.csv"\r\n'
               "Content-Type: text/csv\r\n\r\nx,y\n").encode()
        line = b"1,0\n" * (chunk // 4)
        while sent[0] < total:
            sent[0] += len(line)
            yield line
        yield f"\r\n--{boundary}--\r\n".encode()

    outcome: Any
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            outcome = c.post(
                "/v1/datasets", content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
    except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        outcome = exc  # the server may answer 413 and close before reading the rest
    if isinstance(outcome, httpx.Response):
        assert_problem(outcome, 413, "max_upload_bytes")
    assert proc.poll() is None, "the server died"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    rss1, hwm1 = _rss_kb(proc.pid), _rss_kb(proc.pid, "VmHWM")
    growth_mb, peak_mb = (rss1 - rss0) / 1024, (hwm1 - max(hwm0, rss0)) / 1024
    SUMMARY.append(
        f"300 MB upload: server read ~{sent[0] / 2**20:.0f} MiB of it, outcome {outcome!r}; API RSS "
        f"{rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB (growth {growth_mb:.1f} MiB, peak growth {peak_mb:.1f} MiB)"
    )
    assert growth_mb < 50, growth_mb
    assert peak_mb < 50, peak_mb
