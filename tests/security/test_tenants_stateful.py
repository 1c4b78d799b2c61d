"""Hypothesis state machine (acceptance check 9): three tenants create networks and datasets, submit and cancel jobs,
delete, read and list -- on their own objects and on each other's. Each tenant sees exactly its own objects; a
foreign id is always the unknown-id 404 and leaves the object untouched; one tenant's jobs never count against
another's quota."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, rule, run_state_machine_as_test

from app.db.session import Database
from app.main import create_app
from tests.api.conftest import copy_db, sqlite_url
from tests.security.conftest import OWNERS, SUMMARY, Recorder, Template, client_for, small_settings

MAX_ACTIVE = 2
NETWORK = {
    "input_dim": 2,
    "layers": [{"units": 4, "activation": "tanh"}, {"units": 2, "activation": "softmax"}],
    "loss": "cross_entropy",
}
DATASET = {"features": [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]], "targets": ["a", "b", "a", "b"]}
KINDS = ("networks", "datasets", "jobs")
# What the runs exercised, so the test can show it tried the cross-tenant paths at all.
SEEN = dict.fromkeys(("foreign_404", "quota_429", "cancelled", "deleted", "submitted", "list_checks"), 0)
owners = st.sampled_from(OWNERS)


class SyncClient:
    """A synchronous face on an in-process httpx.AsyncClient, driven through an anyio blocking portal."""

    def __init__(self, portal: Any, client: httpx.AsyncClient) -> None:
        self.portal, self.client = portal, client

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self.client.request, method, url, **kw))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)

    def close(self) -> None:
        self.portal.call(self.client.aclose)


class Tenants(RuleBasedStateMachine):
    template: Template  # set by the test before running

    networks = Bundle("networks")
    datasets = Bundle("datasets")
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="bp-tenants-"))
        url = sqlite_url(copy_db(self.template.path, self.tmp))
        self.db = Database(url)
        app = create_app(small_settings(url, max_active_jobs_per_owner=MAX_ACTIVE), db=self.db)
        self.recorder = Recorder()
        self._portal_cm = start_blocking_portal("asyncio")
        portal = self._portal_cm.__enter__()
        self.http = {o: SyncClient(portal, client_for(app, self.template.keys[o], self.recorder)) for o in OWNERS}
        # The model: each owner's live objects, in creation order (ids are random; an index into this order is not,
        # which keeps derandomized runs reproducible); jobs map id -> status.
        self.live: dict[str, dict[str, Any]] = {o: {"networks": {}, "datasets": {}, "jobs": {}} for o in OWNERS}

    # --- helpers ---------------------------------------------------------------------------------------------------

    def _not_found(self, r: Any, field: str | None = None) -> None:
        SEEN["foreign_404"] += 1
        assert r.status_code == 404, (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["type"] == "/problems/not-found", body
        if field is not None:
            assert body.get("field") == field, body

    def _active(self, owner: str) -> int:
        return sum(1 for s in self.live[owner]["jobs"].values() if s in ("queued", "running"))

    # --- rules -----------------------------------------------------------------------------------------------------

    @initialize(target=networks)
    def each_owner_starts_with_a_network(self) -> Any:
        self.check_all_lists()  # nothing visible at first
        return multiple(*(self.create_network(owner) for owner in OWNERS))

    @initialize(target=datasets)
    def each_owner_starts_with_a_dataset(self) -> Any:
        return multiple(*(self.create_dataset(owner) for owner in OWNERS))

    @rule(target=networks, owner=owners)
    def create_network(self, owner: str) -> tuple[str, str]:
        r = self.http[owner].post("/v1/networks", json=NETWORK)
        assert r.status_code == 201, r.text
        self.live[owner]["networks"][r.json()["id"]] = None
        return owner, r.json()["id"]

    @rule(target=datasets, owner=owners)
    def create_dataset(self, owner: str) -> tuple[str, str]:
        r = self.http[owner].post("/v1/datasets", json=DATASET)
        assert r.status_code == 201, r.text
        self.live[owner]["datasets"][r.json()["id"]] = None
        return owner, r.json()["id"]

    @rule(target=jobs, owner=owners, network=networks, dataset=datasets)
    def submit_job(self, owner: str, network: tuple[str, str], dataset: tuple[str, str]) -> Any:
        r = self.http[owner].post(
            "/v1/jobs", json={"network_id": network[1], "dataset_id": dataset[1], "epochs": 2, "batch_size": 2}
        )
        if network[1] not in self.live[owner]["networks"]:  # another owner's, or deleted
            self._not_found(r, "network_id")
            return multiple()
        if dataset[1] not in self.live[owner]["datasets"]:
            self._not_found(r, "dataset_id")
            return multiple()
        if self._active(owner) >= MAX_ACTIVE:
            assert r.status_code == 429, r.text
            assert "max_active_jobs_per_owner" in r.json()["detail"]
            assert int(r.headers["retry-after"]) > 0
            SEEN["quota_429"] += 1
            return multiple()
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        self.live[owner]["jobs"][job_id] = "queued"
        SEEN["submitted"] += 1
        return owner, job_id

    @rule(target=jobs, owner=owners, data=st.data())
    def submit_own_job(self, owner: str, data: st.DataObject) -> Any:
        """The common case, drawn directly: one of the owner's own live networks and datasets."""
        mine = self.live[owner]
        if not mine["networks"] or not mine["datasets"]:
            return multiple()
        network = data.draw(st.sampled_from(list(mine["networks"])), label="network")
        dataset = data.draw(st.sampled_from(list(mine["datasets"])), label="dataset")
        return self.submit_job(owner, (owner, network), (owner, dataset))

    @rule(owner=owners, job=jobs)
    def cancel_job(self, owner: str, job: tuple[str, str]) -> None:
        r = self.http[owner].post(f"/v1/jobs/{job[1]}/cancel")
        status = self.live[owner]["jobs"].get(job[1])
        if status is None:
            self._not_found(r)
        elif status == "queued":
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "cancelled"
            self.live[owner]["jobs"][job[1]] = "cancelled"
            SEEN["cancelled"] += 1
        else:
            assert r.status_code == 409, r.text

    @rule(owner=owners, obj=st.one_of(networks.map(lambda v: ("networks", v)), datasets.map(lambda v: ("datasets", v))))
    def delete(self, owner: str, obj: tuple[str, tuple[str, str]]) -> None:
        kind, (_, id_) = obj
        r = self.http[owner].delete(f"/v1/{kind}/{id_}")
        if id_ in self.live[owner][kind]:
            assert r.status_code == 204, r.text
            del self.live[owner][kind][id_]
            SEEN["deleted"] += 1
        else:
            self._not_found(r)

    @rule(owner=owners, obj=st.one_of(networks.map(lambda v: ("networks", v)), datasets.map(lambda v: ("datasets", v)),
                                      jobs.map(lambda v: ("jobs", v))))
    def read(self, owner: str, obj: tuple[str, tuple[str, str]]) -> None:
        kind, (_, id_) = obj
        r = self.http[owner].get(f"/v1/{kind}/{id_}")
        if id_ in self.live[owner][kind]:
            assert r.status_code == 200, r.text
            assert r.json()["id"] == id_
            if kind == "jobs":
                assert r.json()["status"] == self.live[owner]["jobs"][id_]
        else:
            self._not_found(r)

    @rule(owner=owners)
    def list_own(self, owner: str) -> None:
        self.check_lists(owner)

    # --- invariants ------------------------------------------------------------------------------------------------

    def check_lists(self, owner: str) -> None:
        SEEN["list_checks"] += 1
        for kind in KINDS:
            r = self.http[owner].get(f"/v1/{kind}", params={"limit": 100})
            assert r.status_code == 200, r.text
            page = r.json()
            assert page["has_more"] is False
            seen = {item["id"] for item in page["data"]}
            expected = set(self.live[owner][kind])
            assert seen == expected, (owner, kind, seen ^ expected)
            if kind == "jobs":
                statuses = {item["id"]: item["status"] for item in page["data"]}
                assert statuses == self.live[owner]["jobs"]

    def check_all_lists(self) -> None:
        for owner in OWNERS:
            self.check_lists(owner)

    def teardown(self) -> None:
        try:
            self.check_all_lists()
            bad = self.recorder.violations()
            assert not bad, bad[:5]
        finally:
            for c in self.http.values():
                c.close()
            self._portal_cm.__exit__(None, None, None)
            self.db.dispose()
            shutil.rmtree(self.tmp, ignore_errors=True)


def test_each_tenant_sees_exactly_its_own_objects(keys_template: Template) -> None:
    Tenants.template = keys_template
    run_state_machine_as_test(
        Tenants,
        settings=settings(
            max_examples=60,
            stateful_step_count=20,
            deadline=None,
            derandomize=True,  # a fixed, reproducible sequence of runs
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    SUMMARY.append(f"tenant state machine (60 runs x <= 20 steps): {SEEN}")
    assert all(SEEN.values()), SEEN
