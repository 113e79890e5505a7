"""Errors a user can act on. The CLI and the UI turn them into one clear line."""

from __future__ import annotations


class ShoeSearchError(Exception):
    """Base class: the message is what the user reads, so it says what to do next."""


class ModelUnavailable(ShoeSearchError):
    """A model (CLIP or detector) could not be found or loaded."""


class StoreUnavailable(ShoeSearchError):
    """The vector store cannot be reached or opened."""


class StoreLocked(StoreUnavailable):
    """Another process holds the embedded store."""


class SchemaMismatch(ShoeSearchError):
    """The collection was built with another embedding model or vector size."""


class EmptyIndex(ShoeSearchError):
    """Nothing has been ingested yet."""


class BadImage(ShoeSearchError):
    """A photo cannot be decoded (corrupt, unsupported, too large)."""


class ManifestError(ShoeSearchError):
    """A manifest CSV is malformed; the message names the line."""


class NotAFactoryFolder(ShoeSearchError):
    """A path given to `ingest add` is not one factory's folder of photos (empty, a file, a parent of factories)."""


class UnknownFactory(ShoeSearchError):
    """A factory filter names a factory the index does not hold."""


class DiskFull(ShoeSearchError):
    """Less free space than MIN_FREE_DISK_MB where a write would go: stopped before writing."""


class ReadOnlyData(ShoeSearchError):
    """DATA_DIR (or the store in it) cannot be written: reads work, writes are refused."""


class ImageUrlError(ShoeSearchError):
    """A photo given by URL cannot be fetched or used (refused address, limit, not an image)."""
