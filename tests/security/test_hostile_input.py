"""Hostile values (DESIGN.md §8, acceptance check 10): each is a 422 naming the field path (never a 500); absurd
shapes and sizes are 4xx; nothing user-supplied is ever unpickled."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.conftest import network_body
from tests.security.conftest import Template, assert_problem

pytestmark = pytest.mark.anyio

NET = json.dumps(network_body(2, (4, 3)))
JOB_IDS = '"network_id": "<NET>", "dataset_id": "<DATA>"'  # alice's real ones, filled in by the test
LAYERS = '[{"units": 4, "activation": "tanh"}, {"units": 3, "activation": "softmax"}]'
BIG = str(10**30)


def net(**fields: str) -> str:
    """A network body as raw JSON text, with some fields replaced by raw JSON text."""
    base = {"input_dim": "2", "layers": LAYERS, "loss": '"cross_entropy"'}
    base.update(fields)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in base.items()) + "}"


def layer0(field: str, value: str) -> str:
    return net(layers=f'[{{"units": 4, "activation": "tanh", "{field}": {value}}}, {{"units": 3, '
                      '"activation": "softmax"}]')


def data(features: str = "[[0, 0], [1, 1]]", targets: str = '["a", "b"]', **extra: str) -> str:
    more = "".join(f', "{k}": {v}' for k, v in extra.items())
    return f'{{"features": {features}, "targets": {targets}{more}}}'


def job(**fields: str) -> str:
    more = "".join(f', "{k}": {v}' for k, v in fields.items())
    return f"{{{JOB_IDS}{more}}}"


def predict(inputs: str, **extra: str) -> str:
    more = "".join(f', "{k}": {v}' for k, v in extra.items())
    return f'{{"inputs": {inputs}{more}}}'


# (route, raw JSON text, the field path the 422 must name). Route "predict" is alice's real model's predict, and
# job bodies name her real network and dataset, so that values pydantic lets through reach the service's checks.
CASES: list[tuple[str, str, str | tuple[str, ...]]] = [
    # NaN / Infinity / -Infinity / 1e400 (raw JSON text; Python's json module accepts all four)
    ("networks", net(input_dim="NaN"), "input_dim"),
    ("networks", layer0("dropout", "NaN"), "layers[0].dropout"),
    ("networks", layer0("dropout", "Infinity"), "layers[0].dropout"),
    ("networks", layer0("dropout", "-Infinity"), "layers[0].dropout"),
    ("networks", layer0("dropout", "1e400"), "layers[0].dropout"),
    ("datasets", data("[[NaN, 0], [1, 1]]"), "features[0][0]"),
    ("datasets", data("[[0, Infinity], [1, 1]]"), "features[0][1]"),
    ("datasets", data("[[0, 0], [-Infinity, 1]]"), "features[1][0]"),
    ("datasets", data("[[0, 0], [1, 1e400]]"), "features[1][1]"),
    ("datasets", data(targets="[NaN, 1.5]"), "targets[0]"),
    ("datasets", data(targets="[[0.5], [Infinity]]"), "targets[1][0]"),
    ("jobs", job(optimizer='{"name": "adam", "learning_rate": NaN}'), "optimizer.learning_rate"),
    ("jobs", job(optimizer='{"name": "adam", "learning_rate": Infinity}'), "optimizer.learning_rate"),
    ("jobs", job(validation_split="-Infinity"), "validation_split"),
    ("jobs", job(clip_norm="1e400"), "clip_norm"),
    ("jobs", job(schedule='{"name": "step", "gamma": NaN}'), "schedule.gamma"),
    ("predict", predict("[[NaN, 0]]"), "inputs[0][0]"),
    ("predict", predict("[[0, Infinity]]"), "inputs[0][1]"),
    ("predict", predict("[[0, 0], [-Infinity, 0]]"), "inputs[1][0]"),
    ("predict", predict("[[1e400, 0]]"), "inputs[0][0]"),
    # ragged arrays
    ("datasets", data("[[0, 0], [1]]"), "features[1]"),
    ("datasets", data("[[0, 0], [1, 1, 1]]"), "features[1]"),
    ("datasets", data(targets='["a", "b", "c"]'), "targets"),
    ("datasets", data(targets="[[0.5, 1.0], [0.5]]"), ("targets", "targets[1]")),
    ("predict", predict("[[0, 0], [1]]"), "inputs[1]"),
    ("predict", predict("[[0, 0, 0]]"), "inputs[0]"),
    # strings where numbers belong
    ("networks", net(input_dim='"2"'), "input_dim"),
    ("networks", layer0("units", '"4"'), "layers[0].units"),
    ("datasets", data('[["0", 0], [1, 1]]'), "features[0][0]"),
    ("jobs", job(epochs='"10"'), "epochs"),
    ("jobs", job(batch_size='"8"'), "batch_size"),
    ("predict", predict('[["1", 0]]'), "inputs[0][0]"),
    # booleans where numbers belong
    ("networks", net(input_dim="true"), "input_dim"),
    ("networks", layer0("units", "false"), "layers[0].units"),
    ("datasets", data("[[true, 0], [1, 1]]"), "features[0][0]"),
    ("jobs", job(epochs="true"), "epochs"),
    ("jobs", job(seed="false"), "seed"),
    ("predict", predict("[[true, 0]]"), "inputs[0][0]"),
    # huge integers
    ("networks", net(input_dim=BIG), "input_dim"),
    ("networks", layer0("units", BIG), "layers[0].units"),
    ("jobs", job(epochs=BIG), "epochs"),
    ("jobs", job(batch_size=BIG), "batch_size"),
    ("jobs", job(seed=BIG), "seed"),
    ("jobs", job(early_stopping=f'{{"patience": {BIG}}}'), "early_stopping.patience"),
    # empty arrays
    ("networks", net(layers="[]"), "layers"),
    ("datasets", data("[]", "[]"), ("features", "targets")),
    ("datasets", data("[[], []]"), ("features[0]",)),
    ("datasets", data(targets="[]"), "targets"),
    ("predict", predict("[]"), "inputs"),
    ("predict", predict("[[]]"), "inputs[0]"),
    # unknown fields
    ("networks", net(color='"red"'), "color"),
    ("networks", layer0("bogus", "1"), "layers[0].bogus"),
    ("datasets", data(extra="1"), "extra"),
    ("jobs", job(learning_rate="0.1"), "learning_rate"),
    ("jobs", job(optimizer='{"name": "adam", "bogus": 1}'), "optimizer.bogus"),
    ("predict", predict("[[0, 0]]", extra="1"), "extra"),
    # null where a value is needed
    ("networks", net(input_dim="null"), "input_dim"),
    ("networks", net(loss="null"), "loss"),
    ("networks", net(layers="[null]"), "layers[0]"),
    ("datasets", data("null"), "features"),
    ("datasets", data("[[0, null], [1, 1]]"), "features[0][1]"),
    ("jobs", '{"network_id": null, "dataset_id": "0a9b8c7d6f1c0d2a9b8e4f7a8c3d2e1f"}', "network_id"),
    ("jobs", job(epochs="null"), "epochs"),
    ("predict", predict("null"), "inputs"),
    ("predict", predict("[[0, null]]"), "inputs[0][1]"),
    # wrong JSON types for ids and objects
    ("jobs", '{"network_id": 12, "dataset_id": ["x"]}', ("network_id", "dataset_id")),
    ("jobs", job(optimizer="[]"), "optimizer"),
]
CASE_IDS = [f"{i:02d}-{route}-{field if isinstance(field, str) else '|'.join(field)}"
            for i, (route, _, field) in enumerate(CASES)]


@pytest.fixture
def template(world_template: Template) -> Template:
    return world_template


def _url(route: str, ids: dict[str, str]) -> str:
    return f"/v1/models/{ids['model']}/predict" if route == "predict" else f"/v1/{route}"


@pytest.mark.parametrize(("route", "raw", "field"), CASES, ids=CASE_IDS)
async def test_hostile_value_is_a_422_naming_the_field(
    alice: httpx.AsyncClient, ids: dict[str, str], route: str, raw: str, field: str | tuple[str, ...]
):
    raw = raw.replace("<NET>", ids["network"]).replace("<DATA>", ids["dataset"])
    r = await alice.post(_url(route, ids), content=raw.encode(), headers={"content-type": "application/json"})
    body = assert_problem(r, 422)
    wanted = (field,) if isinstance(field, str) else field
    named = [body.get("field")] + [e.get("field") for e in body.get("errors") or []]
    assert any(w in named for w in wanted), (wanted, body)
    assert body.get("errors"), body


@pytest.mark.parametrize("route", ["networks", "datasets", "jobs", "predict"])
async def test_deeply_nested_json_is_a_4xx(alice: httpx.AsyncClient, ids: dict[str, str], route: str):
    deep = "[" * 10_000 + "]" * 10_000
    key = {"networks": "layers", "datasets": "features", "jobs": "optimizer", "predict": "inputs"}[route]
    raw = f'{{"{key}": {deep}}}'
    r = await alice.post(_url(route, ids), content=raw.encode(), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert_problem(r, r.status_code)
    # A deep object too, not only lists.
    raw = '{"a": ' * 10_000 + "1" + "}" * 10_000
    r = await alice.post(_url(route, ids), content=raw.encode(), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])


async def test_a_5_mb_name_is_a_4xx(alice: httpx.AsyncClient):
    name = "n" * (5 * 1024 * 1024)
    r = await alice.post("/v1/networks", json={**network_body(2, (3,)), "name": name})
    assert 400 <= r.status_code < 500, r.status_code
    assert_problem(r, r.status_code)
    r = await alice.post("/v1/datasets", json={"features": [[0], [1]], "targets": ["a", "b"], "name": name})
    assert 400 <= r.status_code < 500, r.status_code
    r = await alice.post(
        "/v1/datasets", files={"file": ("d.csv", b"x,y\n0,a\n1,b\n", "text/csv")}, data={"name": name}
    )
    assert 400 <= r.status_code < 500, r.status_code
    assert_problem(r, r.status_code)
    assert name[:1000] not in r.text  # the answer does not echo the value back


async def test_multipart_abuse_is_a_4xx(alice: httpx.AsyncClient):
    csv = b"x,y\n0,a\n1,b\n"
    two_files = [("file", ("a.csv", csv, "text/csv")), ("file", ("b.csv", csv, "text/csv"))]
    r = await alice.post("/v1/datasets", files=two_files)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert_problem(r, r.status_code)
    many_fields = {f"f{i}": "x" for i in range(2000)}
    r = await alice.post("/v1/datasets", files={"file": ("a.csv", csv, "text/csv")}, data=many_fields)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert_problem(r, r.status_code)
    r = await alice.post("/v1/datasets", data={"target": "y"})  # no file part at all
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert_problem(r, r.status_code)
    r = await alice.post(
        "/v1/datasets", content=b"--nope\r\n\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert_problem(r, r.status_code)


class _Boom:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


async def test_nothing_user_supplied_is_unpickled(alice: httpx.AsyncClient, tmp_path: Path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(marker))
    buf = io.BytesIO()
    np.savez(buf, x=np.array([_Boom(marker)], dtype=object), y=np.zeros(1))  # needs allow_pickle to load
    npz = buf.getvalue()
    uploads = [
        ("data.csv", payload, "text/csv"),
        ("data.pkl", payload, "application/octet-stream"),
        ("data.npz", npz, "application/octet-stream"),
        ("data.csv", npz, "text/csv"),
    ]
    for filename, content, ctype in uploads:
        r = await alice.post("/v1/datasets", files={"file": (filename, content, ctype)})
        assert 400 <= r.status_code < 500, (filename, r.status_code, r.text)
        assert_problem(r, r.status_code)
    # Raw bodies in those formats, sent as JSON or as a binary type.
    for content, ctype in ((payload, "application/octet-stream"), (npz, "application/x-npz"),
                           (payload, "application/json"), (npz, "application/json")):
        for path in ("/v1/datasets", "/v1/networks"):
            r = await alice.post(path, content=content, headers={"content-type": ctype})
            assert 400 <= r.status_code < 500, (path, ctype, r.status_code, r.text)
            assert_problem(r, r.status_code)
    assert not marker.exists(), "a user-supplied pickle was loaded"


async def test_control_characters_and_odd_text_are_handled(alice: httpx.AsyncClient):
    for name in ("\x00", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "\u202e" * 10, ""):
        r = await alice.post("/v1/networks", json={**network_body(2, (3,)), "name": name})
        assert r.status_code in (201, 422), (name, r.status_code, r.text)
    r = await alice.post("/v1/networks", content=b'{"name": "\\ud800", "input_dim": 2}',
                         headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    r = await alice.post("/v1/datasets", files={"file": ("d.csv", b"x,y\n\xff\xfe,a\n1,b\n", "text/csv")})
    assert_problem(r, 422)
