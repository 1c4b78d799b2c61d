"""The asynchronous client: `AsyncClient`, the same API as `Client` with `await` (and `async for` on iterators).

    async with AsyncClient() as bp:
        job = await bp.jobs.create(network_id, dataset_id, epochs=50)
        job = await job.wait(on_epoch=lambda r: print(r.epoch, r.loss))
        async for j in bp.jobs.iter(status="succeeded"):
            ...
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, overload

import httpx

from app.client import _core
from app.client._core import Attempts, RetryPolicy, Tracker, Upload
from app.client.errors import ConflictError, JobFailed, StreamUnavailable, WaitTimeout, error_from_response
from app.client.sse import SSEDecoder
from app.client.sync import Target, job_body
from app.client.types import (
    AsyncJob,
    AsyncPage,
    Dataset,
    EpochRecord,
    JobEvent,
    Model,
    Network,
    Prediction,
    Weights,
)


class AsyncClient:
    """The async twin of `Client` (same arguments; `sleep` is a coroutine function)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = _core.resolve_url(url)
        self.api_key = _core.resolve_key(api_key)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_core.base_headers(self.api_key, headers),
            timeout=self.timeout,
            transport=transport,
        )
        self.networks = AsyncNetworks(self)
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r})"

    async def request(
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
        response, _ = await self._send(
            method, path, params=params, json=json, upload=upload, form=form, headers=headers, replay_safe=replay_safe
        )
        return response

    async def _send(
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
                response = await self._http.request(
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
            await self._sleep(delay)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _core.json_body(await self.request(method, path, **kwargs))

    async def _page(
        self, path: str, build: Callable[[dict[str, Any]], Any], params: dict[str, Any]
    ) -> AsyncPage[Any]:
        body = await self._json("GET", path, params=_core.drop_none(params))
        items = [build(d) for d in body.get("data", [])]

        async def fetch(after: str) -> AsyncPage[Any]:
            return await self._page(path, build, {**params, "after": after})

        return AsyncPage(items, bool(body.get("has_more")), fetch, items[-1].id if items else None)


async def _then_none(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes | None]:
    """The chunks, then None for the end of the stream."""
    async for chunk in chunks:
        yield chunk
    yield None


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client


async def _all(first: Awaitable[AsyncPage[Any]]) -> AsyncIterator[Any]:
    page = await first
    async for item in page.auto_paging_iter():
        yield item


class AsyncNetworks(_Resource):
    async def create(
        self,
        *,
        input_dim: int,
        layers: Sequence[dict[str, Any]],
        loss: str,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Network:
        body = _core.drop_none({"name": name, "input_dim": input_dim, "layers": list(layers), "loss": loss})
        key = idempotency_key or _core.new_idempotency_key()
        return Network.from_dict(
            await self._c._json("POST", "/v1/networks", json=body, headers={"Idempotency-Key": key})
        )

    async def get(self, network_id: str) -> Network:
        return Network.from_dict(await self._c._json("GET", f"/v1/networks/{network_id}"))

    async def list(self, *, limit: int = 20, after: str | None = None) -> AsyncPage[Network]:
        return await self._c._page("/v1/networks", Network.from_dict, {"limit": limit, "after": after})

    def iter(self, *, page_size: int = 100) -> AsyncIterator[Network]:
        return _all(self.list(limit=page_size))

    async def delete(self, network_id: str) -> None:
        await self._c.request("DELETE", f"/v1/networks/{network_id}")


class AsyncDatasets(_Resource):
    async def create(
        self,
        features: Sequence[Sequence[float]],
        targets: Sequence[Any],
        *,
        task: Literal["classification", "regression"] | None = None,
        feature_names: Sequence[str] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
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
        return Dataset.from_dict(
            await self._c._json("POST", "/v1/datasets", json=body, headers={"Idempotency-Key": key})
        )

    async def upload(
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
        upload = Upload(file, filename)
        key = idempotency_key or _core.new_idempotency_key()
        return Dataset.from_dict(
            await self._c._json(
                "POST",
                "/v1/datasets",
                upload=upload,
                form=_core.upload_form(target, header, task, name, delimiter),
                headers={"Idempotency-Key": key},
            )
        )

    async def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_dict(await self._c._json("GET", f"/v1/datasets/{dataset_id}"))

    async def list(self, *, limit: int = 20, after: str | None = None) -> AsyncPage[Dataset]:
        return await self._c._page("/v1/datasets", Dataset.from_dict, {"limit": limit, "after": after})

    def iter(self, *, page_size: int = 100) -> AsyncIterator[Dataset]:
        return _all(self.list(limit=page_size))

    async def delete(self, dataset_id: str) -> None:
        await self._c.request("DELETE", f"/v1/datasets/{dataset_id}")


class AsyncJobs(_Resource):
    async def create(
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
    ) -> AsyncJob:
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
        return self._job(await self._c._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}))

    def _job(self, d: dict[str, Any]) -> AsyncJob:
        return AsyncJob.from_dict(d, self)

    async def get(self, job_id: str) -> AsyncJob:
        return self._job(await self._c._json("GET", f"/v1/jobs/{job_id}"))

    async def list(
        self,
        *,
        status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> AsyncPage[AsyncJob]:
        return await self._c._page("/v1/jobs", self._job, {"status": status, "limit": limit, "after": after})

    def iter(
        self,
        *,
        status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[AsyncJob]:
        return _all(self.list(status=status, limit=page_size))

    async def history(self, job_id: str, *, after: int = 0) -> list[EpochRecord]:
        body = await self._c._json("GET", f"/v1/jobs/{job_id}/history", params={"after": after})
        return [EpochRecord.from_dict(d) for d in body.get("data", [])]

    async def cancel(self, job_id: str) -> AsyncJob:
        attempts = Attempts(self._c.retry, self._c._rng, replay_safe=True)
        try:
            response, _ = await self._c._send("POST", f"/v1/jobs/{job_id}/cancel", attempts=attempts)
        except ConflictError:
            if attempts.maybe_applied:
                job = await self.get(job_id)
                if job.status == "cancelled":
                    return job
            raise
        return self._job(_core.json_body(response))

    async def events(
        self, job_id: str, *, after: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[JobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async for event in self._stream(job_id, after=None if after is None else str(after), deadline=deadline):
                yield event
        except WaitTimeout:
            raise WaitTimeout(job_id, timeout, None) from None

    async def _stream(self, job_id: str, *, after: str | None, deadline: float | None) -> AsyncIterator[JobEvent]:
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
                async with c._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=_core.stream_timeout(c.timeout, remaining),
                ) as response:
                    refused = 0
                    if response.status_code != 200:
                        await response.aread()
                        failures += 1
                        delay = await self._stream_refusal(job_id, response, failures)
                    elif not _core.is_event_stream(response):
                        raise StreamUnavailable(
                            f"GET /v1/jobs/{job_id}/events answered {response.headers.get('content-type')!r}, "
                            "not text/event-stream"
                        )
                    else:
                        decoder = SSEDecoder(last_id)
                        received = 0
                        async for chunk in _then_none(response.aiter_bytes()):
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
                        if (await self.get(job_id)).is_terminal:
                            if not received:
                                return
                            delay = 0.0
                        failures += 1
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
            await c._sleep(delay)

    async def _stream_refusal(self, job_id: str, response: httpx.Response, failures: int) -> float:
        status = response.status_code
        if status == 404:
            await self.get(job_id)
            raise StreamUnavailable(f"this server has no event stream for jobs (404 from {response.url.path})")
        if status in (405, 406, 501):
            raise StreamUnavailable(f"the event stream is not available here ({status})")
        if status in _core.RETRY_STATUSES:
            retry_after = _core.parse_retry_after(response.headers.get("Retry-After"))
            return retry_after if retry_after is not None else self._c.retry.backoff_delay(failures, self._c._rng)
        raise error_from_response(response)

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_epoch: Callable[[EpochRecord], object] | None = None,
        on_status: Callable[[str], object] | None = None,
        poll_interval: float = 1.0,
    ) -> AsyncJob:
        """See `Jobs.wait`. The callbacks are plain functions, called from the event loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = Tracker(on_epoch, on_status)
        try:
            try:
                async for event in self._stream(job_id, after=None, deadline=deadline):
                    await self._take(job_id, event, tracker)
            except StreamUnavailable:
                await self._poll(job_id, tracker, deadline, poll_interval)
            job = await self.get(job_id)
            if not job.is_terminal:
                await self._poll(job_id, tracker, deadline, poll_interval)
                job = await self.get(job_id)
        except WaitTimeout:
            raise WaitTimeout(job_id, timeout, tracker.status) from None
        if job.epoch > tracker.last_epoch:
            for record in await self.history(job_id, after=tracker.last_epoch):
                tracker.epoch(record)
        tracker.status_seen(job.status)
        if job.status == "failed":
            raise JobFailed(job)
        return job

    async def _take(self, job_id: str, event: JobEvent, tracker: Tracker) -> None:
        record = event.epoch_record()
        if record is None:
            tracker.event(event)
            return
        if tracker.gap_before(record):
            for earlier in await self.history(job_id, after=tracker.last_epoch):
                if earlier.epoch < record.epoch:
                    tracker.epoch(earlier)
        tracker.epoch(record)

    async def _poll(self, job_id: str, tracker: Tracker, deadline: float | None, interval: float) -> None:
        while True:
            job = await self.get(job_id)
            tracker.status_seen(job.status)
            for record in await self.history(job_id, after=tracker.last_epoch):
                tracker.epoch(record)
            if job.is_terminal:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(job_id, None, tracker.status)
            await self._c._sleep(interval if remaining is None else min(interval, remaining))


class AsyncModels(_Resource):
    async def get(self, model_id: str) -> Model:
        return Model.from_dict(await self._c._json("GET", f"/v1/models/{model_id}"))

    async def list(self, *, limit: int = 20, after: str | None = None) -> AsyncPage[Model]:
        return await self._c._page("/v1/models", Model.from_dict, {"limit": limit, "after": after})

    def iter(self, *, page_size: int = 100) -> AsyncIterator[Model]:
        return _all(self.list(limit=page_size))

    @overload
    async def weights(self, model_id: str, *, format: Literal["json"] = "json") -> Weights: ...
    @overload
    async def weights(self, model_id: str, *, format: Literal["npz"]) -> bytes: ...

    async def weights(self, model_id: str, *, format: Literal["json", "npz"] = "json") -> Weights | bytes:
        response = await self._c.request("GET", f"/v1/models/{model_id}/weights", params={"format": format})
        return response.content if format == "npz" else Weights.from_dict(_core.json_body(response))

    async def predict(self, model_id: str, inputs: Sequence[Sequence[float]]) -> Prediction:
        body = {"inputs": [list(r) for r in inputs]}
        return Prediction.from_dict(await self._c._json("POST", f"/v1/models/{model_id}/predict", json=body))

    async def export(self, model_id: str, *, format: Literal["onnx"] = "onnx") -> bytes:
        response = await self._c.request("GET", f"/v1/models/{model_id}/export", params={"format": format})
        return response.content

    async def delete(self, model_id: str) -> None:
        await self._c.request("DELETE", f"/v1/models/{model_id}")
