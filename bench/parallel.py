"""The engine's data-parallel training against its one-way training, on the engine benchmark's workloads.

Three trainers per workload and batch size, from the same initial weights, trained one epoch at a time in rotation
(so a burst of load from elsewhere hits all alike), each round's first epochs untimed:

- one-way: `replicas=1`, the library's BLAS policy (one BLAS thread for steps under 16M multiply-adds, else the
  default two);
- two-way in one process: `replicas=2, processes=1` (what a one-CPU worker resuming a two-way job runs);
- two-way in two processes: `replicas=2, processes=2` (the default on this machine).

Prints seconds per epoch, the speedups, and whether the two two-way runs ended on the same weights bit for bit
(they must); writes bench/results/parallel-<UTC time>.json and parallel-latest.json.

    .venv/bin/python bench/parallel.py [--quick] [--rounds N] [--workloads digits synth100k]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import NetworkSpec, TrainConfig, Trainer  # noqa: E402
from bench.engine import LR, WORKLOADS, load_workload, settle  # noqa: E402

SCHEMA = "backprop.bench.parallel/1"
VARIANTS = {"one-way": {"replicas": 1}, "two-way, 1 process": {"replicas": 2, "processes": 1},
            "two-way, 2 processes": {"replicas": 2, "processes": 2}}


def trainer(data: dict[str, Any], hidden: tuple[int, ...], bs: int, seed: int, **kw: Any) -> Trainer:
    spec = NetworkSpec.from_dict({
        "input_dim": data["x_train"].shape[1],
        "layers": [*({"units": h, "activation": "relu"} for h in hidden),
                   {"units": data["n_classes"], "activation": "softmax"}],
        "loss": "cross_entropy"})
    config = TrainConfig.from_dict({"epochs": 10**6, "batch_size": bs, "seed": seed, "dtype": "float32",
                                    "optimizer": {"name": "adam", "learning_rate": LR}})
    return Trainer(spec, config, data["x_train"], data["y_train"], **kw)


def measure(data: dict[str, Any], hidden: tuple[int, ...], bs: int, rounds: int, per_round: int,
            seed: int) -> dict[str, Any]:
    trainers = {name: trainer(data, hidden, bs, seed, **kw) for name, kw in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    try:
        for r in range(rounds):
            for name, tr in trainers.items():
                settle()
                for k in range(per_round):
                    t0 = time.perf_counter()
                    tr.fit(callback=lambda record: False)      # one epoch
                    if k > 0 or (per_round == 1 and r > 0):
                        times[name].append(time.perf_counter() - t0)
        two = [trainers[n].net.params for n in VARIANTS if n.startswith("two-way")]
        same = bool(np.array_equal(two[0], two[1]))
    finally:
        for tr in trainers.values():
            tr.close()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["one-way"]
    return {"batch_size": bs, "epoch_seconds": med, "timed_epochs": {n: len(t) for n, t in times.items()},
            "speedup_vs_one_way": {name: base / m for name, m in med.items()}, "two_way_bit_identical": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, few rounds")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--rounds", type=int, default=None, help="rounds of epochs per trainer (default 6; --quick 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 6)
    print(f"engine data parallelism: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}")
    print(f"  {'workload':10s} {'batch':>5s} " + " ".join(f"{n:>22s}" for n in VARIANTS) + "  bit-identical")
    results = []
    for name in args.workloads:
        w = WORKLOADS[name]
        data = load_workload(name, quick=args.quick, seed=args.seed)
        per_round = 5 if name == "digits" else 2
        for bs in w["batch_sizes"]:
            res = {"workload": name, **measure(data, w["hidden"], bs, rounds, per_round, args.seed)}
            results.append(res)
            cells = " ".join(f"{res['epoch_seconds'][n]:8.4f}s ({res['speedup_vs_one_way'][n]:4.2f}x)".rjust(22)
                             for n in VARIANTS)
            print(f"  {name:10s} {bs:5d} {cells}  {'yes' if res['two_way_bit_identical'] else 'NO'}", flush=True)
    report = {"schema": SCHEMA, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "quick": args.quick, "rounds": rounds, "cpus": os.cpu_count(), "results": results}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}"
    text = json.dumps(report, indent=2) + "\n"
    (args.out_dir / f"parallel-{stamp}.json").write_text(text)
    (args.out_dir / "parallel-latest.json").write_text(text)
    print(f"wrote {args.out_dir / f'parallel-{stamp}.json'} and parallel-latest.json")
    return 0 if all(r["two_way_bit_identical"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
