import httpx
import pytest

from tests.api.conftest import Api, assert_problem, network_body, random_id

pytestmark = pytest.mark.anyio


async def test_create_network_returns_201_with_id_and_shape(client: httpx.AsyncClient):
    body = {
        "name": "iris-mlp",
        "input_dim": 4,
        "layers": [{"units": 16, "activation": "relu", "dropout": 0.1}, {"units": 3, "activation": "softmax"}],
        "loss": "cross_entropy",
    }
    r = await client.post("/v1/networks", json=body)
    assert r.status_code == 201, r.text
    net = r.json()
    assert len(net["id"]) == 32
    assert net["name"] == "iris-mlp"
    assert net["input_dim"] == 4
    assert net["output_dim"] == 3
    assert net["n_params"] == 4 * 16 + 16 + 16 * 3 + 3
    assert net["task"] == "classification"
    assert [(layer["units"], layer["activation"]) for layer in net["layers"]] == [(16, "relu"), (3, "softmax")]
    assert net["layers"][0]["dropout"] == pytest.approx(0.1)
    assert net["loss"] == "cross_entropy"


async def test_regression_network_has_regression_task(client: httpx.AsyncClient):
    body = {"input_dim": 3, "layers": [{"units": 4}, {"units": 2, "activation": "linear"}], "loss": "mse"}
    r = await client.post("/v1/networks", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "regression"
    assert r.json()["layers"][0]["activation"] == "relu"  # the documented default


async def test_get_network_returns_what_was_created(api: Api, client: httpx.AsyncClient):
    created = await api.network(name="n1")
    r = await client.get(f"/v1/networks/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created


async def test_delete_network_then_it_is_gone(api: Api, client: httpx.AsyncClient):
    net = await api.network()
    r = await client.delete(f"/v1/networks/{net['id']}")
    assert r.status_code == 204
    assert r.content == b""
    assert_problem(await client.get(f"/v1/networks/{net['id']}"), 404, net["id"])
    assert_problem(await client.delete(f"/v1/networks/{net['id']}"), 404, net["id"])
    assert (await client.get("/v1/networks")).json()["data"] == []


async def test_get_missing_network_is_404(client: httpx.AsyncClient):
    missing = random_id()
    assert_problem(await client.get(f"/v1/networks/{missing}"), 404, missing)


async def test_list_networks_newest_first(api: Api, client: httpx.AsyncClient):
    ids = [(await api.network(name=f"n{i}"))["id"] for i in range(3)]
    r = await client.get("/v1/networks")
    assert r.status_code == 200
    page = r.json()
    assert [n["id"] for n in page["data"]] == ids[::-1]
    assert page["has_more"] is False


async def test_list_networks_paginates_with_limit_and_after(api: Api, client: httpx.AsyncClient):
    ids = [(await api.network(name=f"n{i}"))["id"] for i in range(7)]
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 3} if after is None else {"limit": 3, "after": after}
        page = (await client.get("/v1/networks", params=params)).json()
        pages += 1
        assert len(page["data"]) <= 3
        seen += [n["id"] for n in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
        assert pages < 10
    assert pages == 3
    assert seen == ids[::-1]


async def test_list_default_limit_is_20(api: Api, client: httpx.AsyncClient):
    for i in range(21):
        await api.network(name=f"n{i}")
    page = (await client.get("/v1/networks")).json()
    assert len(page["data"]) == 20
    assert page["has_more"] is True


@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_list_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: int):
    assert_problem(await client.get("/v1/networks", params={"limit": limit}), 422, "limit", field="limit")


async def test_list_limit_100_is_allowed(client: httpx.AsyncClient):
    assert (await client.get("/v1/networks", params={"limit": 100})).status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        pytest.param(
            network_body(units=(4, 3)) | {"layers": [{"units": 4, "activation": "swish"}, {"units": 3}]},
            "layers[0].activation",
            "relu",
            id="unknown activation",
        ),
        pytest.param(network_body() | {"input_dim": "2"}, "input_dim", "integer", id="string input_dim"),
        pytest.param(network_body() | {"input_dim": 0}, "input_dim", "greater than", id="zero input_dim"),
        pytest.param(
            network_body() | {"layers": [{"units": "8", "activation": "softmax"}]},
            "layers[0].units",
            "integer",
            id="string units",
        ),
        pytest.param(
            network_body() | {"layers": [{"units": 0, "activation": "softmax"}]},
            "layers[0].units",
            "greater than",
            id="zero units",
        ),
        pytest.param(network_body() | {"layers": []}, "layers", "at least 1", id="no layers"),
        pytest.param(network_body() | {"loss": "hinge"}, "loss", "cross_entropy", id="unknown loss"),
        pytest.param({"input_dim": 2, "layers": [{"units": 2}]}, "loss", "required", id="missing loss"),
        pytest.param(network_body() | {"colour": "red"}, "colour", "extra", id="unknown field"),
        pytest.param(
            {"input_dim": 2, "layers": [{"units": 3, "activation": "relu"}], "loss": "cross_entropy"},
            "layers[0].activation",
            "softmax",
            id="cross_entropy without softmax",
        ),
        pytest.param(
            {
                "input_dim": 2,
                "layers": [{"units": 3, "activation": "softmax"}, {"units": 3, "activation": "softmax"}],
                "loss": "cross_entropy",
            },
            "layers[0].activation",
            "output layer",
            id="softmax in a hidden layer",
        ),
        pytest.param(
            network_body() | {"layers": [{"units": 3, "activation": "softmax", "dropout": 1.0}]},
            "layers[0].dropout",
            "less than 1",
            id="dropout 1",
        ),
    ],
)
async def test_invalid_network_is_422_naming_the_field(client: httpx.AsyncClient, body: dict, field: str, needle: str):
    r = await client.post("/v1/networks", json=body)
    problem = assert_problem(r, 422, needle, field=field)
    assert any(e["field"] == field for e in problem["errors"])


async def test_network_over_the_parameter_limit_is_422(client: httpx.AsyncClient):
    body = {"input_dim": 100_000, "layers": [{"units": 1000, "activation": "linear"}], "loss": "mse"}
    assert_problem(await client.post("/v1/networks", json=body), 422, "max_params", field="layers")


async def test_network_body_that_is_not_an_object_is_422(client: httpx.AsyncClient):
    assert_problem(await client.post("/v1/networks", json=[1, 2, 3]), 422)


async def test_idempotency_key_replays_the_same_network(client: httpx.AsyncClient, other: httpx.AsyncClient):
    key = {"Idempotency-Key": f"net-{random_id()}"}
    first = await client.post("/v1/networks", json=network_body(), headers=key)
    again = await client.post("/v1/networks", json=network_body(), headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert first.headers["location"] == f"/v1/networks/{first.json()['id']}"
    listed = (await client.get("/v1/networks", params={"limit": 100})).json()["data"]
    assert [n["id"] for n in listed].count(first.json()["id"]) == 1
    assert len(listed) == 1
    # The same key with another body is refused; another owner's key space is their own.
    assert_problem(
        await client.post("/v1/networks", json=network_body(units=(4, 3)), headers=key), 422, field="Idempotency-Key"
    )
    theirs = await other.post("/v1/networks", json=network_body(), headers=key)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]
