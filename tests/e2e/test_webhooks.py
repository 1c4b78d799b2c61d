"""Webhooks end to end: `backprop serve` (its embedded worker sends them) and a receiver on loopback that fails the
first two attempts of every event. Each terminal job (succeeded, failed, cancelled) gets exactly one accepted and
verified delivery, and the job shows every attempt."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.test_server import IRIS_NETWORK, ok, upload_iris
from tests.support.server import Server, wait_until
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.integration


def test_one_verified_delivery_per_terminal_job_despite_two_failures(start_server, e2e_env):
    e2e_env.update(BACKPROP_WEBHOOK_RETRY_SECONDS="0.2", BACKPROP_WEBHOOK_POLL_SECONDS="0.1")
    server: Server = start_server()
    with server.client(server.printed_key()) as c:
        secret = ok(c.get("/v1/webhooks/secret"))["secret"]
        assert secret.startswith("whsec_")
        assert ok(c.get("/v1/webhooks/secret"))["secret"] == secret  # stable until rotated
        with Receiver(fail_first=2, secret=secret) as receiver:
            iris = upload_iris(c)
            classifier = ok(c.post("/v1/networks", json=IRIS_NETWORK), 201)
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 3))
            regression = ok(
                c.post("/v1/datasets", json={"features": x.tolist(), "targets": (x @ [1e3, 2e3, 3e3]).tolist()}), 201
            )
            regressor = ok(
                c.post(
                    "/v1/networks",
                    json={
                        "input_dim": 3,
                        "layers": [{"units": 4, "activation": "relu"}, {"units": 1, "activation": "linear"}],
                        "loss": "mse",
                    },
                ),
                201,
            )
            hook = {"webhook_url": receiver.url, "seed": 1}
            jobs = {
                "succeeded": ok(
                    c.post(
                        "/v1/jobs",
                        json={"network_id": classifier["id"], "dataset_id": iris["id"], "epochs": 20, **hook},
                    ),
                    202,
                ),
                "failed": ok(
                    c.post(
                        "/v1/jobs",
                        json={
                            "network_id": regressor["id"],
                            "dataset_id": regression["id"],
                            "epochs": 50,
                            "standardize": False,
                            "optimizer": {"name": "sgd", "learning_rate": 1000.0},
                            **hook,
                        },
                    ),
                    202,
                ),
                "cancelled": ok(
                    c.post(
                        "/v1/jobs",
                        json={
                            "network_id": classifier["id"],
                            "dataset_id": iris["id"],
                            "epochs": 5000,
                            "batch_size": 1,
                            **hook,
                        },
                    ),
                    202,
                ),
            }
            assert jobs["succeeded"]["webhook_url"] == receiver.url
            ok(c.post(f"/v1/jobs/{jobs['cancelled']['id']}/cancel"), 202)

            def all_delivered() -> bool:
                views = [ok(c.get(f"/v1/jobs/{j['id']}")) for j in jobs.values()]
                return all(
                    v["webhook_deliveries"] and v["webhook_deliveries"][0]["status"] == "delivered" for v in views
                )

            wait_until(all_delivered, timeout=90, what="every job's webhook to be delivered")
            accepted = receiver.accepted()
            received = list(receiver.received)

        for status, job in jobs.items():
            view = ok(c.get(f"/v1/jobs/{job['id']}"))
            assert view["status"] == status, view
            [delivery] = view["webhook_deliveries"]
            assert delivery["event"] == f"job.{status}"
            assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
            assert [a["attempt"] for a in delivery["attempts"]] == [1, 2, 3]
            assert delivery["delivered_at"] is not None
            posts = [r for r in received if r.event_id == delivery["id"]]
            assert [r.attempt for r in posts] == [1, 2, 3]
            assert all(r.verified for r in posts), "every attempt is signed with the owner's secret"
            assert len({r.body for r in posts}) == 1, "retries send the same body"
            [final] = [r for r in accepted if r.event_id == delivery["id"]]
            event = json.loads(final.body)
            assert event["id"] == delivery["id"]
            assert event["type"] == f"job.{status}"
            assert (event["job_id"], event["status"]) == (job["id"], status)
            assert event["model_id"] == view["model_id"]
            if status == "succeeded":
                assert event["model_id"]
                assert event["metrics"]["accuracy"] == view["metrics"]["accuracy"]
                assert event["error"] is None
            if status == "failed":
                assert event["error"]["code"] == "divergence"
        assert len(accepted) == 3, "exactly one accepted delivery per terminal job"
