"""Datasets as arrays: parsing JSON rows and CSV uploads, label encoding, and the npz bytes stored in blobs.

Classification targets are stored as class indices into `classes` (sorted label values, the order of the output
units); regression targets as an (n, k) float array. Nothing here touches the database.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.errors import InvalidRequest, PayloadTooLarge

FORMAT = "backprop.dataset/2"
_BLOCK_ROWS = 8192
# The CSV separators a file may use: the first line decides (see _sniff_delimiter), or the upload names one.
DELIMITERS = (",", ";", "\t", "|")


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
        """npz with x, y and `meta`: the format, task and class labels as UTF-8 JSON (labels mix str, int and bool,
        which no NumPy dtype keeps apart), so the bytes, and the sha256 stored for them, tell apart datasets whose
        indices agree but whose labels differ. Column names stay out: the same data as CSV and as JSON is one
        dataset. Blobs of format 1 have no `meta`; readers take x and y alone."""
        meta = json.dumps(
            {"format": FORMAT, "task": self.task, "classes": self.classes},
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        buf = io.BytesIO()
        np.savez(buf, x=self.x, y=self.y, meta=np.frombuffer(meta, dtype=np.uint8))
        return buf.getvalue()

    @staticmethod
    def arrays_from_bytes(data: bytes) -> tuple[NDArray[np.float64], NDArray[Any]]:
        """(x, y) of a stored dataset, of either format."""
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
        try:
            y = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        except OverflowError:  # a JSON integer past float64's range (about 1.8e308)
            i = next(i for i, v in enumerate(values) if isinstance(v, int) and abs(v) >= 2**1024 - 2**970)
            raise InvalidRequest(
                f"row {i} is too large for a regression target (the limit is about 1.8e308)", field=f"{field}[{i}]"
            ) from None
        _finite(y, field)
        return y, task, None
    if kinds == {"float"} or kinds == {"int", "float"}:
        bad = [i for i, v in enumerate(values) if isinstance(v, float) and not v.is_integer()]
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


def _cell_float(s: str) -> float:
    """float(s) for a CSV cell, or ValueError. Surrounding whitespace is fine, but not what float() alone also
    reads and no CSV reader takes for a number: digit groups ('1_000') and non-ASCII digits ('١', '１')."""
    if "_" in s or not s.isascii():
        raise ValueError(f"not a number: {s!r}")
    return float(s)


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(_cell_float(s))
    except ValueError:
        return False


def _sniff_delimiter(lines: Iterator[str], seen: list[str]) -> str:
    """The separator (of DELIMITERS) that splits the first non-blank line into the most fields; a tie (a one-column
    file) goes to the comma. Lines read are appended to `seen`, to be parsed again."""
    for line in lines:
        seen.append(line)
        if line.strip(' \t\r\n"' + "".join(DELIMITERS)):
            counts = [len(next(csv.reader([line], delimiter=d), [])) for d in DELIMITERS]
            return DELIMITERS[counts.index(max(counts))]
    return ","


def from_csv(lines: Iterable[str], *, delimiter: str | None = None, **kwargs: Any) -> ParsedDataset:
    """Parse CSV text (see _from_csv) separated by `delimiter`, or by what the first line suggests when None; a
    malformed file (e.g. a cell over the size limit) is an InvalidRequest."""
    rest = iter(lines)
    seen: list[str] = []
    reader = None
    try:
        if delimiter is None:
            delimiter = _sniff_delimiter(rest, seen)
        reader = csv.reader(itertools.chain(seen, rest), delimiter=delimiter)
        return _from_csv(reader, delimiter=delimiter, **kwargs)
    except csv.Error as exc:
        line = reader.line_num if reader is not None else len(seen)
        raise InvalidRequest(f"line {line} of the CSV file cannot be parsed: {exc}", field="file") from None


def _delimiter_name(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _from_csv(
    reader: Iterator[list[str]],
    *,
    targets: list[str],
    header: bool | None = None,
    task: str | None = None,
    delimiter: str = ",",
    max_rows: int,
    max_features: int,
) -> ParsedDataset:
    """Parse CSV text. `targets` names target columns (header names, or 0-based indices); default: the last one.
    `delimiter` is only named in messages: the reader already splits on it."""
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
    if header:
        column_of: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in column_of:
                raise InvalidRequest(
                    f"duplicate column name {name[:100]!r} (columns {column_of[name] + 1} and {i + 1}); "
                    f"every column needs its own name",
                    field="file",
                )
            column_of[name] = i
    target_idx: list[int] = []
    for t in targets or [names[-1]]:
        t = t.strip()
        if t in names:
            target_idx.append(names.index(t))
        elif re.fullmatch(r"-?[0-9]{1,9}", t) and -width <= int(t) < width:  # not isdigit(): '²' is a digit too
            target_idx.append(int(t) % width)
        else:
            raise InvalidRequest(
                f"target column {t[:100]!r} is not in the CSV; {_columns_found(names, header, delimiter)}",
                field="target",
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
            text = "".join(row)
            # float() alone would do, but for '1_000' and non-ASCII digits (see _cell_float): rare, so only a row
            # holding an underscore or a non-ASCII character anywhere pays for the stricter parse.
            if "_" in text or not text.isascii():
                rows_x.append([_cell_float(row[i]) for i in feat_idx])
            else:
                rows_x.append([float(row[i]) for i in feat_idx])
            if len(rows_x) >= _BLOCK_ROWS:
                blocks.append(np.asarray(rows_x, dtype=np.float64))
                rows_x.clear()
        except ValueError:
            bad = next(i for i in feat_idx if not _is_number(row[i]))
            raise InvalidRequest(
                f"line {line_no}, column {names[bad]!r}: {row[bad][:100]!r} is not a number", field="file"
            ) from None
        labels = [row[i].strip() for i in target_idx]
        if not all(labels):
            missing = target_idx[labels.index("")]
            raise InvalidRequest(
                f"line {line_no}, column {names[missing]!r}: the target is empty; every row needs its label or value",
                field="file",
            )
        raw_y.append(labels)
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
            target_values = [[_cell_float(v) for v in r] for r in raw_y]
        except ValueError:
            raise InvalidRequest("several target columns must all be numeric (regression)", field="target") from None
    else:
        target_values = _target_column([r[0] for r in raw_y], task)
    y, task, classes = encode_targets(target_values, task, field="target")
    return ParsedDataset(
        x=x,
        y=y,
        task=task,
        classes=classes,
        feature_names=[names[i] for i in feat_idx],
        target_names=[names[i] for i in target_idx],
    )


def _columns_found(names: list[str], header: bool, delimiter: str) -> str:
    """What the CSV's columns are, for a message about a target that is not one of them."""
    split = f"split on {_delimiter_name(delimiter)}"
    if len(names) == 1:
        split += " (none of ',', ';', tab or '|' separates the first line; the upload's delimiter field can name one)"
    if not header:
        return (
            f"its first line is data, not a header (send header=true if it names the columns), so its "
            f"{len(names)} column(s), {split}, are named by 0-based index: 0 to {len(names) - 1}"
        )
    shown = ", ".join(repr(n[:100]) for n in names[:50]) + (", ..." if len(names) > 50 else "")
    return f"its header has {len(names)} column(s), {split}: {shown}"


def _target_column(col: list[str], task: str | None) -> list[Any]:
    """One CSV target column: numbers if every cell is one, else the text labels. Numbers stand for class labels
    only where that loses nothing: '007', '07' and '7' are one number but three labels, so such a column keeps
    its text (a regression target is a value, so there '1.0' and '1' are rightly the same)."""
    if not all(_is_number(v) for v in col):
        return col
    values: list[Any]
    if all(v.lstrip("+-").isdigit() for v in col):
        values = [int(v) for v in col]  # int(v), not int(float(v)): past 2**53 a float drops digits
    else:
        values = [float(v) for v in col]
        if task != "classification":
            return values
    if task != "regression" and len(set(values)) != len(set(col)):
        return col
    return values


def _chain(first: list[str] | None, rest: Iterator[list[str]]) -> Iterator[list[str]]:
    if first is not None:
        yield first
    yield from rest
