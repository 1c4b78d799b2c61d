"""Data-parallel jobs in the service: a job trained in two processes (BACKPROP_TRAIN_PROCESSES=2) whose training
child is SIGKILLed mid-training loses its helper process with it, resumes from its checkpoint and ends bit for bit
on the weights of the same two-way training run uninterrupted in one process (the engine's split, not the number of
processes, defines the result)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from app.api.schemas import JobCreate, NetworkCreate
from app.db.models import Dataset, Job, Network
from app.engine import NetworkSpec, TrainConfig, Trainer
from app.engine.parallel import can_fork_replicas, cpus
from app.services import resources as svc
from app.services.dataset_codec import ParsedDataset
from app.services.resources import ENGINE_FIELDS, load_dataset_arrays, training_targets
from tests.durability.conftest import (
    LIMITS,
    OWNER,
    Env,
    alive,
    audit,
    children_of,
    epoch_records,
    final_params,
    get_job,
    wait_for,
)

pytestmark = pytest.mark.integration

# Big enough for the engine to split (batch x weights >= 2^20: 32 x 41,472); ~3-5 s of training on 2 cores.
NETWORK = {
    "input_dim": 32,
    "layers": [{"units": 256, "activation": "relu"}, {"units": 128, "activation": "relu"},
               {"units": 4, "activation": "softmax"}],
    "loss": "cross_entropy",
}
JOB = {"epochs": 300, "batch_size": 32, "optimizer": {"name": "adam", "learning_rate": 0.001}, "seed": 7,
       "validation_split": 0.1}


def dataset() -> ParsedDataset:
    rng = np.random.default_rng(2024)
    x = rng.normal(size=(2000, 32))
    y = (x[:, :4] @ rng.normal(size=(4, 4)) + 0.5 * rng.normal(size=(2000, 4))).argmax(axis=1)
    return ParsedDataset(x=x, y=y, task="classification", classes=["a", "b", "c", "d"])


def reference(env: Env, job_id: str) -> tuple[np.ndarray, list[float]]:
    """The job trained uninterrupted in this process, split two ways as the service split it."""
    with env.db.read_session() as s:
        job = s.get(Job, job_id)
        network, ds = s.get(Network, job.network_id), s.get(Dataset, job.dataset_id)
        spec = NetworkSpec.from_dict(network.spec)
        config = TrainConfig.from_dict({k: v for k, v in job.spec.items() if k in ENGINE_FIELDS})
        x, y_stored = load_dataset_arrays(s, ds)
        y = training_targets(spec, str(ds.kind), ds.classes, y_stored, ds.n_targets)
    with Trainer(spec, config, x, y, replicas=2, processes=1) as trainer:
        result = trainer.fit()
        return trainer.net.params.copy(), [r["loss"] for r in result.history]


def test_a_two_process_job_killed_mid_training_resumes_bit_exact(env: Env):
    helpers_run = can_fork_replicas() and cpus() >= 2
    env.cluster.env["BACKPROP_TRAIN_PROCESSES"] = "2"
    env.cluster.env["BACKPROP_CHECKPOINT_SECONDS"] = "0.2"     # checkpoints mid-epoch too, every 0.2 s
    worker = env.cluster.start()
    with env.db.session() as s:
        net, _ = svc.create_network(s, owner=OWNER, body=NetworkCreate.model_validate(NETWORK).model_dump(
            exclude_none=True), limits=LIMITS)
        ds = svc.create_dataset(s, owner=OWNER, parsed=dataset(), name="parallel", limits=LIMITS)
        body = JobCreate.model_validate({"network_id": net.id, "dataset_id": ds.id, **JOB}).model_dump()
        job, _ = svc.submit_job(s, owner=OWNER, body=body, limits=LIMITS)
        job_id = job.id
    # Past the first few epochs' checkpoints, kill the training child (its helper must go with it).
    wait_for(lambda: [a for a in audit(env.db, job_id) if a["epoch"] >= 20], timeout=60,
             what="a checkpoint after epoch 20")
    running = get_job(env.db, job_id)
    assert running.status == "running", running.status
    child = worker.training_child()
    helpers = children_of(child)
    assert len(helpers) == (1 if helpers_run else 0), helpers
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: not alive(child) and not any(alive(h) for h in helpers), timeout=10,
             what="the training child and its helper to die")
    wait_for(lambda: get_job(env.db, job_id).status in ("succeeded", "failed", "cancelled"), timeout=120,
             what="the job to finish")
    done = get_job(env.db, job_id)
    assert done.status == "succeeded", (done.status, done.error_code, done.error)
    assert {a["attempt"] for a in audit(env.db, job_id)} >= {1, 2}, "the job did not resume in a second attempt"
    params, losses = reference(env, job_id)
    assert np.array_equal(final_params(env.db, job_id), params)
    assert [r[1] for r in epoch_records(env.db, job_id)] == losses
