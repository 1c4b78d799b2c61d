"""Blob storage in the database: datasets, checkpoints and weights as chunked rows."""

from app.storage.blobs import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    BlobRef,
    BlobTooLarge,
    delete_blob,
    gc_orphans,
    get_blob,
    iter_blob,
    put_blob,
)

__all__ = [
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobRef",
    "BlobTooLarge",
    "delete_blob",
    "gc_orphans",
    "get_blob",
    "iter_blob",
    "put_blob",
]
