"""Search on a small real index: text, photo, more-like-this, filters, stats, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.catalogue.folders import discover
from core.errors import EmptyIndex, SchemaMismatch, ShoeSearchError
from core.pipeline.ingest import IngestService
from core.search.service import SearchService, build_where
from core.store.edge import EdgeStore
from tools.sample_catalogue import make_catalogue


@pytest.fixture
def indexed(tmp_path, tiny_embedder, blob_detector):
    catalogue = make_catalogue(tmp_path / "shoes", factories=3, products_per_factory=4, variants_per_product=1)
    store = EdgeStore(tmp_path / "data" / "qdrant-edge", "shoes")
    ingest = IngestService(store, tiny_embedder, blob_detector, tmp_path / "data", batch_size=8)
    for factory in ("factory_a", "factory_b", "factory_c"):
        ingest.add(discover(catalogue.factory_dir(factory)), factory)
    yield catalogue, store, SearchService(store, tiny_embedder, blob_detector)
    store.close()


def test_text_search_filtered_by_factory(indexed):
    _, store, search = indexed
    hits = search.search_text("white leather high-top sneaker", where=build_where(["factory_b"]), top_k=50)
    assert len(hits) == store.count({"factory": ["factory_b"]})
    assert {h.factory for h in hits} == {"factory_b"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    two = search.search_text("boot", where=build_where(["factory_a", "factory_c"]), top_k=100)
    assert {h.factory for h in two} == {"factory_a", "factory_c"}


def test_photo_search_finds_the_same_crop_first(indexed):
    catalogue, _, search = indexed
    photo = catalogue.photos[5]
    img = Image.open(photo.path).convert("RGB")
    crops = search.query_crops(img)
    assert crops[-1].detection is None and crops[-1].label == "whole photo"
    hits = search.search_image(crops[0].image, top_k=3)
    assert hits[0].payload["photo_path"] == str(photo.path) and hits[0].score > 0.999


def test_more_like_this_leaves_the_point_out_unless_asked(indexed):
    _, store, search = indexed
    target = next(iter(store.scroll({"factory": ["factory_c"]})))
    hits = search.more_like_this(target.id, top_k=5)
    assert len(hits) == 5 and target.id not in {h.point_id for h in hits}
    with_self = search.more_like_this(target.id, top_k=5, include_self=True)
    assert with_self[0].point_id == target.id and with_self[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.point_id for h in with_self[1:]] == [h.point_id for h in hits[:4]]
    with pytest.raises(ShoeSearchError, match="is not a crop id"):
        search.more_like_this("1; DROP TABLE")
    only_a = search.more_like_this(target.id, where=build_where(["factory_a"]), top_k=5)
    assert {h.factory for h in only_a} == {"factory_a"}
    with pytest.raises(ShoeSearchError, match="No indexed crop"):
        search.more_like_this("00000000-0000-0000-0000-000000000000")


def test_min_score_and_product_filter(indexed):
    _, store, search = indexed
    target = next(iter(store.scroll({"product_id": ["B101"]})))
    hits = search.more_like_this(target.id, where=build_where(product_ids=["B101"]), top_k=50, min_score=0.0)
    assert hits and {h.product_id for h in hits} == {"B101"}
    assert all(h.score >= 0.0 for h in hits)


def test_stats(indexed):
    catalogue, store, search = indexed
    stats = search.stats()
    assert stats["photos"] == len(catalogue.photos) == 24
    assert stats["points"] == store.count() and stats["model"] == "tiny-clip" and stats["dimension"] == 16
    assert {k: v["photos"] for k, v in stats["factories"].items()} == {"factory_a": 8, "factory_b": 8, "factory_c": 8}


def test_empty_index_and_empty_query_are_clear(tmp_path, tiny_embedder):
    store = EdgeStore(tmp_path / "edge", "shoes")
    try:
        search = SearchService(store, tiny_embedder)
        with pytest.raises(EmptyIndex, match="ingest add"):
            search.search_text("sneaker")
        with pytest.raises(ShoeSearchError, match="Type a description"):
            search.search_text("   ")
    finally:
        store.close()


def test_query_with_another_model_is_refused(indexed, tiny_embedder):
    _, store, _ = indexed

    class Renamed:
        model_id = "clip-ViT-B-32"
        dimension = 16

    with pytest.raises(SchemaMismatch, match="clip-ViT-B-32"):
        SearchService(store, Renamed()).search_text("boot")


LONG_DESCRIPTION = ("Classic white leather high-top sneaker with a padded collar, perforated toe box, gum rubber "
                    "cupsole and flat waxed laces; embossed logo on the heel tab, breathable mesh lining, "
                    "cushioned insole for all-day comfort, sizes 36-46. ")


def _reference_vector(embedder, text: str):
    """The text vector computed apart from the service: the tokenizer cuts at 77 tokens, then
    the CLIP text tower and its projection, normalized."""
    import torch

    module = embedder._model[0]
    tokens = module.tokenizer([" ".join(text.split())], truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        features = module.auto_model.get_text_features(**tokens)
    vector = getattr(features, "pooler_output", features)[0].numpy()
    return vector / np.linalg.norm(vector)


@pytest.mark.parametrize("length", [300, 100_000])
def test_text_longer_than_clip_reads_is_searched_by_its_start_and_says_so(indexed, tiny_embedder, length):
    _, store, search = indexed
    text = (LONG_DESCRIPTION * (length // len(LONG_DESCRIPTION) + 1))[:length]
    assert len(text) == length
    hits = search.search_text(text, top_k=5)
    assert len(hits) == 5 and hits.truncated
    tokens = len(tiny_embedder._model[0].tokenizer(" ".join(text.split()))["input_ids"])
    assert tokens > 77 and hits.query.tokens == tokens
    assert hits.notice.startswith(f"query truncated: {tokens:,} tokens, the CLIP text model reads only the first 77 "
                                  f"(up to \u201c...")
    assert hits.query.read.split() == " ".join(text.split())[:len(hits.query.read)].split()  # the query's start
    expected = store.query(_reference_vector(tiny_embedder, text), limit=5)
    assert [h.point_id for h in hits] == [h.point_id for h in expected]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=1e-5)


def test_short_text_is_not_truncated(indexed):
    _, _, search = indexed
    hits = search.search_text("white sneaker", top_k=3)
    assert len(hits) == 3 and not hits.truncated and hits.notice == "" and hits.query.tokens < 77


def test_ui_shows_the_truncation_notice(handlers):
    results = handlers.search_text(LONG_DESCRIPTION * 3, [], top_k=4)
    assert len(results.hits) == 4
    assert "⚠️ query truncated:" in results.status and "reads only the first 77" in results.status
    assert "query truncated" not in handlers.search_text("boot", [], top_k=4).status
    one_each = handlers.search_text(LONG_DESCRIPTION * 3, [], top_k=4, one_per_product=True)
    assert "query truncated" in one_each.status
