"""Vectors of a projection head, in a collection of their own beside the raw CLIP one.

The raw collection keeps working untouched (text search needs it: the head was trained on
photos only); photo queries and more-like-this go through the head when PROJECTION_HEAD is set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from core.domain.types import Hit
from core.pipeline.batches import iter_batches
from core.quality.tune import ProjectionHead
from core.store.base import Store, StoredPoint, Where


def head_collection(collection: str, head: ProjectionHead) -> str:
    return f"{collection}-head-{head.info.head_id}"


class HeadIndex:
    """A head and the store holding its projected vectors (same point ids and payloads)."""

    def __init__(self, head: ProjectionHead, store: Store) -> None:
        self.head = head
        self.store = store
        self.model_id = f"{head.info.base_model}+head-{head.info.head_id}"

    def check_base(self, base_model: str) -> None:
        from core.errors import SchemaMismatch

        if base_model != self.head.info.base_model:
            raise SchemaMismatch(f"PROJECTION_HEAD was trained on '{self.head.info.base_model}' vectors, but the "
                                 f"index holds '{base_model}' ones: tune a new head or unset PROJECTION_HEAD.")

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        self.store.ensure_collection(self.model_id, self.head.info.dim_out)
        projected = self.head.apply([p.vector for p in points])
        self.store.upsert([StoredPoint(p.id, p.payload, v) for p, v in zip(points, projected)])

    def sync_from(self, source: Store, progress: Callable[[int], None] | None = None) -> int:
        """Project every raw point into the head collection (no model needed), then delete head
        points whose raw point is gone (left by a killed run); returns how many were projected."""
        done = 0
        ids: set[str] = set()
        for batch in iter_batches(source.scroll(with_vectors=True, batch_size=1024), 1024):
            self.upsert(batch)
            ids.update(p.id for p in batch)
            done += len(batch)
            if progress:
                progress(done)
        orphans = [p.id for p in self.store.scroll(batch_size=1024) if p.id not in ids]
        for batch in iter_batches(orphans, 1024):
            self.store.delete(batch)
        return done

    def query(self, raw_vector, where: Where | None = None, limit: int = 10,
              score_threshold: float | None = None) -> list[Hit]:
        return self.store.query(self.head.apply(raw_vector), where=where, limit=limit, score_threshold=score_threshold)
