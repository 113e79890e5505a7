"""Search: embed a query (text or photo), then ask the store with payload filters.

Also photo + words (`core.search.query_mix`: one formula) and like / dislike refinement (the store's
recommend query over the liked and disliked crops' stored vectors).

Every query can collapse products linked across factories in the review (`collapse_linked`): the
results of one link group become one result, its best crop, listing the group's other products
(`Hit.linked`: "also sold as factory_b/B-77"). That happens here, for the CLI, the UI and the API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.domain.types import Detection, Hit, LinkedProduct
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
COLLAPSE_OVERFETCH = 4  # collapsing linked products asks the store for this many times top-k crops first
COLLAPSE_MAX_FETCH = 1000  # ... and for more, up to this many, while fewer than top-k results remain
# 'factory/product_id' -> every product of its link group (core.duplicates.review.linked_products)
ProductLinks = Mapping[str, Sequence[str]]


def collapse_linked(hits: Sequence[Hit], links: ProductLinks) -> list[Hit]:
    """One result per group of linked products: the group's best hit (`hits` are best first) stays
    where it ranks, with the group's other products in `linked` (best first; each with its best
    crop among `hits`, or no score when none was hit); the group's later hits are folded into it.
    Hits of products linked to nothing are kept as they are."""
    kept: list[Hit] = []
    first: dict[str, int] = {}  # link group -> where its result is in `kept`
    best: dict[str, dict[str, Hit]] = {}  # link group -> product -> its best hit
    for hit in hits:
        name = f"{hit.factory}/{hit.product_id}"
        group = links.get(name)
        if not group:
            kept.append(hit)
            continue
        if group[0] not in first:
            first[group[0]] = len(kept)
            kept.append(hit)
        best.setdefault(group[0], {}).setdefault(name, hit)
    for group_id, at in first.items():
        hit = kept[at]
        own = f"{hit.factory}/{hit.product_id}"
        others = []
        for name in links[own]:
            if name != own:
                found = best[group_id].get(name)
                factory, _, product = name.partition("/")
                others.append(LinkedProduct(factory, product, found.score if found else None,
                                            found.point_id if found else None))
        others.sort(key=lambda p: (p.score is None, -(p.score or 0.0), p.name))
        kept[at] = replace(hit, linked=tuple(others))
    return kept


class SearchService:
    """Text, photo and more-like-this queries against one collection."""

    def __init__(self, store: Store, embedder: Embedder, detector: Detector | None = None,
                 crop_margin: float = 0.08, head_index=None, background_remover=None,
                 product_links: Callable[[], ProductLinks] | None = None) -> None:
        self.store = store
        # The review's product links, read at each collapsing query (so a link made a moment ago counts).
        self.product_links = product_links or dict
        self.embedder = embedder
        self.detector = detector or NoDetector()
        self.crop_margin = crop_margin
        self.head_index = head_index  # photo queries through a tuned head; text stays raw
        self.background_remover = background_remover  # the same treatment as the indexed crops

    def _top(self, run: Callable[[int], list[Hit]], top_k: int, collapse: bool) -> list[Hit]:
        """`run(limit)`'s hits; with `collapse`, linked products collapsed (`collapse_linked`), asking
        the store for more crops while fewer than `top_k` results remain and it has more."""
        links = self.product_links() if collapse else None
        if not links:
            return run(top_k)
        cap = max(COLLAPSE_MAX_FETCH, top_k)
        limit = min(top_k * COLLAPSE_OVERFETCH, cap)
        while True:
            hits = run(limit)
            kept = collapse_linked(hits, links)
            if len(kept) >= top_k or len(hits) < limit or limit >= cap:
                return kept[:top_k]
            limit = min(limit * 4, cap)

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
                      min_score: float | None = None, collapse_linked: bool = False) -> list[Hit]:
        self._check_ready()
        return self._top(lambda k: self.store.query(vector, where=where, limit=k, score_threshold=min_score),
                         top_k, collapse_linked)

    def search_text(self, text: str, where: Where | None = None, top_k: int = 10,
                    min_score: float | None = None, collapse_linked: bool = False) -> TextHits:
        """Hits for a description. A text over the model's token limit (CLIP: 77) is searched by
        its start; the result says so (`truncated`, `notice`)."""
        if not text or not text.strip():
            raise ShoeSearchError("Type a description to search for, e.g. 'white leather high-top sneaker'.")
        self._check_ready()
        query = self.embedder.fit_text(text)
        vector = self.embedder.embed_texts([query.text])[0]
        return TextHits(self._top(lambda k: self.store.query(vector, where=where, limit=k, score_threshold=min_score),
                                  top_k, collapse_linked), query)

    def query_crops(self, image: Image.Image) -> list[QueryCrop]:
        """Shoes detected in a query photo (most confident first), then the whole photo."""
        whole, _ = prepare_crop(image, None, self.crop_margin)  # as ingest prepares crops (core.vision.crops)
        found = self.detector.detect([whole])[0]
        crops = [QueryCrop(prepare_crop(whole, d.box, self.crop_margin)[0], d)
                 for d in sorted(found, key=lambda d: -d.confidence)]
        return crops + [QueryCrop(whole, None)]

    def search_image(self, image: Image.Image, where: Where | None = None, top_k: int = 10,
                     min_score: float | None = None, words: Sequence[Term] = (),
                     collapse_linked: bool = False) -> list[Hit]:
        """Search with a photo region as it is (pick one from `query_crops` first if needed);
        with `words`, the photo plus those modifiers (`core.search.query_mix`)."""
        self._check_ready()
        vector = self.embedder.embed_images(model_inputs([image], self.background_remover))[0]
        if words:
            return self._top(lambda k: self._words_query(vector, words, where, k, min_score), top_k, collapse_linked)
        return self._top(lambda k: self._photo_query(vector, where, k, min_score), top_k, collapse_linked)

    def search_words(self, words: Sequence[Term], where: Where | None = None, top_k: int = 10,
                     min_score: float | None = None, collapse_linked: bool = False) -> list[Hit]:
        """Words only, several of them weighted (the first usually at 1: the description itself)."""
        if not words:
            raise ShoeSearchError("Type a description to search for, e.g. 'white leather high-top sneaker'.")
        self._check_ready()
        return self._top(lambda k: self._words_query(None, words, where, k, min_score), top_k, collapse_linked)

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
                       words: Sequence[Term] = (), collapse_linked: bool = False) -> list[Hit]:
        """Search with a stored point's own vector (no model needed, unless `words` modify it).

        The point itself would always be hit 1 (similarity 1.0), which tells a person nothing,
        so it is left out unless `include_self`.
        """
        [found] = self._stored_vectors([point_id])
        if words:
            self._check_ready()
            leave_out = frozenset() if include_self else frozenset({found.id})
            return self._top(lambda k: self._words_query(found.vector, words, where, k, min_score, leave_out),
                             top_k, collapse_linked)
        if include_self:
            return self._top(lambda k: self._photo_query(found.vector, where, k, min_score), top_k, collapse_linked)
        return self._top(lambda k: [h for h in self._photo_query(found.vector, where, k + 1, min_score)
                                    if h.point_id != found.id][:k], top_k, collapse_linked)

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
               top_k: int = 10, min_score: float | None = None, strategy: str | None = None,
               collapse_linked: bool = False) -> list[Hit]:
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

        def run(k: int) -> list[Hit]:
            hits = store.recommend(vectors[:len(liked)], vectors[len(liked):], where=where,
                                   limit=k + len(examples), score_threshold=threshold, strategy=strategy)
            return [h for h in hits if h.point_id not in examples][:k]

        return self._top(run, top_k, collapse_linked)

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
