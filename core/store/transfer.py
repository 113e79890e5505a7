"""Export and import of points (vectors + payloads): backups and moves between backends.

Format: gzip-compressed JSON lines. Line 1 is a header (format, version, model, dimension,
source collection); every other line is one point `{"id", "vector", "payload"}`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import EmptyIndex, ShoeSearchError
from core.pipeline.batches import iter_batches
from core.store.base import Store, StoredPoint, Where

FORMAT = "shoe-search-points"
VERSION = 1


def export_points(store: Store, path: Path, where: Where | None = None,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write every point (matching `where`) to `path`; returns how many. Written atomically."""
    info = store.info()
    if info is None:
        raise EmptyIndex(f"Nothing to export: {store.location} has no collection yet.")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"format": FORMAT, "version": VERSION, "model": info.model,
                                 "dimension": info.dimension, "text_model": info.text_model,
                                 "collection": store.collection,
                                 "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
        for point in store.scroll(where, with_vectors=True, batch_size=1024):
            handle.write(json.dumps({"id": point.id, "vector": point.vector.tolist(), "payload": point.payload},
                                    ensure_ascii=False) + "\n")
            count += 1
            if progress and count % 1000 == 0:
                progress(count)
    tmp.replace(path)
    return count


def import_points(store: Store, path: Path, batch_size: int = 512,
                  progress: Callable[[int], None] | None = None) -> int:
    """Upsert the points of an export into `store` (same ids: rerunning adds nothing).

    The collection is created for the export's model, or must already hold that model.
    """
    try:
        handle = gzip.open(path, "rt", encoding="utf-8")
        header = json.loads(handle.readline())
    except (OSError, ValueError, EOFError) as exc:
        raise ShoeSearchError(f"{path} is not a points export (gzip JSON lines): {exc}") from exc
    if header.get("format") != FORMAT:
        raise ShoeSearchError(f"{path} is not a points export (format {header.get('format')!r}).")
    if header.get("version", 0) > VERSION:
        raise ShoeSearchError(f"{path} was written by a newer version (format version {header['version']}).")
    store.ensure_collection(header["model"], int(header["dimension"]), header.get("text_model"))  # older exports: not checked

    def points():
        for line_no, line in enumerate(handle, start=2):
            try:
                row = json.loads(line)
                yield StoredPoint(str(row["id"]), row["payload"], np.asarray(row["vector"], dtype=np.float32))
            except (ValueError, KeyError) as exc:
                raise ShoeSearchError(f"{path}: line {line_no}: not a point ({exc})") from exc

    count = 0
    with handle:
        for batch in iter_batches(points(), batch_size):
            store.upsert(batch)
            count += len(batch)
            if progress:
                progress(count)
    return count
