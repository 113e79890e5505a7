"""Search: embed a query (text or photo), then ask the store with payload filters.

Also photo + words (`core.search.query_mix`: one formula) and like / dislike refinement (the store's
recommend query over the liked and disliked crops' stored vectors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.domain.types import Detection, Hit
from core.errors import EmptyIndex, ShoeSearchError
from core.search.query_mix import Term, mix
from core.store.base import RECOMMEND_STRATEGIES, Store, Where, check_model
from core.vision.crops import model_inputs, prepare_crop
from core.vision.detector import Detector, NoDetector
from core.vision.embedder import Embedder, QueryText, text_model_of

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


MAX_EXAMPLES = 64  # liked + disliked crops in one refinement


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
        check_model(info, self.store.collection, self.store.location, self.embedder.model_id, self.embedder.dimension,
                    text_model_of(self.embedder))

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
        whole, _ = prepare_crop(image, None, self.crop_margin)  # as ingest prepares crops (core.vision.crops)
        found = self.detector.detect([whole])[0]
        crops = [QueryCrop(prepare_crop(whole, d.box, self.crop_margin)[0], d)
                 for d in sorted(found, key=lambda d: -d.confidence)]
        return crops + [QueryCrop(whole, None)]

    def search_image(self, image: Image.Image, where: Where | None = None, top_k: int = 10,
                     min_score: float | None = None, words: Sequence[Term] = ()) -> list[Hit]:
        """Search with a photo region as it is (pick one from `query_crops` first if needed);
        with `words`, the photo plus those modifiers (`core.search.query_mix`)."""
        self._check_ready()
        vector = self.embedder.embed_images(model_inputs([image], self.background_remover))[0]
        if words:
            return self._words_query(vector, words, where, top_k, min_score)
        return self._photo_query(vector, where, top_k, min_score)

    def search_words(self, words: Sequence[Term], where: Where | None = None, top_k: int = 10,
                     min_score: float | None = None) -> list[Hit]:
        """Words only, several of them weighted (the first usually at 1: the description itself)."""
        if not words:
            raise ShoeSearchError("Type a description to search for, e.g. 'white leather high-top sneaker'.")
        self._check_ready()
        return self._words_query(None, words, where, top_k, min_score)

    def _words_query(self, base, words: Sequence[Term], where, top_k, min_score,
                     leave_out: frozenset[str] = frozenset()) -> list[Hit]:
        """`base` (a raw CLIP vector, or None) mixed with the words. Words live in the raw CLIP
        space, so these queries skip a projection head, as text queries do."""
        vectors = self.embedder.embed_texts([t.text for t in words]) if words else []
        query = mix(base, vectors, [t.weight for t in words])
        hits = self.store.query(query, where=where, limit=top_k + len(leave_out), score_threshold=min_score)
        return [h for h in hits if h.point_id not in leave_out][:top_k]

    def more_like_this(self, point_id: str, where: Where | None = None, top_k: int = 10,
                       min_score: float | None = None, include_self: bool = False,
                       words: Sequence[Term] = ()) -> list[Hit]:
        """Search with a stored point's own vector (no model needed, unless `words` modify it).

        The point itself would always be hit 1 (similarity 1.0), which tells a person nothing,
        so it is left out unless `include_self`.
        """
        [found] = self._stored_vectors([point_id])
        if words:
            self._check_ready()
            return self._words_query(found.vector, words, where, top_k, min_score,
                                     frozenset() if include_self else frozenset({found.id}))
        if include_self:
            return self._photo_query(found.vector, where, top_k, min_score)
        hits = self._photo_query(found.vector, where, top_k + 1, min_score)
        return [h for h in hits if h.point_id != found.id][:top_k]

    def _stored_vectors(self, point_ids: Sequence[str]) -> list:
        """The stored points (with raw vectors) of `point_ids`, in order; a bad or unknown id is
        a ShoeSearchError naming it."""
        ids = [str(p or "").strip() for p in point_ids]
        for point_id in ids:
            if not _is_point_id(point_id):
                raise ShoeSearchError(f"'{point_id[:80]}' is not a crop id: pick a result first (ids look like "
                                      "3f2b1c4e-...-...).")
        found = {p.id: p for p in self.store.retrieve(ids, with_vectors=True) if p.vector is not None}
        missing = [p for p in ids if p not in found]
        if missing:
            raise ShoeSearchError(f"No indexed crop with id {', '.join(missing[:5])}"
                                  + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "") + ".")
        return [found[p] for p in ids]

    def refine(self, liked: Sequence[str] = (), disliked: Sequence[str] = (), where: Where | None = None,
               top_k: int = 10, min_score: float | None = None, strategy: str | None = None) -> list[Hit]:
        """Crops like the `liked` ones and unlike the `disliked` ones (ids of indexed crops), the
        examples themselves left out; the store's recommend query over their stored vectors.

        `strategy` (see `Store.recommend`): None = average_vector when something is liked, else
        best_score (the only one that takes dislikes alone). With best_score, `min_score` is a
        cosine to the best liked crop (turned into that strategy's scaled score).
        """
        liked = list(dict.fromkeys(str(p).strip() for p in liked or [] if str(p).strip()))
        disliked = list(dict.fromkeys(str(p).strip() for p in disliked or [] if str(p).strip()))
        if not liked and not disliked:
            raise ShoeSearchError("Mark results as liked or disliked first, then refine.")
        both = set(liked) & set(disliked)
        if both:
            raise ShoeSearchError(f"Crop {sorted(both)[0]} is both liked and disliked: keep it in one list.")
        if len(liked) + len(disliked) > MAX_EXAMPLES:
            raise ShoeSearchError(f"At most {MAX_EXAMPLES} liked and disliked crops in all "
                                  f"(got {len(liked) + len(disliked)}): clear some.")
        strategy = strategy or ("average_vector" if liked else "best_score")
        if strategy not in RECOMMEND_STRATEGIES:
            raise ShoeSearchError(f"Unknown strategy '{strategy}': one of {', '.join(RECOMMEND_STRATEGIES)}.")
        if strategy == "average_vector" and not liked:
            raise ShoeSearchError("The average_vector strategy needs at least one liked crop "
                                  "(best_score takes dislikes alone).")
        points = self._stored_vectors(liked + disliked)
        vectors = [p.vector for p in points]
        store = self.store
        if self.head_index is not None:  # stored crops are photos: refine where photo queries search
            vectors = list(self.head_index.head.apply(np.stack(vectors)))
            store = self.head_index.store
        threshold = min_score
        if min_score is not None and strategy == "best_score":
            threshold = 0.5 * (min_score / (1 + abs(min_score)) + 1)
        examples = {p.id for p in points}
        hits = store.recommend(vectors[:len(liked)], vectors[len(liked):], where=where,
                               limit=top_k + len(examples), score_threshold=threshold, strategy=strategy)
        return [h for h in hits if h.point_id not in examples][:top_k]

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
        "text_model": (info.text_model or None) if info else None,
        "points": sum(crops.values()),
        "photos": sum(photos.values()),
        "factories": {name: {"crops": crops[name], "photos": photos.get(name, 0)} for name in sorted(crops)},
    }
