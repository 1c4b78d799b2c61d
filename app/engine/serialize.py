"""Self-describing bytes: an .npz archive whose `__meta__` entry is UTF-8 JSON and whose other entries are arrays.

Read back with `allow_pickle=False`: nothing here ever unpickles. Trained models and training checkpoints share
this container and differ in their `format` field.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import CheckpointError

META = "__meta__"


def pack(meta: dict[str, Any], arrays: dict[str, NDArray[Any]], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    payload: dict[str, Any] = dict(arrays)
    payload[META] = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), dtype=np.uint8)
    (np.savez_compressed if compress else np.savez)(buf, **payload)
    return buf.getvalue()


def unpack(data: bytes, *, expect_format: str,
           older: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """(meta, arrays) of an archive whose format is `expect_format` or one of the `older` ones it still reads."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"not a readable {expect_format} archive: {exc}") from exc
    raw = arrays.pop(META, None)
    if raw is None:
        raise CheckpointError(f"not a {expect_format} archive: no {META} entry")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupt {expect_format} metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (expect_format, *older):
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"expected a {expect_format} archive, got format {got!r}")
    return meta, arrays
