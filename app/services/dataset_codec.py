"""Datasets as arrays: parsing JSON rows and CSV uploads, label encoding, and the npz bytes stored in blobs.

Classification targets are stored as class indices into `classes` (sorted label values, the order of the output
units); regression targets as an (n, k) float array. Nothing here touches the database.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.errors import InvalidRequest, PayloadTooLarge

FORMAT = "backprop.dataset/1"
_BLOCK_ROWS = 8192


@dataclass
class ParsedDataset:
    x: NDArray[np.float64]
    y: NDArray[Any]  # int64 (n,) class indices, or float64 (n, k)
    task: str  # classification | regression
    classes: list[Any] | None = None
    feature_names: list[str] | None = None
    target_names: list[str] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_targets(self) -> int:
        return len(self.classes) if self.classes is not None else int(self.y.shape[1])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, x=self.x, y=self.y)
        return buf.getvalue()

    @staticmethod
    def arrays_from_bytes(data: bytes) -> tuple[NDArray[np.float64], NDArray[Any]]:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return npz["x"], npz["y"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_limits(n: int, d: int, *, max_rows: int, max_features: int) -> None:
    if n > max_rows:
        raise PayloadTooLarge(f"dataset has {n} rows; the limit (max_dataset_rows) is {max_rows}", field="features")
    if d > max_features:
        raise InvalidRequest(f"dataset has {d} features; the limit (max_features) is {max_features}", field="features")


def encode_targets(
    values: Sequence[Any], task: str | None, field: str = "targets"
) -> tuple[NDArray[Any], str, list[Any] | None]:
    """(y, task, classes) from one target per row: labels become sorted classes and indices; numbers stay numbers."""
    if not values:
        raise InvalidRequest("no targets given", field=field)
    if isinstance(values[0], list | tuple):
        if task == "classification":
            raise InvalidRequest("classification targets must be one label per row, not lists", field=field)
        width = len(values[0])
        if width == 0:
            raise InvalidRequest("target rows must not be empty", field=f"{field}[0]")
        for i, row in enumerate(values):
            if not isinstance(row, list | tuple) or len(row) != width:
                raise InvalidRequest(
                    f"target rows must all have {width} values; row {i} differs", field=f"{field}[{i}]"
                )
        y = np.asarray(values, dtype=np.float64)
        _finite(y, field)
        return y, "regression", None
    kinds = {
        "str"
        if isinstance(v, str)
        else "bool"
        if isinstance(v, bool)
        else "int"
        if isinstance(v, int)
        else "float"
        if isinstance(v, float)
        else type(v).__name__
        for v in values
    }
    if not kinds <= {"str", "bool", "int", "float"}:
        raise InvalidRequest("targets must be numbers, strings or booleans", field=field)
    if len(kinds) > 1 and not kinds <= {"int", "float"}:
        raise InvalidRequest(f"targets mix types ({', '.join(sorted(kinds))}); use one type of label", field=field)
    if task is None:
        task = "regression" if kinds == {"float"} or kinds == {"int", "float"} else "classification"
    if task == "regression":
        if kinds - {"int", "float"}:
            raise InvalidRequest("regression targets must be numbers", field=field)
        y = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        _finite(y, field)
        return y, task, None
    if kinds == {"float"} or kinds == {"int", "float"}:
        bad = [i for i, v in enumerate(values) if not float(v).is_integer()]
        if bad:
            raise InvalidRequest(
                f"class labels must be integers, strings or booleans; row {bad[0]} is {values[bad[0]]!r}",
                field=f"{field}[{bad[0]}]",
            )
        values = [int(v) for v in values]
    classes = sorted(set(values))
    if len(classes) < 2:
        raise InvalidRequest(f"classification needs at least 2 distinct classes, got {classes}", field=field)
    index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    return y, "classification", classes


def _finite(a: NDArray[np.float64], field: str) -> None:
    if not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a))[0][0])
        raise InvalidRequest(f"row {row} contains NaN or Inf", field=f"{field}[{row}]")


def from_json(
    features: list[list[float]],
    targets: list[Any],
    *,
    task: str | None = None,
    feature_names: list[str] | None = None,
    max_rows: int,
    max_features: int,
) -> ParsedDataset:
    n = len(features)
    if n == 0:
        raise InvalidRequest("the dataset is empty: give at least one row", field="features")
    d = len(features[0])
    if d == 0:
        raise InvalidRequest("rows need at least one feature", field="features[0]")
    _check_limits(n, d, max_rows=max_rows, max_features=max_features)
    for i, row in enumerate(features):
        if len(row) != d:
            raise InvalidRequest(
                f"every row needs {d} features (like row 0); row {i} has {len(row)}", field=f"features[{i}]"
            )
    if len(targets) != n:
        raise InvalidRequest(f"{len(targets)} targets for {n} feature rows; give one per row", field="targets")
    x = np.asarray(features, dtype=np.float64)
    _finite(x, "features")
    if feature_names is not None and len(feature_names) != d:
        raise InvalidRequest(f"{len(feature_names)} feature_names for {d} features", field="feature_names")
    y, task, classes = encode_targets(targets, task)
    return ParsedDataset(x=x, y=y, task=task, classes=classes, feature_names=feature_names)


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def from_csv(lines: Iterable[str], **kwargs: Any) -> ParsedDataset:
    """Parse CSV text (see _from_csv); a malformed file (e.g. a cell over the size limit) is an InvalidRequest."""
    reader = csv.reader(lines)
    try:
        return _from_csv(reader, **kwargs)
    except csv.Error as exc:
        raise InvalidRequest(f"line {reader.line_num} of the CSV file cannot be parsed: {exc}", field="file") from None


def _from_csv(
    reader: Iterator[list[str]],
    *,
    targets: list[str],
    header: bool | None = None,
    task: str | None = None,
    max_rows: int,
    max_features: int,
) -> ParsedDataset:
    """Parse CSV text. `targets` names target columns (header names, or 0-based indices); default: the last one."""
    first = next(reader, None)
    while first is not None and not any(cell.strip() for cell in first):
        first = next(reader, None)
    if first is None:
        raise InvalidRequest("the CSV file is empty", field="file")
    width = len(first)
    second = next(reader, None)
    if header is None:
        # A header cell is text where the data below it is a number (a text label column looks alike in both).
        header = any(
            not _is_number(c) and (second is None or (i < len(second) and _is_number(second[i])))
            for i, c in enumerate(first)
        )
        if second is not None and not header:
            header = all(not _is_number(c) for c in first) and not all(not _is_number(c) for c in second)
    names = [c.strip() for c in first] if header else [str(i) for i in range(width)]
    target_idx: list[int] = []
    for t in targets or [names[-1]]:
        t = t.strip()
        if t in names:
            target_idx.append(names.index(t))
        elif t.lstrip("-").isdigit() and -width <= int(t) < width:
            target_idx.append(int(t) % width)
        else:
            raise InvalidRequest(
                f"target column {t!r} is not in the CSV (columns: {', '.join(names[:50])})", field="target"
            )
    if len(set(target_idx)) != len(target_idx):
        raise InvalidRequest("a target column is named twice", field="target")
    feat_idx = [i for i in range(width) if i not in target_idx]
    if not feat_idx:
        raise InvalidRequest("no feature columns left besides the target(s)", field="target")
    _check_limits(0, len(feat_idx), max_rows=max_rows, max_features=max_features)
    # Parsed rows are packed into float64 blocks as they come: a large upload never sits in memory as Python
    # floats (about 4x the size), and the final array is one concatenation of the blocks.
    rows_x: list[list[float]] = []
    blocks: list[NDArray[np.float64]] = []
    raw_y: list[list[str]] = []
    line_no = 1

    def take(row: list[str]) -> None:
        if len(row) != width:
            raise InvalidRequest(f"line {line_no} has {len(row)} columns, expected {width}", field="file")
        try:
            rows_x.append([float(row[i]) for i in feat_idx])
            if len(rows_x) >= _BLOCK_ROWS:
                blocks.append(np.asarray(rows_x, dtype=np.float64))
                rows_x.clear()
        except ValueError:
            bad = next(i for i in feat_idx if not _is_number(row[i]))
            raise InvalidRequest(
                f"line {line_no}, column {names[bad]!r}: {row[bad]!r} is not a number", field="file"
            ) from None
        raw_y.append([row[i].strip() for i in target_idx])
        if len(raw_y) > max_rows:
            raise PayloadTooLarge(f"the CSV has more than {max_rows} rows; the limit is max_dataset_rows", field="file")

    if not header:
        take(first)
    for row in _chain(second, reader):
        line_no += 1
        if not row or not any(cell.strip() for cell in row):
            continue
        take(row)
    if not raw_y:
        raise InvalidRequest("the CSV has a header but no data rows", field="file")
    if rows_x:
        blocks.append(np.asarray(rows_x, dtype=np.float64))
    x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise InvalidRequest(f"data row {row} contains NaN or Inf", field="file")
    target_values: list[Any]
    if len(target_idx) > 1:
        try:
            target_values = [[float(v) for v in r] for r in raw_y]
        except ValueError:
            raise InvalidRequest("several target columns must all be numeric (regression)", field="target") from None
    else:
        col = [r[0] for r in raw_y]
        if all(_is_number(v) for v in col):
            nums = [float(v) for v in col]
            ints = all(v.lstrip("+-").isdigit() for v in col)
            target_values = [int(v) for v in nums] if ints else nums
        else:
            target_values = col
    y, task, classes = encode_targets(target_values, task, field="target")
    return ParsedDataset(
        x=x,
        y=y,
        task=task,
        classes=classes,
        feature_names=[names[i] for i in feat_idx],
        target_names=[names[i] for i in target_idx],
    )


def _chain(first: list[str] | None, rest: Iterator[list[str]]) -> Iterator[list[str]]:
    if first is not None:
        yield first
    yield from rest
