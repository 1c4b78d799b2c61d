"""The synchronous client: `Client(url, api_key)` with `networks`, `datasets`, `jobs` and `models`.

    with Client() as bp:                       # BACKPROP_URL and BACKPROP_API_KEY, or pass them
        ds = bp.datasets.upload("iris.csv", target="species")
        net = bp.networks.create(input_dim=ds.n_features, loss="cross_entropy",
                                 layers=[{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}])
        job = bp.jobs.create(net.id, ds.id, epochs=50, validation_split=0.2)
        job = job.wait(on_epoch=lambda r: print(r.epoch, r.loss))
        print(bp.models.predict(job.model_id, [[5.1, 3.5, 1.4, 0.2]]).labels)
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import httpx

from app.client import _core
from app.client._core import Attempts, RetryPolicy, Tracker, Upload
from app.client.errors import (
    ApiError,
    ConflictError,
    JobFailed,
    StreamUnavailable,
    WaitTimeout,
    error_from_response,
)
from app.client.sse import SSEDecoder
from app.client.types import Dataset, EpochRecord, Job, JobEvent, Model, Network, Page, Prediction, Weights

Target = str | int | list[str | int] | tuple[str | int, ...]


class Client:
    """A Backprop API client. `url` and `api_key` default to $BACKPROP_URL (else http://127.0.0.1:8000) and
    $BACKPROP_API_KEY. Requests that fail with 429/502/503/504 or a connection error are retried per `retry`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = _core.resolve_url(url)
        self.api_key = _core.resolve_key(api_key)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._sleep = sleep or time.sleep
        self._rng = rng or random.Random()
        self._http = httpx.Client(
            base_url=self.url,
            headers=_core.base_headers(self.api_key, headers),
            timeout=self.timeout,
            transport=transport,
        )
        self.networks = Networks(self)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        upload: Upload | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        replay_safe: bool = True,
    ) -> httpx.Response:
        """Send a request with retries; the successful response, or an ApiError / ApiConnectionError.

        `replay_safe=False` is for requests the server cannot deduplicate: they are resent only when the failure
        shows the server did not act on them (a refused connection, 429, 503)."""
        return self._send(
            method, path, params=params, json=json, upload=upload, form=form, headers=headers, replay_safe=replay_safe
        )[0]

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        upload: Upload | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        replay_safe: bool = True,
        attempts: Attempts | None = None,
    ) -> tuple[httpx.Response, Attempts]:
        attempts = attempts or Attempts(self.retry, self._rng, replay_safe=replay_safe)
        while True:
            attempts.start()
            close: Callable[[], None] | None = None
            try:
                files = None
                if upload is not None:
                    f, close = upload.open()
                    files = {"file": (upload.filename, f, "text/csv")}
                response = self._http.request(
                    method, path, params=params, json=json, files=files, data=form or None, headers=headers
                )
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise _core.connection_error(exc, self.url, attempts.count) from exc
            else:
                if response.status_code < 400:
                    return response, attempts
                delay = attempts.after_status(response)
                if delay is None:
                    _core.raise_for_status(response)
            finally:
                if close is not None:
                    close()
            self._sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _core.json_body(self.request(method, path, **kwargs))

    def _page(
        self, path: str, build: Callable[[dict[str, Any]], Any], params: dict[str, Any]
    ) -> Page[Any]:
        body = self._json("GET", path, params=_core.drop_none(params))
        items = [build(d) for d in body.get("data", [])]

        def fetch(after: str) -> Page[Any]:
            return self._page(path, build, {**params, "after": after})

        return Page(items, bool(body.get("has_more")), fetch, items[-1].id if items else None)


class _Resource:
    def __init__(self, client: Client) -> None:
        self._c = client


class Networks(_Resource):
    def create(
        self,
        *,
        input_dim: int,
        layers: Sequence[dict[str, Any]],
        loss: str,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Network:
        """Define a network. `layers` are dicts with `units`, `activation` (and `dropout`, `init`), input to output.

        The server does not deduplicate network creates yet, so they are resent only after failures that show
        the server did not act (the Idempotency-Key is sent anyway, for when it does)."""
        body = _core.drop_none({"name": name, "input_dim": input_dim, "layers": list(layers), "loss": loss})
        key = idempotency_key or _core.new_idempotency_key()
        return Network.from_dict(
            self._c._json("POST", "/v1/networks", json=body, headers={"Idempotency-Key": key})
        )

    def get(self, network_id: str) -> Network:
        return Network.from_dict(self._c._json("GET", f"/v1/networks/{network_id}"))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[Network]:
        return self._c._page("/v1/networks", Network.from_dict, {"limit": limit, "after": after})

    def iter(self, *, page_size: int = 100) -> Iterator[Network]:
        """Every network, newest first, fetching pages of `page_size` as needed."""
        return self.list(limit=page_size).auto_paging_iter()

    def delete(self, network_id: str) -> None:
        self._c.request("DELETE", f"/v1/networks/{network_id}")


class Datasets(_Resource):
    def create(
        self,
        features: Sequence[Sequence[float]],
        targets: Sequence[Any],
        *,
        task: Literal["classification", "regression"] | None = None,
        feature_names: Sequence[str] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        """A dataset from rows: `features` (n, d) numbers, `targets` one label or number (or list) per row."""
        body = _core.drop_none(
            {
                "name": name,
                "features": [list(r) for r in features],
                "targets": [list(t) if isinstance(t, tuple) else t for t in targets],
                "task": task,
                "feature_names": list(feature_names) if feature_names is not None else None,
            }
        )
        key = idempotency_key or _core.new_idempotency_key()
        return Dataset.from_dict(self._c._json("POST", "/v1/datasets", json=body, headers={"Idempotency-Key": key}))

    def upload(
        self,
        file: _core.FileInput,
        *,
        target: Target | None = None,
        header: bool | None = None,
        task: Literal["classification", "regression"] | None = None,
        name: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        delimiter: Literal[",", ";", "\t", "|"] | None = None,
    ) -> Dataset:
        """Upload a CSV: a path, bytes or a binary file object. `target` names the target column(s) by header name
        or 0-based index (default: the last column); `header` forces whether the first line names the columns;
        `delimiter` the column separator (default: detected from the first line)."""
        upload = Upload(file, filename)
        key = idempotency_key or _core.new_idempotency_key()
        return Dataset.from_dict(
            self._c._json(
                "POST",
                "/v1/datasets",
                upload=upload,
                form=_core.upload_form(target, header, task, name, delimiter),
                headers={"Idempotency-Key": key},
            )
        )

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_dict(self._c._json("GET", f"/v1/datasets/{dataset_id}"))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[Dataset]:
        return self._c._page("/v1/datasets", Dataset.from_dict, {"limit": limit, "after": after})

    def iter(self, *, page_size: int = 100) -> Iterator[Dataset]:
        return self.list(limit=page_size).auto_paging_iter()

    def delete(self, dataset_id: str) -> None:
        self._c.request("DELETE", f"/v1/datasets/{dataset_id}")


def job_body(
    network_id: str,
    dataset_id: str,
    *,
    epochs: int | None,
    batch_size: int | None,
    optimizer: str | dict[str, Any] | None,
    learning_rate: float | None,
    validation_split: float | None,
    seed: int | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    opt: dict[str, Any] | None = {"name": optimizer} if isinstance(optimizer, str) else optimizer
    if learning_rate is not None:
        opt = {**(opt or {}), "learning_rate": learning_rate}
    return _core.drop_none(
        {
            "network_id": network_id,
            "dataset_id": dataset_id,
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": opt,
            "validation_split": validation_split,
            "seed": seed,
            **options,
        }
    )


class Jobs(_Resource):
    def create(
        self,
        network_id: str,
        dataset_id: str,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        optimizer: str | dict[str, Any] | None = None,
        learning_rate: float | None = None,
        validation_split: float | None = None,
        seed: int | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Start training. `optimizer` is a name ("adam") or a dict ({"name": "sgd", "momentum": 0.9}); other API
        fields (schedule, clip_norm, early_stopping, shuffle, dtype, standardize, keep_partial_model, ...) go in
        `options`. Safe to retry: the Idempotency-Key (yours, or a fresh uuid4) makes the server replay."""
        body = job_body(
            network_id,
            dataset_id,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            learning_rate=learning_rate,
            validation_split=validation_split,
            seed=seed,
            options=options,
        )
        key = idempotency_key or _core.new_idempotency_key()
        return self._job(self._c._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}))

    def _job(self, d: dict[str, Any]) -> Job:
        return Job.from_dict(d, self)

    def get(self, job_id: str) -> Job:
        return self._job(self._c._json("GET", f"/v1/jobs/{job_id}"))

    def list(
        self,
        *,
        status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page[Job]:
        return self._c._page("/v1/jobs", self._job, {"status": status, "limit": limit, "after": after})

    def iter(
        self,
        *,
        status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        return self.list(status=status, limit=page_size).auto_paging_iter()

    def history(self, job_id: str, *, after: int = 0) -> list[EpochRecord]:
        """The per-epoch records after epoch `after`, in order."""
        body = self._c._json("GET", f"/v1/jobs/{job_id}/history", params={"after": after})
        return [EpochRecord.from_dict(d) for d in body.get("data", [])]

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (at once) or a running one (at its next batch boundary); 409 once it has finished.

        If an earlier attempt of this call may have got through (its answer was lost), a 409 is checked against
        the job: one that is now cancelled is returned rather than reported as a conflict."""
        attempts = Attempts(self._c.retry, self._c._rng, replay_safe=True)
        try:
            response, _ = self._c._send("POST", f"/v1/jobs/{job_id}/cancel", attempts=attempts)
        except ConflictError:
            if attempts.maybe_applied:
                job = self.get(job_id)
                if job.status == "cancelled":
                    return job
            raise
        return self._job(_core.json_body(response))

    def events(
        self, job_id: str, *, after: int | None = None, timeout: float | None = None
    ) -> Iterator[JobEvent]:
        """Follow GET /v1/jobs/{id}/events: every event after seq `after`, reconnecting with Last-Event-ID after a
        dropped connection, until the server closes the stream after the job's final status. Raises
        StreamUnavailable if the server has no such stream, WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            yield from self._stream(job_id, after=None if after is None else str(after), deadline=deadline)
        except WaitTimeout:
            raise WaitTimeout(job_id, timeout, None) from None

    def _stream(self, job_id: str, *, after: str | None, deadline: float | None) -> Iterator[JobEvent]:
        c = self._c
        last_id, retry_ms = after, 1000
        # Events at or before this seq were delivered already: a server (or proxy) that ignores Last-Event-ID and
        # replays from the start must not deliver anything twice.
        last_seq = int(after) if after is not None and after.isdigit() else None
        failures = refused = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(job_id, None, None)
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            delay: float | None = None
            try:
                with c._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=_core.stream_timeout(c.timeout, remaining),
                ) as response:
                    refused = 0
                    if response.status_code != 200:
                        response.read()
                        failures += 1
                        delay = self._stream_refusal(job_id, response, failures)
                    elif not _core.is_event_stream(response):
                        raise StreamUnavailable(
                            f"GET /v1/jobs/{job_id}/events answered {response.headers.get('content-type')!r}, "
                            "not text/event-stream"
                        )
                    else:
                        decoder = SSEDecoder(last_id)
                        received = 0
                        # None marks the end of the stream, where a last CR-terminated line may complete an event.
                        for chunk in itertools.chain(response.iter_bytes(), [None]):
                            if chunk:
                                failures = 0
                            retry_ms = decoder.retry if decoder.retry is not None else retry_ms
                            for sse in decoder.end() if chunk is None else decoder.feed_bytes(chunk):
                                last_id = sse.id
                                event = _core.event_from_sse(sse.event, sse.data, sse.id)
                                if event is None:
                                    continue
                                received += 1
                                if event.seq is not None:
                                    if last_seq is not None and event.seq <= last_seq:
                                        continue
                                    last_seq = event.seq
                                yield event
                                if event.is_terminal:
                                    return
                            if deadline is not None and time.monotonic() >= deadline:
                                raise WaitTimeout(job_id, None, None)
                        # Closed before a final status: the job may have ended before we resumed (the server then
                        # closes at once), or a proxy cut us off. Ask the job; if it is over, reconnect only to
                        # collect what this connection had not yet delivered.
                        if self.get(job_id).is_terminal:
                            if not received:
                                return
                            delay = 0.0
                        failures += 1  # the stream ended before the final status: reconnect
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(job_id, None, None) from None
                failures += 1
                if isinstance(exc, _core.NOT_SENT_ERRORS):
                    refused += 1
                if refused >= _core.STREAM_REFUSED_GIVE_UP:
                    raise StreamUnavailable(f"cannot connect to the event stream: {exc}") from exc
            if failures >= _core.STREAM_GIVE_UP:
                raise StreamUnavailable(f"the event stream failed {failures} times in a row")
            if delay is None:
                delay = min(10.0, retry_ms / 1000 * 2 ** max(0, failures - 1))
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            c._sleep(delay)

    def _stream_refusal(self, job_id: str, response: httpx.Response, failures: int) -> float:
        """For a non-200 answer from /events: the wait before trying again, or raise why not."""
        status = response.status_code
        if status == 404:
            self.get(job_id)  # raises NotFoundError if the job itself is unknown
            raise StreamUnavailable(f"this server has no event stream for jobs (404 from {response.url.path})")
        if status in (405, 406, 501):
            raise StreamUnavailable(f"the event stream is not available here ({status})")
        if status in _core.RETRY_STATUSES:
            retry_after = _core.parse_retry_after(response.headers.get("Retry-After"))
            return retry_after if retry_after is not None else self._c.retry.backoff_delay(failures, self._c._rng)
        raise error_from_response(response)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_epoch: Callable[[EpochRecord], object] | None = None,
        on_status: Callable[[str], object] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job finishes; the final Job. `on_epoch(record)` sees every epoch once, in order, and
        `on_status(status)` every status change. Follows the event stream (resuming after drops), or polls the job
        and its history if the server has no stream. Raises JobFailed if the job fails (a cancelled job is returned:
        check `job.status`), WaitTimeout (a TimeoutError) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = Tracker(on_epoch, on_status)
        try:
            try:
                for event in self._stream(job_id, after=None, deadline=deadline):
                    self._take(job_id, event, tracker)
            except StreamUnavailable:
                self._poll(job_id, tracker, deadline, poll_interval)
            job = self.get(job_id)
            if not job.is_terminal:  # a stream that ended early without saying so: finish by polling
                self._poll(job_id, tracker, deadline, poll_interval)
                job = self.get(job_id)
        except WaitTimeout:
            raise WaitTimeout(job_id, timeout, tracker.status) from None
        if job.epoch > tracker.last_epoch:  # epochs the stream did not carry (it never should)
            for record in self.history(job_id, after=tracker.last_epoch):
                tracker.epoch(record)
        tracker.status_seen(job.status)
        if job.status == "failed":
            raise JobFailed(job)
        return job

    def _take(self, job_id: str, event: JobEvent, tracker: Tracker) -> None:
        record = event.epoch_record()
        if record is None:
            tracker.event(event)
            return
        if tracker.gap_before(record):
            for earlier in self.history(job_id, after=tracker.last_epoch):
                if earlier.epoch < record.epoch:
                    tracker.epoch(earlier)
        tracker.epoch(record)

    def _poll(self, job_id: str, tracker: Tracker, deadline: float | None, interval: float) -> None:
        while True:
            job = self.get(job_id)
            tracker.status_seen(job.status)
            # Read after the job: if it had finished then, this history is complete.
            for record in self.history(job_id, after=tracker.last_epoch):
                tracker.epoch(record)
            if job.is_terminal:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(job_id, None, tracker.status)
            self._c._sleep(interval if remaining is None else min(interval, remaining))


class Models(_Resource):
    def get(self, model_id: str) -> Model:
        return Model.from_dict(self._c._json("GET", f"/v1/models/{model_id}"))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[Model]:
        return self._c._page("/v1/models", Model.from_dict, {"limit": limit, "after": after})

    def iter(self, *, page_size: int = 100) -> Iterator[Model]:
        return self.list(limit=page_size).auto_paging_iter()

    @overload
    def weights(self, model_id: str, *, format: Literal["json"] = "json") -> Weights: ...
    @overload
    def weights(self, model_id: str, *, format: Literal["npz"]) -> bytes: ...

    def weights(self, model_id: str, *, format: Literal["json", "npz"] = "json") -> Weights | bytes:
        """Per-layer weights and biases (`Weights`), or with format="npz" the archive's bytes."""
        response = self._c.request("GET", f"/v1/models/{model_id}/weights", params={"format": format})
        return response.content if format == "npz" else Weights.from_dict(_core.json_body(response))

    def predict(self, model_id: str, inputs: Sequence[Sequence[float]]) -> Prediction:
        """Outputs (probabilities or values) and, for classifiers, labels for raw feature rows."""
        body = {"inputs": [list(r) for r in inputs]}
        return Prediction.from_dict(self._c._json("POST", f"/v1/models/{model_id}/predict", json=body))

    def export(self, model_id: str, *, format: Literal["onnx"] = "onnx") -> bytes:
        """The model in an exchange format (ONNX: input scaling included, raw rows in, outputs out), as bytes."""
        return self._c.request("GET", f"/v1/models/{model_id}/export", params={"format": format}).content

    def delete(self, model_id: str) -> None:
        self._c.request("DELETE", f"/v1/models/{model_id}")


__all__ = ["ApiError", "Client", "Datasets", "Jobs", "Models", "Networks"]
