"""The client against a live `backprop serve` (API + worker): every resource method, pagination, problem bodies,
wait() with the event stream (and with it dropped mid-way, or missing), idempotent retries that the server replays,
and the async client doing the same."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.client import (
    ApiConnectionError,
    AsyncClient,
    AuthError,
    Client,
    ConflictError,
    EpochRecord,
    JobEvent,
    NotFoundError,
    RetryPolicy,
    StreamUnavailable,
    ValidationError,
)
from app.client.sse import SSEDecoder
from tests.client.conftest import (
    IRIS_COLUMNS,
    IRIS_JOB,
    IRIS_NETWORK,
    SPECIES,
    Live,
    iris_csv,
    iris_rows,
    regression_csv,
)

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


def has_route(live: Live, path: str) -> bool:
    return path in httpx.get(f"{live.url}/openapi.json", timeout=10).json()["paths"]


def train_iris(c: Client, epochs: int = 20, **job: Any) -> tuple[Any, Any, Any]:
    ds = c.datasets.upload(iris_csv(), target="species", name="iris")
    net = c.networks.create(**IRIS_NETWORK, name="iris-net")  # type: ignore[arg-type]
    job = c.jobs.create(net.id, ds.id, **{**IRIS_JOB, "epochs": epochs, **job})
    return ds, net, job


class Recorder:
    def __init__(self) -> None:
        self.epochs: list[EpochRecord] = []
        self.statuses: list[str] = []

    def epoch(self, record: EpochRecord) -> None:
        self.epochs.append(record)

    def numbers(self) -> list[int]:
        return [r.epoch for r in self.epochs]


# --- resources ----------------------------------------------------------------------------------------------------


def test_networks_create_get_list_iter_delete(live: Live, tenant: str):
    with live.client(tenant) as c:
        net = c.networks.create(**IRIS_NETWORK, name="n1")  # type: ignore[arg-type]
        assert (net.input_dim, net.output_dim, net.loss, net.task) == (4, 3, "cross_entropy", "classification")
        assert net.n_params == 4 * 8 + 8 + 8 * 3 + 3
        assert net.raw["id"] == net.id
        assert net.created_at is not None
        got = c.networks.get(net.id)
        assert got == net
        assert [n.id for n in c.networks.list()] == [net.id]
        assert [n.id for n in c.networks.iter()] == [net.id]
        c.networks.delete(net.id)
        with pytest.raises(NotFoundError):
            c.networks.get(net.id)


def test_datasets_from_rows_and_from_csv_path_bytes_and_file(live: Live, tenant: str, tmp_path):
    features, species = iris_rows()
    path = tmp_path / "iris.csv"
    path.write_bytes(iris_csv())
    with live.client(tenant) as c:
        rows = c.datasets.create(features, species, feature_names=IRIS_COLUMNS, name="rows")
        assert (rows.n_samples, rows.n_features, rows.classes) == (150, 4, SPECIES)
        from_path = c.datasets.upload(path, target="species")
        from_bytes = c.datasets.upload(iris_csv(), target="species", name="bytes")
        with path.open("rb") as f:
            from_file = c.datasets.upload(f, target=4)
        for ds in (from_path, from_bytes, from_file):
            assert (ds.n_samples, ds.n_features, ds.task, ds.classes) == (150, 4, "classification", SPECIES)
            assert ds.feature_names == IRIS_COLUMNS
        assert from_path.sha256 == from_bytes.sha256 == from_file.sha256
        semi = iris_csv().replace(b",", b";")
        for delimiter in (";", None):       # named, or detected from the first line
            ds = c.datasets.upload(semi, target="species", delimiter=delimiter)
            assert (ds.n_samples, ds.feature_names, ds.classes) == (150, IRIS_COLUMNS, SPECIES)
            c.datasets.delete(ds.id)
        with pytest.raises(ValidationError, match="species"):    # told wrongly: the header is one column
            c.datasets.upload(semi, target="species", delimiter="|")
        reg = c.datasets.upload(io.BytesIO(regression_csv()), target="y", filename="reg.csv")
        assert (reg.task, reg.n_targets, reg.classes, reg.target_names) == ("regression", 1, None, ["y"])
        assert c.datasets.get(from_bytes.id).name == "bytes"
        listed = [d.id for d in c.datasets.iter(page_size=2)]
        assert listed == [reg.id, from_file.id, from_bytes.id, from_path.id, rows.id]
        c.datasets.delete(reg.id)
        with pytest.raises(NotFoundError):
            c.datasets.get(reg.id)


def test_train_wait_history_models_weights_predict_export(live: Live, tenant: str):
    with live.client(tenant) as c:
        ds, net, job = train_iris(c, epochs=25)
        assert job.status == "queued"
        assert (job.network_id, job.dataset_id, job.epochs) == (net.id, ds.id, 25)
        rec = Recorder()
        final = job.wait(timeout=TIMEOUT, on_epoch=rec.epoch, on_status=rec.statuses.append, poll_interval=0.1)
        assert final.status == "succeeded"
        assert rec.numbers() == list(range(1, 26))  # every epoch once, in order
        assert rec.statuses == ["queued", "running", "succeeded"]
        assert rec.epochs[-1].loss == pytest.approx(final.loss)
        assert final.metrics["val_accuracy"] == rec.epochs[-1].metrics["val_accuracy"]
        assert (final.epoch, final.progress, final.error) == (25, 1.0, None)

        history = c.jobs.history(job.id)
        assert [r.epoch for r in history] == list(range(1, 26))
        assert [r.loss for r in history] == [r.loss for r in rec.epochs]
        assert [r.epoch for r in c.jobs.history(job.id, after=20)] == [21, 22, 23, 24, 25]
        assert c.jobs.get(job.id) == final
        assert [j.id for j in c.jobs.list(status="succeeded")] == [job.id]
        assert list(c.jobs.list(status="failed")) == []

        model = c.models.get(final.model_id)
        assert (model.job_id, model.classes, model.task, model.input_dim) == (job.id, SPECIES, "classification", 4)
        assert [m.id for m in c.models.list()] == [model.id]
        assert [m.id for m in c.models.iter()] == [model.id]

        weights = c.models.weights(model.id)
        assert [np.shape(lw.weights) for lw in weights.layers] == [(4, 8), (8, 3)]
        assert [lw.activation for lw in weights.layers] == ["tanh", "softmax"]
        npz = c.models.weights(model.id, format="npz")
        arrays = np.load(io.BytesIO(npz), allow_pickle=False)
        np.testing.assert_allclose(arrays["layer0.weights"], weights.layers[0].weights, rtol=1e-6)

        features, species = iris_rows()
        pred = c.models.predict(model.id, features)
        assert len(pred.outputs) == len(pred.labels or []) == 150
        np.testing.assert_allclose(np.sum(pred.outputs, axis=1), 1.0, rtol=1e-5)
        accuracy = np.mean([p == s for p, s in zip(pred.labels or [], species, strict=True)])
        assert accuracy >= 0.8

        if not has_route(live, "/v1/models/{model_id}/export"):
            pytest.skip("this server has no /v1/models/{model_id}/export route yet")
        onnx_bytes = c.models.export(model.id, format="onnx")
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs = session.run(None, {name: np.asarray(features, dtype=np.float32)})
        probs = next(o for o in outputs if np.asarray(o).dtype == np.float32 and np.asarray(o).shape == (150, 3))
        np.testing.assert_allclose(probs, pred.outputs, atol=1e-4)


def test_events_follow_a_job_from_queued_to_its_end(live: Live, tenant: str):
    with live.client(tenant) as c:
        _, _, job = train_iris(c, epochs=12)
        try:
            events = list(c.jobs.events(job.id, timeout=TIMEOUT))
        except StreamUnavailable:
            assert not has_route(live, "/v1/jobs/{job_id}/events")
            pytest.skip("this server has no event stream yet (the client fell back correctly)")
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(events) + 1))
        assert [e.status for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
        assert [e.data["epoch"] for e in events if e.type == "epoch"] == list(range(1, 13))
        last = events[-1]
        assert last.is_terminal
        assert last.data["model_id"] == c.jobs.get(job.id).model_id
        # Resumed part way, then past the end.
        assert [e.seq for e in c.jobs.events(job.id, after=10)] == seqs[10:]
        assert list(c.jobs.events(job.id, after=seqs[-1], timeout=10)) == []


# --- the event stream, dropped and missing ------------------------------------------------------------------------


class Forward(httpx.BaseTransport):
    """Passes requests to the live server; subclasses meddle with some of them."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def to(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(suffix)]


class CutStream(httpx.SyncByteStream):
    """The server's event stream, cut off in the middle of the event after the `keep`-th one."""

    def __init__(self, inner: httpx.Response, keep: int) -> None:
        self.inner, self.keep = inner, keep
        self.passed = b""

    def __iter__(self) -> Iterator[bytes]:
        buf = b""
        try:
            for chunk in self.inner.stream:  # type: ignore[union-attr]
                buf += chunk
                ends = [i for i in range(len(buf)) if buf.startswith(b"}\n\n", i)]
                if len(ends) >= self.keep and len(buf) > ends[self.keep - 1] + 3 + 6:
                    self.passed = buf[: ends[self.keep - 1] + 3 + 6]  # "...}\n\n" and "id: 1" of the next
                    yield self.passed
                    raise httpx.ReadError("connection reset by peer (test)")
            self.passed = buf
            yield buf
        finally:
            self.inner.close()


class CutFirstStream(Forward):
    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.cut: CutStream | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/events") and response.status_code == 200 and self.cut is None:
            self.cut = CutStream(response, self.keep)
            return httpx.Response(200, headers=response.headers, stream=self.cut, request=request)
        return response


def test_wait_resumes_a_dropped_stream_with_last_event_id(live: Live, tenant: str):
    transport = CutFirstStream(keep=5)
    with Client(live.url, tenant, transport=transport) as c:
        _, _, job = train_iris(c, epochs=20)
        rec = Recorder()
        final = c.jobs.wait(job.id, timeout=TIMEOUT, on_epoch=rec.epoch, on_status=rec.statuses.append)
    assert final.status == "succeeded"
    assert rec.numbers() == list(range(1, 21))
    assert rec.statuses == ["queued", "running", "succeeded"]
    streams = transport.to("/events")
    if not has_route(live, "/v1/jobs/{job_id}/events"):
        assert transport.cut is None  # no stream to cut: it polled
        return
    assert transport.cut is not None
    decoder = SSEDecoder()
    whole = decoder.feed_bytes(transport.cut.passed)
    assert len(whole) == 5  # five events got through whole, the sixth was cut off after its "id: 6"
    assert whole[-1].id == "5"
    assert decoder.last_event_id == "6"
    assert len(streams) == 2
    assert "last-event-id" not in streams[0].headers
    assert streams[1].headers["last-event-id"] == "5"
    assert not transport.to("/history")  # no polling needed


class NoEventsRoute(Forward):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.requests.append(request)
            body = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "Not Found"}
            return httpx.Response(404, json=body, headers={"content-type": "application/problem+json"})
        return super().handle_request(request)


def test_wait_polls_when_the_server_has_no_event_stream(live: Live, tenant: str):
    transport = NoEventsRoute()
    with Client(live.url, tenant, transport=transport) as c:
        _, _, job = train_iris(c, epochs=15)
        rec = Recorder()
        final = c.jobs.wait(job.id, timeout=TIMEOUT, on_epoch=rec.epoch, on_status=rec.statuses.append,
                            poll_interval=0.05)
    assert final.status == "succeeded"
    assert rec.numbers() == list(range(1, 16))
    assert rec.statuses[-1] == "succeeded"
    assert len(transport.to("/events")) == 1
    assert transport.to("/history")


# --- retries the server replays -----------------------------------------------------------------------------------


class LoseFirstAnswer(Forward):
    """Lets the server act on the first POST to each path in `paths`, then loses its answer (a reset)."""

    def __init__(self, *paths: str) -> None:
        super().__init__()
        self.pending = set(paths)
        self.answers: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        if request.method == "POST" and request.url.path in self.pending:
            self.pending.discard(request.url.path)
            raise httpx.ReadError("connection reset after the server answered (test)")
        self.answers.append(response)
        return response


def test_lost_answers_to_creates_are_retried_and_replayed_not_duplicated(live: Live, tenant: str):
    transport = LoseFirstAnswer("/v1/datasets", "/v1/jobs")
    with Client(live.url, tenant, transport=transport, retry=RetryPolicy(backoff=0.05)) as c:
        ds = c.datasets.upload(iris_csv(), target="species")
        net = c.networks.create(**IRIS_NETWORK)  # type: ignore[arg-type]
        job = c.jobs.create(net.id, ds.id, epochs=3, seed=1)
        for path in ("/v1/datasets", "/v1/jobs"):
            posts = [r for r in transport.requests if r.method == "POST" and r.url.path == path]
            assert len(posts) == 2
            assert posts[0].headers["Idempotency-Key"] == posts[1].headers["Idempotency-Key"]
        replayed = [r for r in transport.answers if r.headers.get("Idempotent-Replayed") == "true"]
        assert sorted(r.request.url.path for r in replayed) == ["/v1/datasets", "/v1/jobs"]
        assert [d.id for d in c.datasets.iter()] == [ds.id]
        assert [j.id for j in c.jobs.iter()] == [job.id]
        c.jobs.wait(job.id, timeout=TIMEOUT, poll_interval=0.05)


# --- errors -------------------------------------------------------------------------------------------------------


def test_errors_carry_the_servers_problem_bodies(live: Live, tenant: str):
    with live.client(tenant) as c:
        with pytest.raises(NotFoundError) as nf:
            c.jobs.get("no-such-job")
        assert (nf.value.status, nf.value.title) == (404, "Not Found")
        assert "no-such-job" in (nf.value.detail or "")
        assert nf.value.body["status"] == 404

        with pytest.raises(ValidationError) as bad:
            c.networks.create(input_dim=4, layers=[{"units": 0}], loss="mse")
        assert bad.value.status == 422
        assert bad.value.field == "layers[0].units"
        assert bad.value.errors
        assert bad.value.errors[0]["field"] == "layers[0].units"

        ds = c.datasets.upload(regression_csv(), target="y")
        net = c.networks.create(**IRIS_NETWORK)  # type: ignore[arg-type]
        with pytest.raises(ValidationError) as mismatch:
            c.jobs.create(net.id, ds.id)
        assert mismatch.value.field == "network_id"
        assert "input_dim is 4" in (mismatch.value.detail or "")

        with pytest.raises(ValidationError, match="target column 'nope'"):
            c.datasets.upload(iris_csv(), target="nope")

        _, _, job = train_iris(c, epochs=3)
        c.jobs.wait(job.id, timeout=TIMEOUT, poll_interval=0.05)
        with pytest.raises(ConflictError, match="already succeeded"):
            c.jobs.cancel(job.id)

    with live.client("bp_live_notakey1_nope") as bad_key, pytest.raises(AuthError) as auth:
        bad_key.jobs.list()
    assert auth.value.status == 401

    with Client("http://127.0.0.1:9", "k", retry=RetryPolicy(max_attempts=2, backoff=0.01)) as closed, \
            pytest.raises(ApiConnectionError):
        closed.jobs.list()


def test_cancel_a_running_job_then_wait_returns_it_cancelled(live: Live, tenant: str):
    with live.client(tenant) as c:
        _, _, job = train_iris(c, epochs=5000, batch_size=2)
        seen: list[int] = []
        deadline = time.monotonic() + TIMEOUT
        while c.jobs.get(job.id).status != "running":  # bounded: fails below if it never starts
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        cancelled = c.jobs.cancel(job.id)
        assert cancelled.status == "cancelled" or cancelled.cancel_requested
        final = c.jobs.wait(job.id, timeout=TIMEOUT, on_epoch=lambda r: seen.append(r.epoch), poll_interval=0.05)
        assert final.status == "cancelled"  # returned, not raised
        assert final.model_id is None
        assert seen == list(range(1, len(seen) + 1))
        with pytest.raises(ConflictError):
            c.jobs.cancel(job.id)


# --- async --------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_does_the_same(live: Live, tenant: str):
    features, species = iris_rows()
    async with AsyncClient(live.url, tenant) as c:
        ds = await c.datasets.upload(iris_csv(), target="species")
        rows = await c.datasets.create(features[::15], species[::15])
        assert (rows.n_samples, rows.classes) == (10, SPECIES)
        net = await c.networks.create(**IRIS_NETWORK)  # type: ignore[arg-type]
        assert (await c.networks.get(net.id)).id == net.id
        job = await c.jobs.create(net.id, ds.id, **{**IRIS_JOB, "epochs": 15})
        epochs: list[int] = []
        final = await job.wait(timeout=TIMEOUT, on_epoch=lambda r: epochs.append(r.epoch), poll_interval=0.05)
        assert final.status == "succeeded"
        assert epochs == list(range(1, 16))
        assert [r.epoch for r in await c.jobs.history(job.id, after=13)] == [14, 15]
        assert [j.id async for j in c.jobs.iter(status="succeeded")] == [job.id]
        assert [d.id async for d in c.datasets.iter()] == [rows.id, ds.id]
        assert [n.id for n in await c.networks.list()] == [net.id]
        if has_route(live, "/v1/jobs/{job_id}/events"):
            events: list[JobEvent] = [e async for e in c.jobs.events(job.id)]
            assert [e.data["epoch"] for e in events if e.type == "epoch"] == list(range(1, 16))
        model = await c.models.get(final.model_id or "")
        assert [m.id async for m in c.models.iter()] == [model.id]
        pred = await c.models.predict(model.id, [features[0], features[100]])
        assert pred.labels == ["setosa", "virginica"]
        weights = await c.models.weights(model.id)
        assert len(weights.layers) == 2
        assert (await c.models.weights(model.id, format="npz"))[:2] == b"PK"
        if has_route(live, "/v1/models/{model_id}/export"):
            assert len(await c.models.export(model.id)) > 100
        with pytest.raises(NotFoundError):
            await c.jobs.get("nope")
        with pytest.raises(ConflictError):
            await c.jobs.cancel(job.id)
