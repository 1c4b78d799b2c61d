"""The `backprop` client commands, run against a server over HTTP: train, predict, jobs list/show/cancel/wait.

app/cli.py registers them with `add_commands(subparsers)` and hands a parsed command to `run(ns)`. The server is
--url / $BACKPROP_URL and the key --api-key / $BACKPROP_API_KEY. Results go to stdout, progress and errors to
stderr; an API error prints its problem title and detail (never a traceback) and exits 1. Exit codes: 0 done,
1 error (or the job failed or was cancelled), 2 usage, 124 wait timed out, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console

    from app.client import Client, Dataset, EpochRecord, Job, Model

EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 2, 124, 130
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def add_commands(sub: Any) -> None:
    """Add train, predict and jobs to the `backprop` subparsers; each sets `client_command` for `run()`."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="the server (default: $BACKPROP_URL, else http://127.0.0.1:8000)")
    conn.add_argument("--api-key", help="the API key (default: $BACKPROP_API_KEY)")

    train = sub.add_parser(
        "train",
        parents=[conn],
        help="upload a CSV, train an MLP on it and show live progress",
        description="Upload CSV, define a network sized from the dataset (softmax + cross_entropy for several "
        "classes, sigmoid + binary_cross_entropy for two, linear + mse for regression), start a job and follow "
        "it. Ctrl-C stops waiting (the job keeps running).",
    )
    train.add_argument("csv", type=Path, help="CSV file with a header row")
    train.add_argument("--target", help="target column name(s) or 0-based index(es), comma-separated (default: last)")
    train.add_argument("--task", choices=("classification", "regression"), help="override the inferred task")
    train.add_argument("--layers", type=_layers, default=[64, 32], metavar="N,N,...",
                       help="hidden layer sizes (default 64,32; '' for none)")
    train.add_argument("--activation", default="relu",
                       choices=("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "linear"),
                       help="hidden layers' activation (default relu)")
    train.add_argument("--epochs", type=int, default=50, help="default 50")
    train.add_argument("--batch-size", type=int, default=32, help="default 32")
    train.add_argument("--learning-rate", type=float, help="default: the optimizer's (1e-3 for adam)")
    train.add_argument("--optimizer", default="adam", choices=("sgd", "momentum", "rmsprop", "adam", "adamw"))
    train.add_argument("--validation-split", type=float, default=0.2, help="held-out fraction (default 0.2)")
    train.add_argument("--seed", type=int, help="for a reproducible run")
    train.add_argument("--name", help="name for the dataset and network (default: the file's name)")
    train.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    train.add_argument("--timeout", type=float, help="stop waiting after this many seconds (exit 124)")
    train.add_argument("--json", action="store_true", help="print the dataset, network, job and model as JSON")
    train.set_defaults(client_command=cmd_train)

    predict = sub.add_parser(
        "predict",
        parents=[conn],
        help="predict rows of a CSV with a trained model",
        description="Columns are matched to the training data's feature names when the CSV has a header naming "
        "them (other columns, like the target, are ignored); otherwise the CSV must have exactly the model's "
        "input columns, in order. Prints `label` (classifiers) and one column per output.",
    )
    predict.add_argument("model_id")
    predict.add_argument("csv", type=Path, help="rows to predict (a header is optional)")
    predict.add_argument("--output", "-o", default="-", help="output CSV file, or - for stdout (default)")
    predict.set_defaults(client_command=cmd_predict)

    jobs = sub.add_parser("jobs", help="list, show, cancel or wait for training jobs")
    jsub = jobs.add_subparsers(dest="jobs_cmd", required=True)
    ls = jsub.add_parser("list", parents=[conn], help="recent jobs, newest first")
    ls.add_argument("--status", choices=JOB_STATUSES)
    ls.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(client_command=cmd_jobs_list)
    show = jsub.add_parser("show", parents=[conn], help="one job in detail")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(client_command=cmd_jobs_show)
    cancel = jsub.add_parser("cancel", parents=[conn], help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(client_command=cmd_jobs_cancel)
    wait = jsub.add_parser("wait", parents=[conn], help="follow a job with a progress bar until it ends")
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=float, help="stop waiting after this many seconds (exit 124)")
    wait.add_argument("--json", action="store_true")
    wait.set_defaults(client_command=cmd_jobs_wait)


def _layers(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        sizes = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes like 64,32, got {text!r}") from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


def run(ns: argparse.Namespace) -> int:
    """Run a parsed client command; the exit code. Errors are printed, never raised."""
    from app.client import ApiConnectionError, ApiError, BackpropError, Client, JobFailed, WaitTimeout

    command: Callable[[Client, argparse.Namespace], int] = ns.client_command
    client = Client(getattr(ns, "url", None), getattr(ns, "api_key", None))
    try:
        if not client.api_key:
            _err("no API key: set BACKPROP_API_KEY or pass --api-key (`backprop keys create NAME` makes one)")
            return EXIT_USAGE
        return command(client, ns)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except ApiError as exc:
        _print_problem(exc)
        return EXIT_ERROR
    except ApiConnectionError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except JobFailed as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except WaitTimeout as exc:
        _err(f"error: {exc}; it keeps running (`backprop jobs wait {exc.job_id}` to follow it again)")
        return EXIT_TIMEOUT
    except BackpropError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    finally:
        client.close()


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _print_problem(exc: Any) -> None:
    _err(f"error: {exc.title} ({exc.status})" + (f": {exc.detail}" if exc.detail and exc.detail != exc.title else ""))
    for e in exc.errors[1:] if len(exc.errors) > 1 else []:
        if isinstance(e, dict):
            where = f"{e.get('field')}: " if e.get("field") else ""
            _err(f"  {where}{e.get('message', '')}")


def _stdout_console() -> Console:
    from rich.console import Console

    # Piped output is not cut to 80 columns: ids must survive whole.
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200, highlight=False)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


# --- train --------------------------------------------------------------------------------------------------------


def output_head(ds: Dataset) -> tuple[dict[str, Any], str]:
    """The output layer and loss the server pairs with this dataset's targets."""
    if ds.task == "classification":
        k = len(ds.classes) if ds.classes else ds.n_targets
        if k == 2:
            return {"units": 1, "activation": "sigmoid"}, "binary_cross_entropy"
        return {"units": k, "activation": "softmax"}, "cross_entropy"
    return {"units": ds.n_targets, "activation": "linear"}, "mse"


def cmd_train(client: Client, ns: argparse.Namespace) -> int:
    if not ns.csv.is_file():
        _err(f"error: no such file: {ns.csv}")
        return EXIT_ERROR
    name = ns.name or ns.csv.stem
    ds = client.datasets.upload(ns.csv, target=ns.target, task=ns.task, name=name)
    classes = f", classes {', '.join(map(str, ds.classes[:10]))}" if ds.classes else ""
    _err(f"dataset {ds.id}: {ds.n_samples} rows, {ds.n_features} features, {ds.task}{classes}")
    head, loss = output_head(ds)
    layers = [{"units": n, "activation": ns.activation} for n in ns.layers] + [head]
    net = client.networks.create(input_dim=ds.n_features, layers=layers, loss=loss, name=name)
    shape = " -> ".join([str(ds.n_features), *(str(n) for n in ns.layers), f"{head['units']} {head['activation']}"])
    _err(f"network {net.id}: {shape}, loss {loss}, {net.n_params} parameters")
    job = client.jobs.create(
        net.id,
        ds.id,
        epochs=ns.epochs,
        batch_size=ns.batch_size,
        optimizer=ns.optimizer,
        learning_rate=ns.learning_rate,
        validation_split=ns.validation_split or None,
        seed=ns.seed,
    )
    if ns.no_wait:
        if ns.json:
            _out(_dumps({"dataset": ds.raw, "network": net.raw, "job": job.raw}))
        else:
            _out(f"job {job.id} {job.status}")
            _err(f"follow it with `backprop jobs wait {job.id}`")
        return 0
    return _follow(client, job, ns, extra={"dataset": ds.raw, "network": net.raw})


def cmd_jobs_wait(client: Client, ns: argparse.Namespace) -> int:
    return _follow(client, client.jobs.get(ns.job_id), ns, extra={})


def _follow(client: Client, job: Job, ns: argparse.Namespace, *, extra: dict[str, Any]) -> int:
    """Follow the job with a progress display on stderr; then print the result. Ctrl-C stops waiting only."""
    from app.client import JobFailed

    display = _ProgressDisplay(job)
    try:
        with display:
            final = job.wait(timeout=ns.timeout, on_epoch=display.epoch, on_status=display.status)
    except KeyboardInterrupt:
        _err(f"\nstopped waiting; job {job.id} keeps running. Cancel it with: backprop jobs cancel {job.id}")
        return EXIT_INTERRUPTED
    except JobFailed as exc:
        if ns.json:
            _out(_dumps({**extra, "job": exc.job.raw}))
        _err(f"error: {exc}")
        return EXIT_ERROR
    model = client.models.get(final.model_id) if final.model_id else None
    if ns.json:
        _out(_dumps({**extra, "job": final.raw, "model": model.raw if model else None}))
    else:
        _print_result(final, model)
    if final.status != "succeeded":
        _err(f"job {final.id} was {final.status}")
        return EXIT_ERROR
    return 0


def _print_result(job: Job, model: Model | None) -> None:
    _out(f"job      {job.id}  {job.status} after {job.epoch}/{job.epochs} epochs")
    if model is not None:
        _out(f"model    {model.id}" + ("  (partial)" if model.partial else ""))
    metrics = {"loss": job.loss, "val_loss": job.val_loss, **job.metrics}
    if model is not None:
        metrics.update(
            {
                k: v
                for k, v in model.metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in metrics
            }
        )
    _out("metrics  " + "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if v is not None))


class _ProgressDisplay:
    """A rich progress bar on a terminal; elsewhere (a pipe, a log) plain lines, about 20 per run."""

    def __init__(self, job: Job) -> None:
        from rich.console import Console

        self.job_id, self.total = job.id, max(1, job.epochs)
        self.console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self.step = max(1, self.total // 20)
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressDisplay:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epochs  loss {task.fields[loss]}  val_loss {task.fields[val_loss]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("waiting", total=self.total, loss="-", val_loss="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def status(self, status: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=status)
        else:
            self.console.print(f"job {self.job_id}: {status}")

    def epoch(self, record: EpochRecord) -> None:
        loss, val_loss = _fmt(record.loss), _fmt(record.val_loss)
        if self._progress is not None:
            self._progress.update(self._task, completed=record.epoch, loss=loss, val_loss=val_loss)
        elif record.epoch % self.step == 0 or record.epoch == self.total:
            extra = "".join(f"  {k} {_fmt(v)}" for k, v in record.metrics.items() if k in ("accuracy", "val_accuracy"))
            self.console.print(f"epoch {record.epoch}/{self.total}  loss {loss}  val_loss {val_loss}{extra}")


# --- predict ------------------------------------------------------------------------------------------------------


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_rows(text: TextIO, input_dim: int, feature_names: Sequence[str] | None) -> list[list[float]]:
    """The CSV's rows as model inputs: by feature name when a header names them all, else by position."""
    rows = [r for r in csv.reader(text) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError("the CSV file has no rows")
    header = [c.strip() for c in rows[0]]
    has_header = any(not _is_number(c) for c in header)
    body = rows[1:] if has_header else rows
    if has_header and feature_names and all(n in header for n in feature_names):
        columns = [header.index(n) for n in feature_names]
    elif len(rows[0]) == input_dim:
        columns = list(range(input_dim))
    else:
        named = f" ({', '.join(feature_names)})" if feature_names else ""
        raise ValueError(
            f"the CSV has {len(rows[0])} columns but the model takes {input_dim} features{named}; give a header "
            "naming the features, or exactly those columns in order"
        )
    out = []
    for line, row in enumerate(body, start=2 if has_header else 1):
        try:
            out.append([float(row[i]) for i in columns])
        except (IndexError, ValueError):
            raise ValueError(f"row {line} of the CSV: expected {len(rows[0])} numeric columns, got {row!r}") from None
    if not out:
        raise ValueError("the CSV file has a header but no rows")
    return out


def output_columns(model: Model, n_outputs: int, target_names: Sequence[str] | None) -> list[str]:
    classes = model.classes or []
    if classes and len(classes) == n_outputs:
        return [f"p_{c}" for c in classes]
    if len(classes) == 2 and n_outputs == 1:
        return [f"p_{classes[1]}"]
    if target_names and len(target_names) == n_outputs:
        return list(target_names)
    return [f"output_{i}" for i in range(n_outputs)]


def cmd_predict(client: Client, ns: argparse.Namespace) -> int:
    from app.client import NotFoundError

    model = client.models.get(ns.model_id)
    feature_names: list[str] | None = None
    target_names: list[str] | None = None
    try:
        ds = client.datasets.get(model.dataset_id)
        feature_names, target_names = ds.feature_names, ds.target_names
    except NotFoundError:
        pass  # the dataset was deleted since: match columns by position
    with ns.csv.open(newline="", encoding="utf-8-sig") as f:
        rows = read_rows(f, model.input_dim, feature_names)
    from app.client._core import PREDICT_BATCH

    labels: list[Any] = []
    outputs: list[list[float]] = []
    has_labels = False
    for start in range(0, len(rows), PREDICT_BATCH):
        pred = client.models.predict(model.id, rows[start : start + PREDICT_BATCH])
        outputs += pred.outputs
        if pred.labels is not None:
            has_labels = True
            labels += pred.labels
    n_out = len(outputs[0]) if outputs else 0
    header = (["label"] if has_labels else []) + output_columns(model, n_out, target_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for i, out in enumerate(outputs):
        writer.writerow(([labels[i]] if has_labels else []) + [repr(float(v)) for v in out])
    if ns.output == "-":
        sys.stdout.write(buf.getvalue())
    else:
        Path(ns.output).write_text(buf.getvalue(), encoding="utf-8")
        _err(f"wrote {len(outputs)} predictions to {ns.output}")
    return 0


# --- jobs ---------------------------------------------------------------------------------------------------------


def cmd_jobs_list(client: Client, ns: argparse.Namespace) -> int:
    if ns.limit < 1:
        _err("error: --limit must be >= 1")
        return EXIT_USAGE
    jobs = list(itertools.islice(client.jobs.iter(status=ns.status, page_size=min(ns.limit, 100)), ns.limit))
    if ns.json:
        _out(_dumps([j.raw for j in jobs]))
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "STATUS", "EPOCH", "LOSS", "VAL_LOSS", "MODEL", "CREATED"):
        table.add_column(col, no_wrap=True)
    for j in jobs:
        created = j.created_at.strftime("%Y-%m-%d %H:%M:%S") if j.created_at else "-"
        table.add_row(
            j.id, j.status, f"{j.epoch}/{j.epochs}", _fmt(j.loss), _fmt(j.val_loss), j.model_id or "-", created
        )
    console = _stdout_console()
    if jobs:
        console.print(table)
    else:
        console.print("no jobs" + (f" with status {ns.status}" if ns.status else ""))
    return 0


def _job_table(job: Job) -> Any:
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", no_wrap=True)
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("status", job.status + ("  (cancel requested)" if job.cancel_requested and not job.is_terminal else "")),
        ("epoch", f"{job.epoch}/{job.epochs}  ({job.progress:.0%})"),
        ("loss", _fmt(job.loss)),
        ("val_loss", _fmt(job.val_loss)),
        *((f"metrics.{k}", _fmt(v)) for k, v in job.metrics.items()),
        ("model", job.model_id or "-"),
        ("network", job.network_id),
        ("dataset", job.dataset_id),
        ("attempt", f"{job.attempt}/{job.max_attempts}"),
        ("created", _fmt(job.created_at)),
        ("started", _fmt(job.started_at)),
        ("finished", _fmt(job.finished_at)),
    ]
    if job.error is not None:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for k, v in rows:
        table.add_row(k, str(v))
    return table


def cmd_jobs_show(client: Client, ns: argparse.Namespace) -> int:
    job = client.jobs.get(ns.job_id)
    if ns.json:
        _out(_dumps(job.raw))
    else:
        _stdout_console().print(_job_table(job))
    return 0


def cmd_jobs_cancel(client: Client, ns: argparse.Namespace) -> int:
    job = client.jobs.cancel(ns.job_id)
    if ns.json:
        _out(_dumps(job.raw))
    elif job.status == "cancelled":
        _out(f"job {job.id} cancelled")
    else:
        _out(f"job {job.id} is {job.status}; it stops at its next batch boundary (cancel requested)")
    return 0
