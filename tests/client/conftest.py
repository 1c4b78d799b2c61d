"""Client fixtures: one live `backprop serve` (API + worker, SQLite in a temp dir) shared by the client tests, a fresh
tenant (API key) per test that needs a clean slate, and small seeded datasets as CSV.

The server is the shared `tests.support.server.Server` (what `start_server` runs), started once per session rather
than per test: starting one takes seconds, and the tests do not change its state beyond their own tenants' objects.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from app.client import AsyncClient, Client
from tests.support.server import Server, backprop_command

SPECIES = ["setosa", "versicolor", "virginica"]
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass
class Live:
    server: Server
    key: str
    db_url: str
    workdir: Path

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None = None, **kwargs: object) -> Client:
        return Client(self.url, key or self.key, **kwargs)  # type: ignore[arg-type]

    def async_client(self, key: str | None = None, **kwargs: object) -> AsyncClient:
        return AsyncClient(self.url, key or self.key, **kwargs)  # type: ignore[arg-type]

    def new_key(self, owner: str) -> str:
        """An API key for a new tenant, who starts with no objects at all."""
        from app.db.session import Database
        from app.services import keys

        db = Database(self.db_url)
        try:
            with db.session() as s:
                _, key = keys.create_key(s, owner=owner, name=owner)
        finally:
            db.dispose()
        return key


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("client-live")
    db_url = f"sqlite:///{workdir / 'client.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env.update(
        BACKPROP_DATABASE_URL=db_url,
        BACKPROP_DATA_DIR=str(workdir / "var"),
        BACKPROP_WORKERS="1",
        BACKPROP_POLL_SECONDS="0.05",
        BACKPROP_LOG_LEVEL="warning",
        # The client's variables in the server's environment too: Settings must ignore them.
        BACKPROP_URL="http://127.0.0.1:1",
        BACKPROP_API_KEY="bp_live_ignored0_by_the_server",
    )
    result = subprocess.run(
        [*backprop_command(), "migrate"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    server = Server(workdir, env)
    try:
        server.start()
        yield Live(server=server, key=server.printed_key(), db_url=db_url, workdir=workdir)
    finally:
        server.kill()


@pytest.fixture
def tenant(live: Live, request: pytest.FixtureRequest) -> str:
    """A fresh tenant's API key (named after the test)."""
    return live.new_key(f"t-{request.node.name[:40]}-{os.urandom(3).hex()}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def iris_rows() -> tuple[list[list[float]], list[str]]:
    iris = load_iris()
    return iris.data.tolist(), [SPECIES[i] for i in iris.target]


def to_csv(header: list[str] | None, rows: list[list[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def iris_csv() -> bytes:
    features, species = iris_rows()
    return to_csv([*IRIS_COLUMNS, "species"], [[*f, s] for f, s in zip(features, species, strict=True)]).encode()


def binary_csv(n: int = 120, seed: int = 7) -> bytes:
    """Two separable blobs labelled "no"/"yes"."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3)) + 3.0 * y[:, None]
    rows = [[*map(float, r), "yes" if t else "no"] for r, t in zip(x.round(4), y, strict=True)]
    return to_csv(["a", "b", "c", "label"], rows).encode()


def regression_csv(n: int = 100, seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = 1.5 * x[:, 0] - 0.5 * x[:, 1] + 0.1
    rows = [[*map(float, r), float(t)] for r, t in zip(x.round(4), y.round(4), strict=True)]
    return to_csv(["x1", "x2", "y"], rows).encode()


IRIS_NETWORK = {
    "input_dim": 4,
    "layers": [{"units": 8, "activation": "tanh"}, {"units": 3, "activation": "softmax"}],
    "loss": "cross_entropy",
}
IRIS_JOB = {"epochs": 20, "batch_size": 16, "learning_rate": 0.01, "validation_split": 0.2, "seed": 5}
