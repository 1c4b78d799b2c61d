import httpx
import pytest

from tests.api.conftest import Api, assert_problem, blobs, blobs_csv, random_id

pytestmark = pytest.mark.anyio

IRIS_LIKE = b"""sepal_length,sepal_width,petal_length,petal_width,species
5.1,3.5,1.4,0.2,setosa
7.0,3.2,4.7,1.4,versicolor
6.3,3.3,6.0,2.5,virginica
4.9,3.0,1.4,0.2,setosa
"""


async def upload(client: httpx.AsyncClient, content: bytes, **form: str) -> httpx.Response:
    return await client.post("/v1/datasets", files={"file": ("data.csv", content, "text/csv")}, data=form)


# --- JSON ----------------------------------------------------------------------------------------------------------


async def test_json_dataset_with_string_labels_is_one_hot_in_sorted_order(client: httpx.AsyncClient):
    features, labels = blobs(2)
    r = await client.post("/v1/datasets", json={"name": "blobs", "features": features, "targets": labels})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/v1/datasets/{ds['id']}"
    assert ds["name"] == "blobs"
    assert (ds["n_samples"], ds["n_features"], ds["n_targets"]) == (6, 2, 3)
    assert ds["task"] == "classification"
    assert ds["classes"] == ["blue", "green", "red"]
    assert len(ds["sha256"]) == 64
    assert int(ds["sha256"], 16) >= 0
    assert ds["nbytes"] > 0


async def test_json_dataset_with_int_labels_keeps_int_classes(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", json={"features": [[0], [1], [2], [3]], "targets": [30, 10, 20, 10]})
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == [10, 20, 30]
    assert r.json()["task"] == "classification"


async def test_json_dataset_with_bool_labels(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", json={"features": [[0], [1]], "targets": [True, False]})
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == [False, True]


async def test_json_dataset_with_float_targets_is_regression(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", json={"features": [[0, 1], [1, 2], [2, 3]], "targets": [0.5, 1, 2.5]})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["task"] == "regression"
    assert ds["classes"] is None
    assert ds["n_targets"] == 1


async def test_json_dataset_with_target_rows_is_multi_output_regression(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", json={"features": [[0], [1]], "targets": [[1.0, 2.0], [3.0, 4.0]]})
    assert r.status_code == 201, r.text
    assert (r.json()["task"], r.json()["n_targets"]) == ("regression", 2)


async def test_json_dataset_task_overrides_int_labels(client: httpx.AsyncClient):
    body = {"features": [[0], [1], [2]], "targets": [1, 2, 3], "task": "regression"}
    r = await client.post("/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["task"], r.json()["classes"]) == ("regression", None)


async def test_json_dataset_keeps_feature_names(client: httpx.AsyncClient):
    body = {"features": [[0, 1], [1, 0]], "targets": ["a", "b"], "feature_names": ["left", "right"]}
    r = await client.post("/v1/datasets", json=body)
    assert r.json()["feature_names"] == ["left", "right"]


async def test_same_content_has_the_same_sha256(client: httpx.AsyncClient):
    body = {"features": [[0, 1], [1, 0]], "targets": ["a", "b"]}
    first = (await client.post("/v1/datasets", json=body | {"name": "one"})).json()
    second = (await client.post("/v1/datasets", json=body | {"name": "two"})).json()
    third = (await client.post("/v1/datasets", json=body | {"targets": ["b", "a"]})).json()
    assert first["id"] != second["id"]
    assert first["sha256"] == second["sha256"] != third["sha256"]


# --- CSV -----------------------------------------------------------------------------------------------------------


async def test_csv_upload_with_header_and_string_labels(client: httpx.AsyncClient):
    r = await upload(client, IRIS_LIKE, target="species", name="iris-ish")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "iris-ish"
    assert (ds["n_samples"], ds["n_features"], ds["n_targets"]) == (4, 4, 3)
    assert ds["classes"] == ["setosa", "versicolor", "virginica"]
    assert ds["feature_names"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert ds["target_names"] == ["species"]


async def test_csv_target_defaults_to_the_last_column(client: httpx.AsyncClient):
    r = await upload(client, IRIS_LIKE)
    assert r.status_code == 201, r.text
    assert r.json()["target_names"] == ["species"]


async def test_csv_target_by_name_in_the_middle(client: httpx.AsyncClient):
    r = await upload(client, b"a,label,b\n1,x,2\n3,y,4\n5,x,6\n", target="label")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["feature_names"] == ["a", "b"]
    assert ds["classes"] == ["x", "y"]


async def test_csv_target_by_index(client: httpx.AsyncClient):
    r = await upload(client, b"cat,1.5,2.5\ndog,3.5,4.5\ncat,5.5,6.5\n", target="0")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["classes"] == ["cat", "dog"]
    assert ds["n_features"] == 2
    assert ds["feature_names"] == ["1", "2"]  # no header: columns are named by index
    assert ds["target_names"] == ["0"]


async def test_csv_without_header_is_detected(client: httpx.AsyncClient):
    r = await upload(client, b"1,2,0.5\n3,4,1.5\n5,6,2.5\n")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_samples"] == 3  # the first line is data
    assert ds["task"] == "regression"
    assert ds["feature_names"] == ["0", "1"]


async def test_csv_header_is_detected_when_labels_are_text(client: httpx.AsyncClient):
    r = await upload(client, b"f1,f2,kind\n1,2,a\n3,4,b\n")
    assert r.status_code == 201, r.text
    assert r.json()["n_samples"] == 2
    assert r.json()["feature_names"] == ["f1", "f2"]


async def test_csv_header_true_uses_the_first_line_as_names(client: httpx.AsyncClient):
    r = await upload(client, b"10,20,30\n1,2,0.5\n3,4,1.5\n", header="true", target="30")
    assert r.status_code == 201, r.text
    assert r.json()["n_samples"] == 2
    assert r.json()["feature_names"] == ["10", "20"]


async def test_csv_header_false_with_a_text_first_line_names_the_line(client: httpx.AsyncClient):
    r = await upload(client, b"a,b,c\n1,2,0.5\n", header="false")
    assert_problem(r, 422, "line 1", "'a'", field="file")


async def test_csv_several_target_columns_are_multi_output_regression(client: httpx.AsyncClient):
    r = await upload(client, b"x,y1,y2\n1,2,3\n4,5,6\n", target="y1,y2")
    assert r.status_code == 201, r.text
    assert (r.json()["task"], r.json()["n_targets"]) == ("regression", 2)


async def test_csv_task_regression_on_an_int_column(client: httpx.AsyncClient):
    r = await upload(client, b"x,y\n1,2\n2,4\n3,6\n", task="regression")
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "regression"


async def test_csv_int_column_is_classification_by_default(client: httpx.AsyncClient):
    r = await upload(client, b"x,y\n1,2\n2,4\n3,2\n")
    assert r.json()["classes"] == [2, 4]


async def test_csv_and_json_of_the_same_data_agree(client: httpx.AsyncClient):
    features, labels = blobs(3)
    from_json = (await client.post("/v1/datasets", json={"features": features, "targets": labels})).json()
    from_csv = (await upload(client, blobs_csv(3), target="color")).json()
    assert from_csv["sha256"] == from_json["sha256"]
    assert from_csv["classes"] == from_json["classes"]


@pytest.mark.parametrize(
    ("content", "form", "field", "needles"),
    [
        pytest.param(b"", {}, "file", ("empty",), id="empty file"),
        pytest.param(b"\n\n", {}, "file", ("empty",), id="blank lines"),
        pytest.param(b"a,b,label\n", {}, "file", ("no data rows",), id="header only"),
        pytest.param(IRIS_LIKE, {"target": "colour"}, "target", ("'colour'", "species"), id="unknown target"),
        pytest.param(IRIS_LIKE, {"target": "9"}, "target", ("'9'",), id="target index out of range"),
        pytest.param(b"f,a,b\n0,1,x\n2,3,y\n", {"target": "a,b"}, "target", ("numeric",), id="text in targets"),
        pytest.param(b"x,label\n1,a\n2,b\n", {"target": "x,label"}, "target", ("no feature",), id="no features"),
        pytest.param(b"x,y,label\n1,2,a\n3,oops,b\n", {}, "file", ("line 3", "'y'", "oops"), id="text feature"),
        pytest.param(b"x,y,label\n1,2,a\n3,b\n", {}, "file", ("line 3", "2 columns", "expected 3"), id="ragged"),
        pytest.param(b"x,y,label\n1,2,a\nnan,4,b\n", {}, "file", ("NaN",), id="nan"),
        pytest.param(b"x,y,label\n1,2,a\ninf,4,b\n", {}, "file", ("Inf",), id="inf"),
        pytest.param(b"x,label\n1,a\n2,a\n", {}, "target", ("2 distinct classes",), id="one class"),
        pytest.param(b"x,y\n\xff\xfe,1\n", {}, "file", ("UTF-8",), id="not utf-8"),
        pytest.param(IRIS_LIKE, {"header": "maybe"}, "header", ("header",), id="bad header flag"),
        pytest.param(IRIS_LIKE, {"task": "clustering"}, "task", ("task",), id="bad task"),
        pytest.param(b"x,y\n1,2.5\n2,3.5\n", {"task": "classification"}, "target[0]", ("2.5",), id="float labels"),
    ],
)
async def test_bad_csv_upload_is_422_naming_the_problem(
    client: httpx.AsyncClient, content: bytes, form: dict, field: str, needles: tuple[str, ...]
):
    assert_problem(await upload(client, content, **form), 422, *needles, field=field)


async def test_csv_with_an_oversized_cell_is_a_4xx_not_a_500(client: httpx.AsyncClient):
    # Python's csv module refuses fields over 128 KiB with csv.Error, which must not escape as a 500.
    content = b"x,label\n1,a\n" + b"9" * 200_000 + b",b\n"
    r = await upload(client, content)
    assert r.status_code != 500
    assert_problem(r, 422, "line 3", field="file")


async def test_multipart_without_a_file_part_is_422(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", files={"other": ("x.csv", b"a,b\n1,2\n", "text/csv")})
    assert_problem(r, 422, "file", field="file")


# --- bad JSON datasets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "needles"),
    [
        pytest.param({"features": [], "targets": []}, "features", ("at least 1",), id="empty dataset"),
        pytest.param({"features": [[]], "targets": [1.0]}, "features[0]", ("at least one feature",), id="empty row"),
        pytest.param(
            {"features": [[1, 2], [3], [4, 5]], "targets": [1.0, 2.0, 3.0]},
            "features[1]",
            ("2 features", "row 1 has 1"),
            id="ragged rows",
        ),
        pytest.param(
            {"features": [[1, 2], ["3", 4]], "targets": [1.0, 2.0]}, "features[1][0]", ("number",), id="string feature"
        ),
        pytest.param(
            {"features": [[1, 2], [True, 4]], "targets": [1.0, 2.0]}, "features[1][0]", ("number",), id="bool feature"
        ),
        pytest.param(
            {"features": [[1], [2], [3]], "targets": ["a", "b"]}, "targets", ("2 targets", "3 feature rows"), id="count"
        ),
        pytest.param({"features": [[1], [2]], "targets": ["a", "a"]}, "targets", ("2 distinct",), id="one class"),
        pytest.param({"features": [[1], [2]], "targets": [1, "b"]}, "targets", ("mix",), id="mixed label types"),
        pytest.param(
            {"features": [[1], [2]], "targets": [1.5, 2], "task": "classification"},
            "targets[0]",
            ("1.5",),
            id="float class labels",
        ),
        pytest.param(
            {"features": [[1], [2]], "targets": [[1.0], [2.0, 3.0]]}, "targets[1]", ("row 1",), id="ragged targets"
        ),
        pytest.param(
            {"features": [[1], [2]], "targets": ["a", "b"], "task": "regression"},
            "targets",
            ("numbers",),
            id="text regression targets",
        ),
        pytest.param(
            {"features": [[1], [2]], "targets": [1, 2], "feature_names": ["a", "b"]},
            "feature_names",
            ("2 feature_names", "1 features"),
            id="feature_names length",
        ),
        pytest.param({"features": [[1], [2]]}, "targets", ("required",), id="missing targets"),
        pytest.param({"features": [[1], [2]], "targets": [1, 2], "rows": 2}, "rows", ("extra",), id="unknown field"),
    ],
)
async def test_bad_json_dataset_is_422_naming_the_problem(
    client: httpx.AsyncClient, body: dict, field: str, needles: tuple[str, ...]
):
    assert_problem(await client.post("/v1/datasets", json=body), 422, *needles, field=field)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_features_are_422(client: httpx.AsyncClient, token: str):
    raw = f'{{"features": [[1.0, 2.0], [{token}, 3.0]], "targets": [0.5, 1.5]}}'
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422, "finite", field="features[1][0]")


@pytest.mark.parametrize("token", ["NaN", "Infinity"])
async def test_non_finite_regression_targets_are_422(client: httpx.AsyncClient, token: str):
    raw = f'{{"features": [[1.0], [2.0]], "targets": [0.5, {token}]}}'
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    body = assert_problem(r, 422)
    assert body["field"].startswith("targets"), body


async def test_empty_body_is_422(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", content=b"", headers={"content-type": "application/json"})
    assert_problem(r, 422, "empty")


async def test_unsupported_content_type_is_415(client: httpx.AsyncClient):
    r = await client.post("/v1/datasets", content=b"x,y\n1,2\n", headers={"content-type": "text/csv"})
    assert_problem(r, 415, "text/csv")


# --- get, list, delete ---------------------------------------------------------------------------------------------


async def test_get_dataset(api: Api, client: httpx.AsyncClient):
    ds = await api.dataset(name="d")
    r = await client.get(f"/v1/datasets/{ds['id']}")
    assert r.status_code == 200
    assert r.json() == ds


async def test_get_missing_dataset_is_404(client: httpx.AsyncClient):
    missing = random_id()
    assert_problem(await client.get(f"/v1/datasets/{missing}"), 404, missing)


async def test_delete_dataset(api: Api, client: httpx.AsyncClient):
    ds = await api.dataset()
    assert (await client.delete(f"/v1/datasets/{ds['id']}")).status_code == 204
    assert_problem(await client.get(f"/v1/datasets/{ds['id']}"), 404)
    assert_problem(await client.delete(f"/v1/datasets/{ds['id']}"), 404)
    assert (await client.get("/v1/datasets")).json() == {"data": [], "has_more": False}


async def test_deleted_dataset_cannot_be_trained_on(api: Api, client: httpx.AsyncClient):
    net, ds = await api.network(), await api.dataset()
    await client.delete(f"/v1/datasets/{ds['id']}")
    r = await client.post("/v1/jobs", json={"network_id": net["id"], "dataset_id": ds["id"]})
    assert_problem(r, 404, ds["id"], field="dataset_id")


async def test_list_datasets_paginates(api: Api, client: httpx.AsyncClient):
    ids = [(await api.dataset(name=f"d{i}"))["id"] for i in range(5)]
    first = (await client.get("/v1/datasets", params={"limit": 2})).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = (await client.get("/v1/datasets", params={"limit": 2, "after": first["data"][-1]["id"]})).json()
    assert [d["id"] for d in second["data"]] == ids[::-1][2:4]
    third = (await client.get("/v1/datasets", params={"limit": 2, "after": second["data"][-1]["id"]})).json()
    assert [d["id"] for d in third["data"]] == ids[::-1][4:]
    assert third["has_more"] is False


@pytest.mark.parametrize("limit", [0, 101])
async def test_list_datasets_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: int):
    assert_problem(await client.get("/v1/datasets", params={"limit": limit}), 422, field="limit")


# --- Idempotency-Key -----------------------------------------------------------------------------------------------


async def test_same_idempotency_key_and_body_replays_the_dataset(client: httpx.AsyncClient):
    body = {"features": [[0], [1]], "targets": ["a", "b"]}
    headers = {"Idempotency-Key": "ds-1"}
    first = await client.post("/v1/datasets", json=body, headers=headers)
    again = await client.post("/v1/datasets", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len((await client.get("/v1/datasets")).json()["data"]) == 1


async def test_same_idempotency_key_with_another_body_is_422(client: httpx.AsyncClient):
    headers = {"Idempotency-Key": "ds-2"}
    await client.post("/v1/datasets", json={"features": [[0], [1]], "targets": ["a", "b"]}, headers=headers)
    r = await client.post("/v1/datasets", json={"features": [[0], [1]], "targets": ["b", "a"]}, headers=headers)
    assert_problem(r, 422, "Idempotency-Key", field="Idempotency-Key")
    assert len((await client.get("/v1/datasets")).json()["data"]) == 1


async def test_idempotent_csv_upload_replays(client: httpx.AsyncClient):
    headers = {"Idempotency-Key": "csv-1"}
    files = {"file": ("data.csv", IRIS_LIKE, "text/csv")}
    first = await client.post("/v1/datasets", files=files, data={"target": "species"}, headers=headers)
    again = await client.post("/v1/datasets", files=files, data={"target": "species"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = await client.post("/v1/datasets", files=files, data={"target": "species", "name": "x"}, headers=headers)
    assert_problem(other, 422, field="Idempotency-Key")


async def test_idempotency_keys_are_per_owner(client: httpx.AsyncClient, other: httpx.AsyncClient):
    body = {"features": [[0], [1]], "targets": ["a", "b"]}
    headers = {"Idempotency-Key": "shared"}
    mine = await client.post("/v1/datasets", json=body, headers=headers)
    theirs = await other.post("/v1/datasets", json=body, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers


@pytest.mark.parametrize("key", ["has space", "x" * 256])
async def test_malformed_idempotency_key_is_422(client: httpx.AsyncClient, key: str):
    body = {"features": [[0], [1]], "targets": ["a", "b"]}
    r = await client.post("/v1/datasets", json=body, headers={"Idempotency-Key": key})
    assert_problem(r, 422, "Idempotency-Key", field="Idempotency-Key")
