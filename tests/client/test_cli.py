"""The `backprop` client commands end to end: subprocesses against the live server, configured by BACKPROP_URL and
BACKPROP_API_KEY (or --url / --api-key), as a user would run them."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from app.client import Client
from tests.client.conftest import IRIS_COLUMNS, SPECIES, Live, binary_csv, iris_csv, iris_rows, regression_csv, to_csv
from tests.support.server import backprop_command, wait_until

pytestmark = pytest.mark.integration


def env_for(live: Live, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env["BACKPROP_URL"] = live.url
    if key is not None:
        env["BACKPROP_API_KEY"] = key
    env.pop("COLUMNS", None)
    return env


def cli(live: Live, key: str | None, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*backprop_command(), *args], cwd=cwd, env=env_for(live, key), capture_output=True,
                          text=True, timeout=timeout)


def cli_here(live: Live, key: str | None, *args: str, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """The same command in this process (no interpreter start-up): for the many small checks."""
    from app.cli import main

    for k in [k for k in os.environ if k.startswith("BACKPROP_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("BACKPROP_URL", live.url)
    if key is not None:
        monkeypatch.setenv("BACKPROP_API_KEY", key)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), int(exit_.value.code or 0), out, err)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout


def read_csv(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


TRAIN = ["--epochs", "15", "--layers", "8", "--activation", "tanh", "--learning-rate", "0.01", "--batch-size", "16",
         "--seed", "3"]


def test_train_then_predict_end_to_end(live: Live, tenant: str, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "iris.csv").write_bytes(iris_csv())
    result = cli(live, tenant, "train", "iris.csv", "--target", "species", *TRAIN, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 0, result.stderr

    # Progress went to stderr: the upload, the network, status changes and epochs up to the last.
    assert re.search(r"dataset \w+: 150 rows, 4 features, classification, classes setosa, versicolor, virginica",
                     result.stderr)
    assert re.search(r"network \w+: 4 -> 8 -> 3 softmax, loss cross_entropy", result.stderr)
    assert re.search(r"job \w+: running", result.stderr)
    epochs = [int(m) for m in re.findall(r"^epoch (\d+)/15 +loss [\d.]+ +val_loss [\d.]+", result.stderr, re.M)]
    assert epochs
    assert epochs[-1] == 15
    assert epochs == sorted(set(epochs))

    # The result went to stdout: the job, the model id, the final metrics.
    job_id = re.search(r"^job +(\w+) +succeeded after 15/15 epochs$", result.stdout, re.M).group(1)  # type: ignore[union-attr]
    model_id = re.search(r"^model +(\w+)$", result.stdout, re.M).group(1)  # type: ignore[union-attr]
    with Client(live.url, tenant) as c:
        job = c.jobs.get(job_id)
        assert job.model_id == model_id
        assert job.spec["seed"] == 3
        assert job.spec["validation_split"] == 0.2
        metrics_line = next(line for line in result.stdout.splitlines() if line.startswith("metrics"))
        printed = dict(re.findall(r"(\w+)=([-\d.e]+)", metrics_line))
        assert float(printed["loss"]) == pytest.approx(job.loss, rel=1e-3)
        assert float(printed["val_loss"]) == pytest.approx(job.val_loss, rel=1e-3)
        assert float(printed["val_accuracy"]) == pytest.approx(job.metrics["val_accuracy"], rel=1e-3)
        features, _ = iris_rows()
        expected = c.models.predict(model_id, features).labels

    # predict: the training CSV itself (header with the target column, which is ignored), to stdout.
    out = cli(live, tenant, "predict", model_id, "iris.csv", cwd=tmp_path)
    no_traceback(out)
    assert out.returncode == 0, out.stderr
    header, rows = read_csv(out.stdout)
    assert header == ["label", *(f"p_{s}" for s in SPECIES)]
    assert len(rows) == 150
    assert [r[0] for r in rows] == expected
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-5 for r in rows)

    # Columns in another order, matched by name; and headerless rows by position, to a file.
    order = [3, 1, 0, 2]
    (tmp_path / "shuffled.csv").write_text(
        to_csv([IRIS_COLUMNS[i] for i in order], [[f[i] for i in order] for f in features]))
    monkeypatch.chdir(tmp_path)
    shuffled = cli_here(live, tenant, "predict", model_id, "shuffled.csv", monkeypatch=monkeypatch, capsys=capsys)
    assert [r[0] for r in read_csv(shuffled.stdout)[1]] == expected
    (tmp_path / "plain.csv").write_text(to_csv(None, features[:7]))
    to_file = cli_here(live, tenant, "predict", model_id, "plain.csv", "--output", "pred.csv",
                       monkeypatch=monkeypatch, capsys=capsys)
    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == ""
    assert "wrote 7 predictions to pred.csv" in to_file.stderr
    assert [r[0] for r in read_csv((tmp_path / "pred.csv").read_text())[1]] == expected[:7]

    # Wrong width: a clear error.
    (tmp_path / "narrow.csv").write_text(to_csv(None, [f[:3] for f in features[:3]]))
    narrow = cli_here(live, tenant, "predict", model_id, "narrow.csv", monkeypatch=monkeypatch, capsys=capsys)
    assert narrow.returncode == 1
    assert "the CSV has 3 columns but the model takes 4 features" in narrow.stderr


def test_train_picks_the_output_layer_from_the_task(live: Live, tenant: str, tmp_path: Path):
    (tmp_path / "binary.csv").write_bytes(binary_csv())
    (tmp_path / "reg.csv").write_bytes(regression_csv())
    binary = cli(live, tenant, "train", "binary.csv", "--target", "label", *TRAIN, "--json", cwd=tmp_path)
    no_traceback(binary)
    assert binary.returncode == 0, binary.stderr
    data = json.loads(binary.stdout)
    assert data["network"]["layers"][-1]["activation"] == "sigmoid"
    assert data["network"]["layers"][-1]["units"] == 1
    assert data["network"]["loss"] == "binary_cross_entropy"
    assert data["job"]["status"] == "succeeded"
    pred = cli(live, tenant, "predict", data["model"]["id"], "binary.csv", cwd=tmp_path)
    header, rows = read_csv(pred.stdout)
    assert header == ["label", "p_yes"]
    assert len(rows) == 120
    truth = [r[-1] for r in read_csv(binary_csv().decode())[1]]
    assert sum(r[0] == t for r, t in zip(rows, truth, strict=True)) >= 110  # two well separated blobs

    reg = cli(live, tenant, "train", "reg.csv", "--target", "y", "--layers", "", "--epochs", "5", "--json",
              cwd=tmp_path)
    assert reg.returncode == 0, reg.stderr
    data = json.loads(reg.stdout)
    assert [(lay["units"], lay["activation"]) for lay in data["network"]["layers"]] == [(1, "linear")]
    assert data["network"]["loss"] == "mse"
    pred = cli(live, tenant, "predict", data["model"]["id"], "reg.csv", cwd=tmp_path)
    header, rows = read_csv(pred.stdout)
    assert header == ["y"]
    assert len(rows) == 100


def test_jobs_list_show_cancel(live: Live, tenant: str, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "iris.csv").write_bytes(iris_csv())
    done = cli(live, tenant, "train", "iris.csv", "--epochs", "3", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done_id = json.loads(done.stdout)["job"]["id"]
    started = cli(live, tenant, "train", "iris.csv", "--epochs", "5000", "--batch-size", "2", "--no-wait",
                  cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    long_id = re.match(r"job (\w+) (queued|running)", started.stdout).group(1)  # type: ignore[union-attr]
    assert f"backprop jobs wait {long_id}" in started.stderr

    listed = cli(live, tenant, "jobs", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "EPOCH", "LOSS", "VAL_LOSS", "MODEL", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [long_id, done_id]
    assert lines[2].split()[1:3] == ["succeeded", "3/3"]

    def here(*args: str) -> subprocess.CompletedProcess[str]:
        return cli_here(live, tenant, *args, monkeypatch=monkeypatch, capsys=capsys)

    as_json = json.loads(here("jobs", "list", "--json", "--status", "succeeded").stdout)
    assert [j["id"] for j in as_json] == [done_id]
    assert [j["id"] for j in json.loads(here("jobs", "list", "--json", "--limit", "1").stdout)] == [long_id]

    show = cli(live, tenant, "jobs", "show", done_id, cwd=tmp_path)
    assert show.returncode == 0
    fields = dict(line.split(None, 1) for line in show.stdout.splitlines() if line.strip())
    assert fields["id"].strip() == done_id
    assert fields["status"].strip() == "succeeded"
    assert fields["epoch"].startswith("3/3")
    assert json.loads(here("jobs", "show", done_id, "--json").stdout)["id"] == done_id

    cancel = cli(live, tenant, "jobs", "cancel", long_id, cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    assert re.match(rf"job {long_id} (cancelled|is running; it stops at its next batch boundary)", cancel.stdout)
    waited = cli(live, tenant, "jobs", "wait", long_id, cwd=tmp_path)
    assert waited.returncode == 1  # not a success...
    assert f"job {long_id} was cancelled" in waited.stderr  # ... and it says so

    again = cli(live, tenant, "jobs", "cancel", done_id, cwd=tmp_path)
    no_traceback(again)
    assert again.returncode == 1
    assert f"error: Conflict (409): job {done_id} is already succeeded" in again.stderr


def test_ctrl_c_stops_waiting_and_says_how_to_cancel(live: Live, tenant: str, tmp_path: Path):
    (tmp_path / "iris.csv").write_bytes(iris_csv())
    lines: list[str] = []
    with subprocess.Popen([*backprop_command(), "train", "iris.csv", "--epochs", "5000", "--batch-size", "2"],
                          cwd=tmp_path, env=env_for(live, tenant), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        try:
            wait_until(lambda: any(re.search(r"job \w+: running", line) for line in lines), timeout=60,
                       what="the CLI to report the job running")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
    stderr = "".join(lines)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    job_id = re.search(r"job (\w+) keeps running\. Cancel it with: backprop jobs cancel (\w+)", stderr)
    assert job_id is not None, stderr
    assert job_id.group(1) == job_id.group(2)
    with Client(live.url, tenant) as c:
        assert c.jobs.get(job_id.group(1)).status == "running"  # only the waiting stopped
        c.jobs.cancel(job_id.group(1))
        assert c.jobs.wait(job_id.group(1), timeout=60, poll_interval=0.05).status == "cancelled"


def test_errors_print_the_problem_and_exit_non_zero(live: Live, tenant: str, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "iris.csv").write_bytes(iris_csv())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the retries against a closed port
    cases = [
        (("predict", "no-such-model", "iris.csv"), tenant, 1,
         "error: Not Found (404): no model with id 'no-such-model'"),
        (("jobs", "list"), "bp_live_abcdefgh_wrong", 1, "error: Unauthorized (401)"),
        (("jobs", "show", "x"), None, 2, "no API key: set BACKPROP_API_KEY or pass --api-key"),
        (("train", "iris.csv", "--target", "colour"), tenant, 1, "error: Unprocessable Content (422): target column "
                                                                  "'colour' is not in the CSV"),
        (("train", "missing.csv"), tenant, 1, "error: no such file: missing.csv"),
        (("train", "iris.csv", "--layers", "8,x"), tenant, 2, "expected comma-separated layer sizes"),
        (("jobs", "list", "--url", "http://127.0.0.1:9"), tenant, 1, "error: cannot reach the Backprop server at "
                                                                      "http://127.0.0.1:9"),
    ]
    for args, key, code, message in cases:
        result = cli_here(live, key, *args, monkeypatch=monkeypatch, capsys=capsys)
        assert (result.returncode, message in result.stderr) == (code, True), (args, result.stderr)
    # And once as a real process: the problem, no traceback.
    result = cli(live, tenant, "jobs", "show", "no-such-job", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stderr == "error: Not Found (404): no job with id 'no-such-job'\n"


def test_url_and_api_key_flags_override_the_environment(live: Live, tenant: str, tmp_path: Path):
    env = env_for(live, "bp_live_abcdefgh_wrong")
    env["BACKPROP_URL"] = "http://127.0.0.1:9"
    result = subprocess.run([*backprop_command(), "jobs", "list", "--json", "--url", live.url, "--api-key", tenant],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []  # a fresh tenant
