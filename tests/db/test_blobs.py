from __future__ import annotations

import hashlib
import os
from array import array
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db.base import new_id, utcnow
from app.db.models import BlobChunk, Dataset
from app.db.session import Database
from app.domain import DatasetKind
from app.storage.blobs import (
    BlobCorrupt,
    BlobNotFound,
    BlobRef,
    BlobTooLarge,
    blob_exists,
    delete_blob,
    gc_orphans,
    get_blob,
    get_blob_ref,
    iter_blob,
    put_blob,
)


def _chunk_count(db: Database, blob_id: str) -> int:
    with db.read_session() as session:
        return session.execute(
            select(func.count()).select_from(BlobChunk).where(BlobChunk.blob_id == blob_id)
        ).scalar_one()


@pytest.mark.parametrize(
    ("size", "n_chunks"),
    [(0, 1), (1, 1), (7, 1), (8, 2), (14, 2), (50, 8)],
)
def test_blob_round_trip_across_chunks(db: Database, size: int, n_chunks: int) -> None:
    data = os.urandom(size)
    with db.session() as session:
        ref = put_blob(session, data, chunk_size=7)
    assert ref == BlobRef(ref.blob_id, hashlib.sha256(data).hexdigest(), size)
    assert _chunk_count(db, ref.blob_id) == n_chunks
    with db.read_session() as session:
        assert get_blob_ref(session, ref) == data
        assert get_blob(session, ref.blob_id) == data


def test_put_blob_recuts_an_iterable_of_pieces(db: Database) -> None:
    pieces = [b"a" * 3, b"", b"b" * 10, bytearray(b"c" * 2), memoryview(b"d" * 9)]
    data = b"".join(bytes(p) for p in pieces)
    with db.session() as session:
        ref = put_blob(session, iter(pieces), chunk_size=5)
    with db.read_session() as session:
        chunks = list(iter_blob(session, ref.blob_id, sha256=ref.sha256, nbytes=ref.nbytes))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 4]
    assert b"".join(chunks) == data
    assert ref.sha256 == hashlib.sha256(data).hexdigest()


def test_empty_blob_differs_from_missing_blob(db: Database) -> None:
    with db.session() as session:
        ref = put_blob(session, [])
    with db.read_session() as session:
        assert get_blob(session, ref.blob_id, sha256=hashlib.sha256(b"").hexdigest(), nbytes=0) == b""
        assert blob_exists(session, ref.blob_id)
        with pytest.raises(BlobNotFound):
            get_blob(session, new_id())
        assert not blob_exists(session, new_id())


def test_tampered_chunk_is_detected_by_sha256(db: Database) -> None:
    with db.session() as session:
        ref = put_blob(session, b"x" * 20, chunk_size=8)
        session.execute(
            update(BlobChunk).where(BlobChunk.blob_id == ref.blob_id, BlobChunk.seq == 1).values(data=b"y" * 8)
        )
    with db.read_session() as session:
        assert get_blob(session, ref.blob_id) == b"x" * 8 + b"y" * 8 + b"x" * 4  # unchecked read
        with pytest.raises(BlobCorrupt, match="sha256"):
            get_blob_ref(session, ref)


def test_wrong_size_and_missing_chunk_are_detected(db: Database) -> None:
    with db.session() as session:
        ref = put_blob(session, b"x" * 20, chunk_size=8)
    with db.read_session() as session, pytest.raises(BlobCorrupt, match="bytes"):
        get_blob(session, ref.blob_id, nbytes=21)
    with db.session() as session:
        session.execute(BlobChunk.__table__.delete().where(BlobChunk.seq == 1))
    with db.read_session() as session, pytest.raises(BlobCorrupt, match="chunks"):
        get_blob(session, ref.blob_id)


def test_put_blob_stops_past_max_bytes(db: Database) -> None:
    with db.session() as session, pytest.raises(BlobTooLarge):
        put_blob(session, [b"x" * 6, b"x" * 6], chunk_size=4, max_bytes=10)
    with db.session() as session:
        ref = put_blob(session, b"x" * 10, chunk_size=4, max_bytes=10)
    assert ref.nbytes == 10


def test_delete_blob_removes_every_chunk(db: Database) -> None:
    with db.session() as session:
        ref = put_blob(session, b"x" * 20, chunk_size=8)
        keep = put_blob(session, b"keep")
    with db.session() as session:
        assert delete_blob(session, ref.blob_id) == 3
        assert delete_blob(session, ref.blob_id) == 0
    assert _chunk_count(db, ref.blob_id) == 0
    with db.read_session() as session:
        assert get_blob(session, keep.blob_id) == b"keep"


def test_gc_removes_only_old_unreferenced_blobs(db: Database) -> None:
    with db.session() as session:
        referenced = put_blob(session, b"dataset", chunk_size=3)
        orphan = put_blob(session, b"orphan", chunk_size=3)
        fresh_orphan = put_blob(session, b"fresh")
        session.add(
            Dataset(
                owner="alice",
                n_samples=1,
                n_features=1,
                n_targets=1,
                kind=DatasetKind.REGRESSION,
                sha256=referenced.sha256,
                nbytes=referenced.nbytes,
                blob_id=referenced.blob_id,
            )
        )
        # Age two blobs past the guard; the fresh orphan may still be about to be published.
        old = utcnow() - timedelta(hours=2)
        session.execute(
            update(BlobChunk).where(BlobChunk.blob_id.in_([referenced.blob_id, orphan.blob_id])).values(created_at=old)
        )
    with db.session() as session:
        deleted = gc_orphans(session, older_than=utcnow() - timedelta(hours=1))
    assert deleted == [orphan.blob_id]
    with db.read_session() as session:
        assert get_blob_ref(session, referenced) == b"dataset"
        assert get_blob_ref(session, fresh_orphan) == b"fresh"
        assert not blob_exists(session, orphan.blob_id)


def test_chunk_size_must_be_positive(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError, match="chunk_size"):
        put_blob(session, b"x", chunk_size=0)


def test_default_chunk_size_splits_large_blobs_into_4_mib_rows(db: Database) -> None:
    data = os.urandom(9 * 1024 * 1024)
    with db.session() as session:
        ref = put_blob(session, data)
    assert _chunk_count(db, ref.blob_id) == 3
    with db.read_session() as session:
        assert [len(c) for c in iter_blob(session, ref.blob_id)] == [4 << 20, 4 << 20, 1 << 20]
        assert get_blob_ref(session, ref) == data


def test_put_blob_counts_bytes_of_typed_buffers(db: Database) -> None:
    values = array("d", [1.0, 2.0, 3.0])  # a memoryview of it has 3 items of 8 bytes
    with db.session() as session:
        ref = put_blob(session, memoryview(values), chunk_size=16)
    assert ref.nbytes == 24
    with db.read_session() as session:
        assert get_blob_ref(session, ref) == values.tobytes()
