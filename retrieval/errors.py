"""Exception tree of the retrieval package.

Third-party errors (PIL, torch, Qdrant) are translated into these at the
boundary with ``raise ... from exc`` so callers (CLI, API) map one family of
errors to exit codes and HTTP statuses in one place.
"""

from __future__ import annotations

__all__ = [
    "CatalogueError",
    "EncoderError",
    "EncoderMismatchError",
    "ImageError",
    "ImageTooLargeError",
    "IndexNotFoundError",
    "InvalidQueryError",
    "RetrievalError",
    "StoreError",
    "UnsupportedImageError",
]


class RetrievalError(Exception):
    """Base class of every error raised by :mod:`retrieval`."""


class CatalogueError(RetrievalError):
    """The catalogue folder or CSV cannot be used at all (missing, unreadable, no usable rows)."""


class ImageError(RetrievalError):
    """An image could not be fetched or decoded (truncated file, I/O error)."""


class ImageTooLargeError(ImageError):
    """An image exceeds the byte limit or the pixel limit (decompression-bomb guard)."""


class UnsupportedImageError(ImageError):
    """The bytes are not an image format Tandem can decode."""


class EncoderError(RetrievalError):
    """An encoder could not be loaded or failed to encode."""


class StoreError(RetrievalError):
    """The vector store failed (connection, collection, engine error)."""


class IndexNotFoundError(StoreError):
    """No index exists yet for the configured collection."""


class EncoderMismatchError(StoreError):
    """The index was built by a different encoder than the one asked to query or extend it."""


class InvalidQueryError(RetrievalError):
    """A query is malformed: no text and no image, k out of range, unknown filter field."""
