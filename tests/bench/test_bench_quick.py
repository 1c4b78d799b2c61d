"""bench/engine.py --quick: the engine benchmark's smoke run (engine, scikit-learn and the NumPy reference, tiny data)
writes its report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK_KEYS = {"sec_per_epoch", "samples_per_sec", "gflops", "ceiling_fraction", "test_accuracy", "epoch_seconds"}
ENTRY_KEYS = {"workload", "batch_size", "layers", "params", "n_train", "n_test", "epochs", "timed_epochs",
              "flops_per_epoch", "gemm", "frameworks", "speedup", "other_load"}


@pytest.mark.timeout(90)
def test_quick_bench_writes_a_complete_report(tmp_path):
    pytest.importorskip("sklearn")
    cmd = [sys.executable, str(ROOT / "bench" / "engine.py"), "--quick", "--skip", "torch",
           "--out-dir", str(tmp_path), "--name", "quick.json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    report = json.loads((tmp_path / "quick.json").read_text())
    assert json.loads((tmp_path / "engine-latest.json").read_text()) == report
    assert report["schema"] == "backprop.bench.engine/1"
    assert report["quick"] is True
    assert {"python", "numpy", "sklearn", "torch", "cpus", "threadpools", "env"} <= report["machine"].keys()
    assert {(r["workload"], r["batch_size"]) for r in report["results"]} == {
        ("digits", 64), ("digits", 256), ("synth100k", 64), ("synth100k", 256)}
    for entry in report["results"]:
        assert entry.keys() >= ENTRY_KEYS
        assert set(entry["frameworks"]) == {"engine", "sklearn", "numpy"}
        for result in entry["frameworks"].values():
            assert result.keys() >= FRAMEWORK_KEYS
            assert result["sec_per_epoch"] > 0
            assert 0.0 <= result["test_accuracy"] <= 1.0
            assert len(result["epoch_seconds"]) == entry["epochs"]
        assert entry["speedup"]["sklearn"] > 0
        assert entry["gemm"]["ceiling_gflops"] >= entry["gemm"]["ceiling_median_gflops"] > 0
        assert set(entry["gemm"]["gflops"]) == {"forward", "dW", "dX"}
    assert all({"workload", "batch_size", "what", "value", "target", "met"} <= t.keys() for t in report["targets"])
    assert "summary" in proc.stdout
    assert "GEMM ceiling" in proc.stdout


@pytest.mark.timeout(60)
def test_numpy_reference_is_a_working_mlp():
    """The bench's calibration reference (the engine issue's straightforward NumPy MLP) must train correctly to mean
    anything: from the engine's initial weights it learns digits as the engine does."""
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT))
    from bench.engine import EngineRunner, NumpyRunner, load_workload

    data = load_workload("digits", quick=False, seed=0)
    engine = EngineRunner(data, (64,), 32, 15, seed=1)
    ref = NumpyRunner(data, (64,), 32, 15, seed=1, init=engine.init)
    try:
        before = ref.accuracy()
        for _ in range(15):
            engine.epoch()
            ref.epoch()
        assert before < 0.5
        assert ref.accuracy() >= 0.95
        assert abs(ref.accuracy() - engine.accuracy()) <= 0.03
    finally:
        engine.trainer.close()


@pytest.mark.timeout(120)
def test_quick_parallel_bench_reports_and_two_way_runs_agree(tmp_path):
    pytest.importorskip("sklearn")
    cmd = [sys.executable, str(ROOT / "bench" / "parallel.py"), "--quick", "--workloads", "digits",
           "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr     # 1 when the two two-way runs differ
    report = json.loads((tmp_path / "parallel-latest.json").read_text())
    assert report["schema"] == "backprop.bench.parallel/1"
    assert report["quick"] is True
    assert [(r["workload"], r["batch_size"]) for r in report["results"]] == [("digits", 64), ("digits", 256)]
    for r in report["results"]:
        assert r["two_way_bit_identical"] is True
        assert set(r["epoch_seconds"]) == {"one-way", "two-way, 1 process", "two-way, 2 processes"}
        assert all(t > 0 for t in r["epoch_seconds"].values())
        assert all(n >= 1 for n in r["timed_epochs"].values())
