"""app/client is a standalone SDK layer: it imports httpx (and rich, in the CLI) but nothing else of the service, and
the CLI's pure helpers (output layer choice, CSV column matching) do what the commands rely on."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import pytest

import app.client
from app.client import Dataset, Model
from app.client.cli import output_columns, output_head, read_rows

CLIENT_DIR = Path(app.client.__file__).parent
FORBIDDEN = ("app.config", "app.api", "app.db", "app.engine", "app.services", "app.storage", "app.worker", "app.main",
             "fastapi", "sqlalchemy", "pydantic", "pydantic_settings", "numpy", "uvicorn")


def test_client_sources_import_nothing_of_the_service():
    for path in sorted(CLIENT_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name == "app.client" or name.startswith("app.client.") or not name.startswith("app"), (
                    path.name, name)
                assert not name.startswith(FORBIDDEN), (path.name, name)


def test_importing_the_client_and_its_cli_loads_no_service_module():
    code = (
        "import sys, app.client, app.client.cli, app.client.aio\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def dataset(task: str, classes: list[object] | None, n_targets: int) -> Dataset:
    return Dataset.from_dict({"id": "d", "task": task, "classes": classes, "n_targets": n_targets, "n_features": 3})


def test_output_head_matches_the_task():
    assert output_head(dataset("classification", ["a", "b", "c"], 3)) == (
        {"units": 3, "activation": "softmax"}, "cross_entropy")
    assert output_head(dataset("classification", [False, True], 2)) == (
        {"units": 1, "activation": "sigmoid"}, "binary_cross_entropy")
    assert output_head(dataset("regression", None, 2)) == ({"units": 2, "activation": "linear"}, "mse")


def test_read_rows_matches_named_columns_and_ignores_the_rest():
    text = "c,target,a,b\n3,x,1,2\n6,y,4,5\n"
    assert read_rows(io.StringIO(text), 3, ["a", "b", "c"]) == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_read_rows_by_position_without_a_header_or_without_matching_names():
    assert read_rows(io.StringIO("1,2\n3,4\n"), 2, ["a", "b"]) == [[1.0, 2.0], [3.0, 4.0]]
    assert read_rows(io.StringIO("p,q\n1,2\n"), 2, ["a", "b"]) == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no rows"),
        ("a,b,c\n", "a header but no rows"),
        ("a,b\n1,2\n", "the CSV has 2 columns but the model takes 3 features (a, b, c)"),
        ("a,b,c\n1,2,3\n4,oops,6\n", "row 3 of the CSV"),
        ("1,2,3\n4,5\n", "row 2 of the CSV"),
    ],
)
def test_read_rows_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_rows(io.StringIO(text), 3, ["a", "b", "c"])


def test_output_columns_name_classes_or_targets():
    clf = Model.from_dict({"id": "m", "classes": ["cat", "dog", "owl"]})
    assert output_columns(clf, 3, None) == ["p_cat", "p_dog", "p_owl"]
    binary = Model.from_dict({"id": "m", "classes": ["no", "yes"]})
    assert output_columns(binary, 1, None) == ["p_yes"]
    reg = Model.from_dict({"id": "m", "classes": None})
    assert output_columns(reg, 2, ["y1", "y2"]) == ["y1", "y2"]
    assert output_columns(reg, 2, None) == ["output_0", "output_1"]
