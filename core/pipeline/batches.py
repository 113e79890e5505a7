"""Batching of streams (photos, points) so memory stays bounded by the batch size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def iter_batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most `size` items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
