"""Dataset uploads that used to be misread or answered unhelpfully: every one is a clear 4xx naming the problem,
or is read as the user meant it."""

import io

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.db.session import Database
from app.services.dataset_codec import ParsedDataset
from app.worker.loop import Supervisor
from tests.api.conftest import Api, assert_problem

pytestmark = pytest.mark.anyio


async def upload(client: httpx.AsyncClient, content: bytes, **form: str) -> httpx.Response:
    return await client.post("/v1/datasets", files={"file": ("data.csv", content, "text/csv")}, data=form)


async def created(r: httpx.Response) -> dict:
    assert r.status_code == 201, r.text
    return r.json()


# --- numeric class labels that are not the same number twice ---------------------------------------------------------


async def test_csv_labels_differing_only_in_leading_zeros_stay_distinct_classes(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,y\n1,01\n2,1\n3,2\n"))
    assert ds["classes"] == ["01", "1", "2"]
    ds = await created(await upload(client, b"a,y\n1,007\n2,07\n3,7\n4,8\n"))
    assert ds["classes"] == ["007", "07", "7", "8"]


async def test_csv_ordinary_int_labels_stay_ints(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,y\n1,0\n2,1\n3,2\n4,1\n"))
    assert ds["classes"] == [0, 1, 2]
    # Zero-padded but still one spelling per number: nothing is lost by reading them as numbers.
    ds = await created(await upload(client, b"a,y\n1,01\n2,02\n3,01\n"))
    assert ds["classes"] == [1, 2]


async def test_csv_int_labels_past_2_to_the_53_are_not_rounded_together(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,y\n1,9007199254740993\n2,9007199254740992\n"))
    assert ds["classes"] == [9007199254740992, 9007199254740993]


async def test_csv_numeric_labels_that_collide_keep_their_text_with_task_classification(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,y\n1,1.0\n2,1\n3,2.0\n", task="classification"))
    assert ds["classes"] == ["1", "1.0", "2.0"]


# --- missing target cells --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "form", "needles"),
    [
        pytest.param(b"a,y\n1,\n2,z\n3,x\n", {}, ("line 2", "'y'", "empty"), id="empty label"),
        pytest.param(b"a,y\n1,x\n2,   \n3,z\n", {}, ("line 3", "'y'", "empty"), id="blank label"),
        pytest.param(b"a,y\n1,0.5\n2,1.5\n3,\n", {"task": "regression"}, ("line 4", "'y'", "empty"), id="regression"),
        pytest.param(b"a,y1,y2\n1,2,3\n4,5,\n", {"target": "y1,y2"}, ("line 3", "'y2'", "empty"), id="multi-output"),
        pytest.param(b"1,x\n2,\n", {}, ("line 2", "'1'", "empty"), id="no header"),
    ],
)
async def test_csv_empty_target_cell_is_422_naming_line_and_column(
    client: httpx.AsyncClient, content: bytes, form: dict, needles: tuple[str, ...]
):
    assert_problem(await upload(client, content, **form), 422, *needles, field="file")


# --- duplicate column names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        pytest.param(b"a,a,y\n1,2,x\n3,4,z\n", ("duplicate", "'a'", "columns 1 and 2"), id="features"),
        pytest.param(b"a,y,y\n1,x,z\n2,z,x\n", ("duplicate", "'y'", "columns 2 and 3"), id="target"),
        pytest.param(b"a, b ,b,y\n1,2,3,x\n4,5,6,z\n", ("duplicate", "'b'", "columns 2 and 3"), id="spaces"),
    ],
)
async def test_csv_duplicate_column_names_are_422(client: httpx.AsyncClient, content: bytes, needles: tuple[str, ...]):
    assert_problem(await upload(client, content, target="y"), 422, *needles, field="file")


# --- what counts as a number -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["1_000", "1_0.5", "\u0661", "\uff11"])  # digit groups, Arabic-Indic, full-width
async def test_csv_cells_only_python_reads_as_numbers_are_not_numbers(client: httpx.AsyncClient, cell: str):
    content = f"a,b,y\n2,{cell},x\n3,4,z\n".encode()
    assert_problem(await upload(client, content), 422, "line 2", "'b'", "not a number", field="file")


async def test_csv_label_with_an_underscore_is_text(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,y\n1,1_000\n2,2\n"))
    assert ds["classes"] == ["1_000", "2"]
    r = await upload(client, b"a,y\n1,1_000\n2,2.5\n", task="regression")
    assert_problem(r, 422, "numbers", field="target")
    r = await upload(client, b"a,y1,y2\n1,1_000,2\n2,2.5,3\n", target="y1,y2")
    assert_problem(r, 422, "numeric", field="target")


async def test_csv_numbers_with_surrounding_spaces_still_parse(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,b,y\n 1.5 ,2, 0.5\n-3 , 4e2 ,1.5 \n"))
    assert (ds["n_samples"], ds["task"], ds["feature_names"]) == (2, "regression", ["a", "b"])


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity"])
async def test_csv_non_finite_features_are_still_422(client: httpx.AsyncClient, cell: str):
    r = await upload(client, f"a,b,y\n1,2,x\n{cell},4,z\n".encode())
    assert_problem(r, 422, field="file")


# --- separators ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [";", "\t", "|"])
async def test_csv_separator_is_detected_from_the_header(client: httpx.AsyncClient, sep: str):
    content = sep.join(["a", "b", "y"]) + "\n" + "\n".join(sep.join(r) for r in (["1", "2", "x"], ["3", "4", "z"]))
    ds = await created(await upload(client, content.encode(), target="y"))
    assert ds["feature_names"] == ["a", "b"]
    assert ds["classes"] == ["x", "z"]


async def test_csv_separator_tie_goes_to_the_comma(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a;b,c;d,y\n1,2,x\n3,4,z\n", target="y"))
    assert ds["feature_names"] == ["a;b", "c;d"]
    ds = await created(await upload(client, b'"a;b;c",d,y\n1,2,x\n3,4,z\n'))  # quoted: one field
    assert ds["feature_names"] == ["a;b;c", "d"]


async def test_csv_explicit_delimiter_overrides_detection(client: httpx.AsyncClient):
    content = b"p,q,r|y\n1|x\n2|z\n"
    assert_problem(await upload(client, content), 422, field="file")  # read as 3 comma-separated columns
    ds = await created(await upload(client, content, delimiter="|"))
    assert ds["feature_names"] == ["p,q,r"]
    assert ds["classes"] == ["x", "z"]


@pytest.mark.parametrize("delimiter", ["::", "x", " ", ""])
async def test_csv_bad_delimiter_is_422(client: httpx.AsyncClient, delimiter: str):
    r = await upload(client, b"a,y\n1,x\n2,z\n", delimiter=delimiter)
    assert_problem(r, 422, "delimiter", field="delimiter")


async def test_csv_unknown_target_lists_the_columns_by_name(client: httpx.AsyncClient):
    r = await upload(client, b"a;b;y\n1;2;x\n3;4;z\n", target="label")
    assert_problem(r, 422, "'label'", "'a', 'b', 'y'", "';'", field="target")
    r = await upload(client, b"1,2,3\n4,5,6\n", target="y")
    assert_problem(r, 422, "'y'", "header", "0 to 2", field="target")


@pytest.mark.parametrize("target", ["\u00b2", "9" * 5000])  # isdigit() but not int(); past int()'s 4300 digits
async def test_csv_target_that_only_looks_like_an_index_is_422_not_500(client: httpx.AsyncClient, target: str):
    assert_problem(await upload(client, b"a,y\n1,x\n2,z\n", target=target), 422, "not in the CSV", field="target")


async def test_csv_one_column_file_still_reads_with_commas(client: httpx.AsyncClient):
    r = await upload(client, b"y\nx\nz\n")
    assert_problem(r, 422, "no feature columns", field="target")


# --- form fields -----------------------------------------------------------------------------------------------------


async def test_unknown_form_field_is_422_naming_it(client: httpx.AsyncClient):
    r = await upload(client, b"a,y\n1,x\n2,z\n", targt="y")
    body = assert_problem(r, 422, "'targt'", "target", "delimiter", field="targt")
    assert "unknown" in body["detail"]


async def test_all_documented_form_fields_are_accepted(client: httpx.AsyncClient):
    r = await upload(
        client, b"a;y\n1;x\n2;z\n", target="y", header="true", task="classification", name="n", delimiter=";"
    )
    assert (await created(r))["classes"] == ["x", "z"]


# --- sha256 identifies the content -----------------------------------------------------------------------------------


async def test_sha256_tells_apart_datasets_whose_labels_differ(client: httpx.AsyncClient):
    features = [[0.0], [1.0]]
    bools = await created(await client.post("/v1/datasets", json={"features": features, "targets": [True, False]}))
    bigs = await created(await client.post("/v1/datasets", json={"features": features, "targets": [10**30, 2]}))
    assert bools["sha256"] != bigs["sha256"]
    from_csv = await created(await upload(client, b"f,label\n0,x\n1,z\n"))
    from_json = await created(await client.post("/v1/datasets", json={"features": features, "targets": ["a", "b"]}))
    assert from_csv["sha256"] != from_json["sha256"]


async def test_sha256_is_the_same_for_the_same_upload(client: httpx.AsyncClient):
    body = {"features": [[0.0], [1.0]], "targets": [True, False]}
    first = await created(await client.post("/v1/datasets", json=body))
    again = await created(await client.post("/v1/datasets", json=body))
    assert first["id"] != again["id"]
    assert first["sha256"] == again["sha256"]
    first = await created(await upload(client, b"f,label\n0,x\n1,z\n"))
    again = await created(await upload(client, b"f,label\n0,x\n1,z\n"))
    assert first["sha256"] == again["sha256"]


async def test_idempotent_csv_upload_with_renamed_columns_is_not_a_replay(client: httpx.AsyncClient):
    headers = {"Idempotency-Key": "csv-names"}
    files = {"file": ("d.csv", b"f,label\n0,x\n1,z\n", "text/csv")}
    first = await client.post("/v1/datasets", files=files, headers=headers)
    again = await client.post("/v1/datasets", files=files, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == (await created(first))["id"]
    renamed = {"file": ("d.csv", b"g,label\n0,x\n1,z\n", "text/csv")}
    assert_problem(await client.post("/v1/datasets", files=renamed, headers=headers), 422, field="Idempotency-Key")


async def test_a_dataset_in_the_new_format_trains(
    api: Api, client: httpx.AsyncClient, settings: Settings, db: Database
):
    ds = await created(await upload(client, b"a,b,y\n0,0,x\n1,1,z\n0,1,x\n1,0,z\n"))
    net = await api.network(units=(4, 2))
    job = await api.job(net["id"], ds["id"], epochs=2, batch_size=2)
    assert Supervisor(settings, db).run_once() is True
    r = await client.get(f"/v1/jobs/{job['id']}")
    assert r.json()["status"] == "succeeded", r.text


async def test_stored_arrays_read_back_from_both_blob_formats():
    x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 0])
    new = ParsedDataset(x=x, y=y, task="classification", classes=["a", True, 10**30]).to_bytes()
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)  # format 1: no meta
    for blob in (new, buf.getvalue()):
        got_x, got_y = ParsedDataset.arrays_from_bytes(blob)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)


# --- JSON targets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "needles"),
    [
        pytest.param("[NaN, 1]", ("must be a finite number, a string label or a boolean", "NaN"), id="nan"),
        pytest.param("[null, 1]", ("must be a finite number, a string label or a boolean", "null"), id="null"),
        pytest.param('[{"a": 1}, 1]', ("must be a finite number, a string label or a boolean", "object"), id="object"),
        pytest.param('["' + "x" * 1_000_000 + '", "b"]', ("label longer than 256 characters",), id="long label"),
    ],
)
async def test_bad_json_target_says_which_rule_failed(client: httpx.AsyncClient, targets: str, needles: tuple):
    raw = '{"features": [[1.0], [2.0]], "targets": ' + targets + "}"
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    body = assert_problem(r, 422, *needles, field="targets[0]")
    assert "and " not in body["detail"]  # one message, not one per branch of the union
    assert "x" * 1000 not in r.text


async def test_bad_json_target_row_keeps_its_row_message(client: httpx.AsyncClient):
    raw = '{"features": [[1.0], [2.0]], "targets": [[1.0], [NaN]]}'
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422, "finite", field="targets[1][0]")


# --- booleans in CSV -----------------------------------------------------------------------------------------------


async def test_csv_true_false_labels_are_text_as_written(client: httpx.AsyncClient):
    ds = await created(await upload(client, b"a,y\n1,true\n2,false\n3,True\n"))
    assert ds["classes"] == ["True", "false", "true"]


@pytest.mark.parametrize(
    ("targets", "task"),
    [
        pytest.param("[" + "9" * 400 + ", 2]", "regression", id="regression"),
        pytest.param("[1.5, " + "9" * 400 + "]", None, id="mixed ints and floats"),
    ],
)
async def test_json_regression_target_past_float64_is_422_not_500(client: httpx.AsyncClient, targets: str, task):
    raw = '{"features": [[1.0], [2.0]], "targets": ' + targets + (f', "task": "{task}"' if task else "") + "}"
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422, "too large", "1.8e308")


async def test_json_number_with_too_many_digits_is_not_called_malformed(client: httpx.AsyncClient):
    raw = '{"features": [[1.0], [2.0]], "targets": [' + "9" * 5000 + ", 1]}"
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    body = assert_problem(r, 422, "number", "4300 digits")
    assert "malformed" not in body["detail"]


async def test_json_nested_too_deeply_is_not_called_malformed(client: httpx.AsyncClient):
    raw = '{"features": [[1.0], [2.0]], "targets": ' + "[" * 300 + "]" * 300 + "}"
    r = await client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    body = assert_problem(r, 422, "nested too deeply")
    assert "malformed" not in body["detail"]
