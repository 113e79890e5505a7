"""Photo + words and like/dislike refinement: the formula, the service on a real small index, and
what the modifiers do to the results, measured.

The tiny CLIP has random weights: "red" means nothing to it, so these numbers check direction and
plumbing (results move towards the added words' vectors and away from the avoided ones, by the
amount the weight says), not that a real CLIP finds red shoes.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.catalogue.folders import discover
from core.errors import ShoeSearchError
from core.pipeline.ingest import IngestService
from core.search.query_mix import Term, mix, split_words, terms
from core.search.service import SearchService, build_where
from core.store.base import average_vector
from core.store.edge import EdgeStore
from core.store.qdrant import QdrantClientStore
from tools.sample_catalogue import make_catalogue


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- the formula


def test_mix_is_the_documented_weighted_sum():
    photo, red, suede = np.array([3.0, 0, 0]), np.array([0, 0.5, 0]), np.array([0, 0, 2.0])
    q = mix(photo, [red, suede], [0.8, -0.4])
    expected = _unit(_unit(photo) + 0.8 * _unit(red) - 0.4 * _unit(suede))
    np.testing.assert_allclose(q, expected, atol=1e-6)
    assert abs(np.linalg.norm(q) - 1) < 1e-6
    np.testing.assert_allclose(mix(photo, [red], [0.0]), [1, 0, 0], atol=1e-6)  # weight 0: the photo alone
    np.testing.assert_allclose(mix(None, [red, suede], [1.0, -1.0]), _unit([0, 1, -1]), atol=1e-6)  # words only
    with pytest.raises(ShoeSearchError, match="cancel the query out"):
        mix(None, [red, red], [1.0, -1.0])
    with pytest.raises(ShoeSearchError, match="Nothing to search with"):
        mix(None, [], [])


def test_words_are_split_and_weighted():
    assert split_words("red, high heel; patent\n  ,") == ["red", "high heel", "patent"]
    assert split_words(["red", "blue, green"]) == ["red", "blue", "green"]
    assert terms("red, patent", "suede", 0.5) == [Term("red", 0.5), Term("patent", 0.5), Term("suede", -0.5)]
    assert terms("", None) == []
    with pytest.raises(ShoeSearchError, match="between 0 and 5"):
        terms("red", "", 7)
    with pytest.raises(ShoeSearchError, match="At most 16 words"):
        terms(",".join(f"w{i}" for i in range(17)))


# --------------------------------------------------------------------------- on a small real index


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip_dir):
    from core.vision.embedder import ClipEmbedder
    from tests.conftest import BlobDetector

    root = tmp_path_factory.mktemp("mix")
    catalogue = make_catalogue(root / "shoes", factories=3, products_per_factory=6, variants_per_product=2)
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", batch_size=16, precision="fp32")
    store = EdgeStore(root / "data" / "qdrant-edge", "shoes")
    ingest = IngestService(store, embedder, BlobDetector(), root / "data", batch_size=16)
    for factory in ("factory_a", "factory_b", "factory_c"):
        ingest.add(discover(catalogue.factory_dir(factory)), factory)
    points = list(store.scroll(with_vectors=True))
    yield catalogue, store, SearchService(store, embedder, BlobDetector()), points
    store.close()


def assert_top_k(hits, points, query, k, leave_out=()):
    """`hits` are the k best crops for `query` by brute force: each hit's score is its true cosine, and
    the scores are the k best (near-identical variants may tie, in either order)."""
    true = {p.id: float(p.vector @ query) for p in points if p.id not in leave_out}
    assert len(hits) == k
    np.testing.assert_allclose([h.score for h in hits], [true[h.point_id] for h in hits], atol=1e-4)
    np.testing.assert_allclose([h.score for h in hits], sorted(true.values(), reverse=True)[:k], atol=1e-4)


def test_photo_plus_words_queries_the_mixed_vector(indexed):
    catalogue, _, search, points = indexed
    image = Image.open(catalogue.photos[4].path).convert("RGB")
    words = terms("red", "suede", 0.7)
    hits = search.search_image(image, top_k=10, words=words)
    photo = search.embedder.embed_images([image])[0]
    red, suede = search.embedder.embed_texts(["red", "suede"])
    query = mix(photo, [red, suede], [0.7, -0.7])
    assert_top_k(hits, points, query, 10)
    assert search.search_image(image, top_k=10, words=[]) == search.search_image(image, top_k=10)  # no words: as before


def test_a_crop_by_point_id_plus_words_leaves_the_crop_out(indexed):
    _, store, search, points = indexed
    target = points[7]
    words = terms("black", "", 1.0)
    hits = search.more_like_this(target.id, top_k=8, words=words)
    [black] = search.embedder.embed_texts(["black"])
    assert_top_k(hits, points, mix(target.vector, [black], [1.0]), 8, {target.id})
    only_b = search.more_like_this(target.id, where=build_where(["factory_b"]), top_k=5, words=words)
    assert only_b and {h.factory for h in only_b} == {"factory_b"}


def test_words_only_query(indexed):
    _, _, search, points = indexed
    found = [Term("white sneaker", 1.0), Term("leather", 0.5), Term("boot", -0.5)]
    hits = search.search_words(found, top_k=6)
    vectors = search.embedder.embed_texts([t.text for t in found])
    assert_top_k(hits, points, mix(None, vectors, [1.0, 0.5, -0.5]), 6)
    with pytest.raises(ShoeSearchError, match="Type a description"):
        search.search_words([])


class TextCache:
    """The tiny embedder, remembering text vectors (the measurement asks for the same two words often)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.dimension, self.cache = inner, inner.model_id, inner.dimension, {}

    def embed_texts(self, texts):
        missing = [t for t in texts if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.embed_texts(missing)))
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.dimension))


def _mean_cos_to(hits, points_by_id, vector):
    return float(np.mean([points_by_id[h.point_id].vector @ _unit(vector) for h in hits]))


def test_modifiers_move_results_the_intended_way(indexed, capsys):
    """Measured over every product's front photo (as an indexed crop, by its point id): as the
    weight grows, the top 10 results lie closer to the added word ("red") and further from the
    avoided one ("suede"), and fewer of them are the photo's own product. Printed as a table
    (README: "Photo + words")."""
    catalogue, _, base, points = indexed
    search = SearchService(base.store, TextCache(base.embedder))  # the same words, embedded once
    by_id = {p.id: p for p in points}
    fronts = [p for p in points if p.payload["photo_path"].endswith("front.jpg")
              or p.payload["photo_path"].endswith("front.png")]
    red, suede = search.embedder.embed_texts(["red", "suede"])
    rows = []
    for weight in (0.0, 0.25, 0.5, 1.0, 2.0):
        toward, away, same_product = [], [], []
        for crop in fronts:
            added = search.more_like_this(crop.id, top_k=10, words=terms("red", "", weight))
            avoided = search.more_like_this(crop.id, top_k=10, words=terms("", "suede", weight))
            toward.append(_mean_cos_to(added, by_id, red))
            away.append(_mean_cos_to(avoided, by_id, suede))
            same_product.append(np.mean([(h.factory, h.product_id) == (crop.payload["factory"], crop.payload["product_id"])
                                         for h in added[:2]]))
        rows.append((weight, float(np.mean(toward)), float(np.mean(away)), float(np.mean(same_product))))
    with capsys.disabled():
        print(f"\n{len(fronts)} query crops, top 10 | weight | cos(hits, 'red'), + red | "
              "cos(hits, 'suede'), − suede | own product in the top 2, + red")
        for weight, toward, away, same in rows:
            print(f"| {weight:.2f} | {toward:.4f} | {away:.4f} | {same:.2f} |")
    towards = [r[1] for r in rows]
    aways = [r[2] for r in rows]
    assert all(b >= a - 1e-6 for a, b in zip(towards, towards[1:])) and towards[-1] > towards[0] + 0.01
    assert all(b <= a + 1e-6 for a, b in zip(aways, aways[1:])) and aways[-1] < aways[0] - 0.01
    assert rows[-1][3] < rows[0][3]  # words at twice the photo's weight pull away from the photo's product


# --------------------------------------------------------------------------- like / dislike


def test_refine_equals_the_recommend_formula_and_leaves_the_examples_out(indexed):
    _, _, search, points = indexed
    liked, disliked = [points[3], points[9]], [points[20]]
    hits = search.refine([p.id for p in liked], [p.id for p in disliked], top_k=10)
    target = _unit(average_vector([p.vector for p in liked], [p.vector for p in disliked]))
    examples = {p.id for p in liked + disliked}
    assert_top_k(hits, points, target, 10, examples)
    assert not examples & {h.point_id for h in hits}
    # Dislikes alone: best_score, results as far from the disliked crop as the store goes.
    away = search.refine([], [points[20].id], top_k=5)
    matrix = np.stack([p.vector for p in points])
    furthest = np.sort(matrix @ points[20].vector)[:5]  # best_score: -sigmoid(cosine to the disliked crop)
    np.testing.assert_allclose([h.score for h in away], [-0.5 * (c / (1 + abs(c)) + 1) for c in furthest], atol=1e-4)
    filtered = search.refine([points[3].id], [], where=build_where(["factory_c"]), top_k=4)
    assert len(filtered) == 4 and {h.factory for h in filtered} == {"factory_c"}


def test_refine_min_score_is_a_cosine_for_best_score(indexed):
    _, _, search, points = indexed
    hits = search.refine([points[3].id], [points[30].id], top_k=100, min_score=0.9, strategy="best_score")
    # best_score keeps a crop when it is nearer the liked crop than the disliked one; min_score 0.9
    # then means: cosine to the liked crop at least 0.9.
    expected = {p.id for p in points if p.id not in (points[3].id, points[30].id)
                and p.vector @ points[3].vector >= 0.9 and p.vector @ points[3].vector > p.vector @ points[30].vector}
    assert hits and {h.point_id for h in hits} == expected


def test_refine_errors_are_clear(indexed):
    _, _, search, points = indexed
    with pytest.raises(ShoeSearchError, match="Mark results as liked or disliked first"):
        search.refine([], [])
    with pytest.raises(ShoeSearchError, match="is both liked and disliked"):
        search.refine([points[1].id], [points[1].id])
    with pytest.raises(ShoeSearchError, match="'nope' is not a crop id"):
        search.refine(["nope"])
    with pytest.raises(ShoeSearchError, match="No indexed crop with id 00000000-0000-0000-0000-000000000009"):
        search.refine([points[1].id, "00000000-0000-0000-0000-000000000009"])
    with pytest.raises(ShoeSearchError, match="needs at least one liked crop"):
        search.refine([], [points[1].id], strategy="average_vector")
    with pytest.raises(ShoeSearchError, match="Unknown strategy 'mean'"):
        search.refine([points[1].id], strategy="mean")


def test_refine_gives_the_same_answers_on_both_stores(indexed):
    """The same points in qdrant-client's local mode: the same refined results as Edge."""
    from qdrant_client import QdrantClient

    _, store, search, points = indexed
    other = QdrantClientStore(QdrantClient(":memory:"), "shoes", "qdrant-client :memory:")
    other.ensure_collection(store.info().model, store.info().dimension)
    other.upsert(points)
    twin = SearchService(other, search.embedder)
    for liked, disliked, strategy in (([3, 9], [20], None), ([], [20, 21], None), ([5], [6], "sum_scores"),
                                      ([5, 40], [], "best_score")):
        ids = ([points[i].id for i in liked], [points[i].id for i in disliked])
        edge = search.refine(*ids, top_k=12, strategy=strategy)
        client = twin.refine(*ids, top_k=12, strategy=strategy)
        np.testing.assert_allclose([h.score for h in edge], [h.score for h in client], atol=1e-4)
        # near-identical variants tie: any order among them, and at the cut either one
        cut = edge[-1].score + 1e-4
        assert {h.point_id for h in edge if h.score > cut} == {h.point_id for h in client if h.score > cut}
        assert [h.point_id for h in edge] == [h.point_id for h in client] or \
            len({round(h.score, 4) for h in edge}) < len(edge)
    other.close()


def test_with_a_projection_head_refine_uses_the_head_and_words_stay_raw(indexed, tmp_path):
    """Liked crops are photos: refinement searches the head's collection with projected vectors.
    Words live in the raw CLIP space: photo + words searches the raw collection."""
    from core.quality.head_index import HeadIndex
    from core.quality.tune import HeadInfo, ProjectionHead

    catalogue, store, base, points = indexed
    weight = np.random.default_rng(5).normal(size=(8, store.info().dimension)).astype(np.float32)
    head = ProjectionHead(weight, HeadInfo(store.info().model, store.info().dimension, 8, "f" * 16, "mnr", 1, 1, 1, 1))
    head_store = EdgeStore(tmp_path / "head", "shoes-head")
    try:
        index = HeadIndex(head, head_store)
        index.sync_from(store)
        search = SearchService(store, base.embedder, head_index=index)
        liked, disliked = [points[2], points[8]], [points[15]]
        hits = search.refine([p.id for p in liked], [p.id for p in disliked], top_k=6)
        projected = [type(p)(p.id, p.payload, head.apply(p.vector)) for p in points]
        target = _unit(average_vector(head.apply(np.stack([p.vector for p in liked])),
                                      head.apply(np.stack([p.vector for p in disliked]))))
        assert_top_k(hits, projected, target, 6, {p.id for p in liked + disliked})

        image = Image.open(catalogue.photos[1].path).convert("RGB")
        mixed = search.search_image(image, top_k=5, words=terms("red", "", 1.0))
        photo = base.embedder.embed_images([image])[0]
        [red] = base.embedder.embed_texts(["red"])
        assert_top_k(mixed, points, mix(photo, [red], [1.0]), 5)
    finally:
        head_store.close()
