"""Blobs (datasets, checkpoints, weights) as chunked rows in the `blob_chunk` table (DESIGN.md §7).

A blob is the bytes of its chunks in `seq` order (0, 1, ...). Every blob has at least one chunk (an empty
blob is one empty chunk), so "missing" and "empty" differ. Blobs are immutable once written; the row that
owns one (`dataset`, `checkpoint`, `model`) stores its `blob_id`, `sha256` and `nbytes`.

Writing is two-phase: `put_blob` writes unreferenced chunks (commit them in their own short transaction if
they are large), then one transaction inserts the owning row. `gc_orphans` removes chunks that no row
references once they are old enough that no writer can still be about to publish them.

Functions take the caller's `Session` and only `flush()`: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, insert, select
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import BlobChunk, Checkpoint, Dataset, Model

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024

# Every table whose rows own a blob; `gc_orphans` keeps anything these reference.
_BLOB_OWNERS = (Dataset.blob_id, Checkpoint.blob_id, Model.blob_id)


class BlobError(Exception):
    """Base class of blob storage errors."""


class BlobNotFound(BlobError):
    def __init__(self, blob_id: str) -> None:
        super().__init__(f"blob {blob_id} not found")
        self.blob_id = blob_id


class BlobCorrupt(BlobError):
    """The stored bytes do not match the expected sha256 or size, or a chunk is missing."""


class BlobTooLarge(BlobError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"blob exceeds {max_bytes} bytes")
        self.max_bytes = max_bytes


@dataclass(frozen=True, slots=True)
class BlobRef:
    blob_id: str
    sha256: str  # lowercase hex
    nbytes: int


def put_blob(
    session: Session,
    data: bytes | bytearray | memoryview | Iterable[bytes | bytearray | memoryview],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_bytes: int | None = None,
) -> BlobRef:
    """Store `data` (bytes, or an iterable of byte pieces of any size) as a new blob.

    Pieces are re-cut into `chunk_size` chunks and inserted as they fill, so a stream never sits in memory
    whole. Raises `BlobTooLarge` once more than `max_bytes` arrive; the chunks already flushed are the
    caller's to roll back.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    pieces: Iterable[bytes | bytearray | memoryview] = (
        [data] if isinstance(data, bytes | bytearray | memoryview) else data
    )
    blob_id = new_id()
    digest = hashlib.sha256()
    nbytes = 0
    seq = 0
    buffer = bytearray()

    def write(chunk: bytes) -> None:
        nonlocal seq
        # Core insert: no ORM identity map holding every chunk of a large blob.
        session.execute(insert(BlobChunk).values(blob_id=blob_id, seq=seq, data=chunk, created_at=utcnow()))
        seq += 1

    for piece in pieces:
        view = memoryview(piece).cast("B")  # byte-addressed, without copying
        nbytes += view.nbytes
        if max_bytes is not None and nbytes > max_bytes:
            raise BlobTooLarge(max_bytes)
        digest.update(view)
        while view:
            if not buffer and len(view) >= chunk_size:
                write(bytes(view[:chunk_size]))  # whole chunks straight from the input: no second copy
                view = view[chunk_size:]
                continue
            take = min(chunk_size - len(buffer), len(view))
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == chunk_size:
                write(bytes(buffer))
                buffer.clear()
    if buffer or seq == 0:
        write(bytes(buffer))
    session.flush()
    return BlobRef(blob_id=blob_id, sha256=digest.hexdigest(), nbytes=nbytes)


def iter_blob(
    session: Session, blob_id: str, *, sha256: str | None = None, nbytes: int | None = None
) -> Iterator[bytes]:
    """Yield a blob's chunks in order, one query per chunk (memory stays at one chunk).

    Raises `BlobNotFound` before yielding anything if the blob does not exist. With `sha256`/`nbytes`
    given, raises `BlobCorrupt` after the last chunk if the bytes do not match, so a consumer must not act
    on the data until the iterator is exhausted.
    """
    n_chunks = session.execute(select(func.count(), func.max(BlobChunk.seq)).where(BlobChunk.blob_id == blob_id)).one()
    count, max_seq = n_chunks
    if count == 0:
        raise BlobNotFound(blob_id)
    if max_seq != count - 1:
        raise BlobCorrupt(f"blob {blob_id} has {count} chunks but last seq {max_seq}")
    digest = hashlib.sha256()
    total = 0
    for seq in range(count):
        chunk = session.execute(
            select(BlobChunk.data).where(BlobChunk.blob_id == blob_id, BlobChunk.seq == seq)
        ).scalar_one_or_none()
        if chunk is None:
            raise BlobCorrupt(f"blob {blob_id} lost chunk {seq} while being read")
        chunk = bytes(chunk)  # psycopg returns memoryview-like buffers for bytea
        digest.update(chunk)
        total += len(chunk)
        yield chunk
    if nbytes is not None and total != nbytes:
        raise BlobCorrupt(f"blob {blob_id} has {total} bytes, expected {nbytes}")
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise BlobCorrupt(f"blob {blob_id} sha256 {digest.hexdigest()} does not match {sha256}")


def get_blob(session: Session, blob_id: str, *, sha256: str | None = None, nbytes: int | None = None) -> bytes:
    """A whole blob as bytes, checked against `sha256`/`nbytes` when given (`BlobCorrupt` otherwise)."""
    return b"".join(iter_blob(session, blob_id, sha256=sha256, nbytes=nbytes))


def get_blob_ref(session: Session, ref: BlobRef) -> bytes:
    """`get_blob` checked against a `BlobRef` (or a row's stored `blob_id`, `sha256`, `nbytes`)."""
    return get_blob(session, ref.blob_id, sha256=ref.sha256, nbytes=ref.nbytes)


def blob_exists(session: Session, blob_id: str) -> bool:
    return session.execute(select(exists().where(BlobChunk.blob_id == blob_id))).scalar_one()


def delete_blob(session: Session, blob_id: str) -> int:
    """Delete a blob's chunks; returns how many there were (0 if it did not exist)."""
    result = cast(CursorResult[Any], session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob_id)))
    session.flush()
    return result.rowcount


def gc_orphans(session: Session, *, older_than: datetime, limit: int = 1000) -> list[str]:
    """Delete up to `limit` blobs that no dataset, checkpoint or model references and whose newest chunk
    was written before `older_than` (DESIGN.md: after 1 h). Returns the orphan ids found; the DELETE
    re-checks references, so one published in between (a writer that took longer than the age guard)
    is kept.

    The age guard protects blobs whose chunks are committed but whose owning row is not yet published.
    Soft-deleted rows still reference their blob: purge or repoint them first to free the space.
    """
    unreferenced = [~exists().where(column == BlobChunk.blob_id) for column in _BLOB_OWNERS]
    orphan_ids = list(
        session.execute(
            select(BlobChunk.blob_id)
            .where(*unreferenced)
            .group_by(BlobChunk.blob_id)
            .having(func.max(BlobChunk.created_at) < older_than)
            .order_by(BlobChunk.blob_id)
            .limit(limit)
        ).scalars()
    )
    if orphan_ids:
        # Re-check the references in the DELETE itself: a row published since the SELECT keeps its blob.
        session.execute(delete(BlobChunk).where(BlobChunk.blob_id.in_(orphan_ids), *unreferenced))
        session.flush()
    return orphan_ids
