"""Search: embed a query (text or photo), then ask the store with payload filters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.detector import Detector, NoDetector
from core.embedder import Embedder, QueryText
from core.errors import EmptyIndex, ShoeSearchError
from core.images import expand_box
from core.models import Detection, Hit
from core.store import Store, Where, check_model

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class QueryCrop:
    """A candidate region of a query photo: a detected shoe, or the whole photo."""

    image: Image.Image
    detection: Detection | None

    @property
    def label(self) -> str:
        if self.detection is None:
            return "whole photo"
        return f"{self.detection.label} {self.detection.confidence:.2f}"


class TextHits(list):
    """The hits of a text query (a list of Hit), with the query as the model read it."""

    def __init__(self, hits: Sequence[Hit], query: QueryText) -> None:
        super().__init__(hits)
        self.query = query

    @property
    def truncated(self) -> bool:
        """Was the query longer than the text model reads (so only its start was searched)?"""
        return self.query.truncated

    @property
    def notice(self) -> str:
        """One line to show the user when the query was truncated, else empty."""
        return self.query.notice


def build_where(factories: Sequence[str] | None = None, product_ids: Sequence[str] | None = None) -> Where | None:
    """A store filter from the user's choices; empty choices filter nothing."""
    where: dict[str, list[str]] = {}
    if factories:
        where["factory"] = list(factories)
    if product_ids:
        where["product_id"] = list(product_ids)
    return where or None


class SearchService:
    """Text, photo and more-like-this queries against one collection."""

    def __init__(self, store: Store, embedder: Embedder, detector: Detector | None = None,
                 crop_margin: float = 0.08, head_index=None, background_remover=None) -> None:
        self.store = store
        self.embedder = embedder
        self.detector = detector or NoDetector()
        self.crop_margin = crop_margin
        self.head_index = head_index  # photo queries through a tuned head; text stays raw
        self.background_remover = background_remover  # the same treatment as the indexed crops

    def _photo_query(self, raw_vector, where, top_k, min_score) -> list[Hit]:
        if self.head_index is not None:
            return self.head_index.query(raw_vector, where=where, limit=top_k, score_threshold=min_score)
        return self.store.query(raw_vector, where=where, limit=top_k, score_threshold=min_score)

    def _check_ready(self) -> None:
        info = self.store.info()
        if info is None or self.store.count() == 0:
            raise EmptyIndex(f"The index ({self.store.location}) is empty: add photos first with `ingest add FOLDER`.")
        check_model(info, self.store.collection, self.store.location, self.embedder.model_id, self.embedder.dimension)

    def search_vector(self, vector, where: Where | None = None, top_k: int = 10,
                      min_score: float | None = None) -> list[Hit]:
        self._check_ready()
        return self.store.query(vector, where=where, limit=top_k, score_threshold=min_score)

    def search_text(self, text: str, where: Where | None = None, top_k: int = 10,
                    min_score: float | None = None) -> TextHits:
        """Hits for a description. A text over the model's token limit (CLIP: 77) is searched by
        its start; the result says so (`truncated`, `notice`)."""
        if not text or not text.strip():
            raise ShoeSearchError("Type a description to search for, e.g. 'white leather high-top sneaker'.")
        self._check_ready()
        query = self.embedder.fit_text(text)
        vector = self.embedder.embed_texts([query.text])[0]
        return TextHits(self.store.query(vector, where=where, limit=top_k, score_threshold=min_score), query)

    def query_crops(self, image: Image.Image) -> list[QueryCrop]:
        """Shoes detected in a query photo (most confident first), then the whole photo."""
        found = self.detector.detect([image])[0]
        crops = [
            QueryCrop(image.crop(expand_box(d.box, self.crop_margin, image.width, image.height)), d)
            for d in sorted(found, key=lambda d: -d.confidence)
        ]
        return crops + [QueryCrop(image, None)]

    def search_image(self, image: Image.Image, where: Where | None = None, top_k: int = 10,
                     min_score: float | None = None) -> list[Hit]:
        """Search with a photo region as it is (pick one from `query_crops` first if needed)."""
        self._check_ready()
        if self.background_remover is not None:
            image = self.background_remover.remove([image])[0]
        vector = self.embedder.embed_images([image])[0]
        return self._photo_query(vector, where, top_k, min_score)

    def more_like_this(self, point_id: str, where: Where | None = None, top_k: int = 10,
                       min_score: float | None = None, include_self: bool = False) -> list[Hit]:
        """Search with a stored point's own vector (no model needed).

        The point itself would always be hit 1 (similarity 1.0), which tells a person nothing,
        so it is left out unless `include_self`.
        """
        point_id = str(point_id or "").strip()
        if not _is_point_id(point_id):
            raise ShoeSearchError(f"'{point_id[:80]}' is not a crop id: pick a result first (ids look like "
                                  "3f2b1c4e-...-...).")
        found = self.store.retrieve([point_id], with_vectors=True)
        if not found or found[0].vector is None:
            raise ShoeSearchError(f"No indexed crop with id {point_id}.")
        if include_self:
            return self._photo_query(found[0].vector, where, top_k, min_score)
        hits = self._photo_query(found[0].vector, where, top_k + 1, min_score)
        return [h for h in hits if h.point_id != found[0].id][:top_k]

    def stats(self) -> dict[str, Any]:
        return index_stats(self.store)


def _is_point_id(text: str) -> bool:
    """Point ids are UUIDs; anything else is refused before it reaches a store."""
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def index_stats(store: Store) -> dict[str, Any]:
    """Points, photos, per-factory counts, model and location of the index (no model needed)."""
    info = store.info()
    crops = store.facet("factory")
    photos = store.facet("factory", where={"crop_index": [0]})  # every photo has exactly one crop 0
    return {
        "location": store.location,
        "collection": store.collection,
        "model": info.model if info else None,
        "dimension": info.dimension if info else None,
        "points": sum(crops.values()),
        "photos": sum(photos.values()),
        "factories": {name: {"crops": crops[name], "photos": photos.get(name, 0)} for name in sorted(crops)},
    }
