"""The UI's photo + words, photo by URL, like/dislike and results-by-product behaviour, through the
handlers on a small real index."""

from __future__ import annotations

import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image


def _factory_counts(hits):
    counts = {}
    for hit in hits:
        counts[hit["payload"]["factory"]] = counts.get(hit["payload"]["factory"], 0) + 1
    return counts


def test_results_by_product_count_the_other_crops(handlers):
    grouped = handlers.search_text("boot", [], top_k=12, one_per_product=True)
    assert len(grouped.hits) == 12
    for (_, caption), hit in zip(grouped.gallery, grouped.hits):
        factory, product = hit["payload"]["factory"], hit["payload"]["product_id"]
        others = handlers.store.count({"factory": [factory], "product_id": [product]}) - 1
        assert others >= 2  # 3 photos a product, a crop or more each
        assert caption == f"{factory} · {product} · {hit['score']:.3f} · +{others} more crops"
    # Within the filters: only the product's crops that pass them are counted (here a group holding
    # two of A101's three crops).
    from search_ui.handlers import group_payload_key

    a101 = [p.id for p in handlers.store.scroll({"factory": ["factory_a"], "product_id": ["A101"]})]
    handlers.store.set_payload(a101[:2], {group_payload_key("dup-test"): "dup-test"})
    in_group = handlers.search_text("boot", [], top_k=12, one_per_product=True, group="dup-test")
    assert [c.split(" · ")[3:] for _, c in in_group.gallery] == [["+1 more crop"]]
    # Not grouped: every crop, no count.
    every = handlers.search_text("boot", [], top_k=12)
    assert all("more crop" not in caption for _, caption in every.gallery)


def test_status_counts_hits_per_factory(handlers):
    results = handlers.search_text("sandal", ["factory_a", "factory_c"], top_k=7)
    first, second = results.status.split("  \n")
    assert first == "7 results for “sandal”"
    counts = _factory_counts(results.hits)
    ordered = sorted(counts.items(), key=lambda c: (-c[1], c[0]))
    assert second == "by factory: " + " · ".join(f"{name.replace('_', chr(92) + '_')} {n}" for name, n in ordered)
    assert set(counts) <= {"factory_a", "factory_c"} and sum(counts.values()) == 7
    grouped = handlers.search_text("sandal", [], top_k=5, one_per_product=True)
    assert grouped.status.startswith("5 results for “sandal” (one per product)  \nby factory: ")


def test_photo_plus_words(handlers, sample):
    photo = str(sample.photos[0].path)
    plain = handlers.search_image(photo, 0, [], top_k=10)
    mixed = handlers.search_image(photo, 0, [], top_k=10, text="red, <b>patent</b>", text_weight=0.5,
                                  not_text="suede")
    assert mixed.status.split("  \n")[0] == (
        "10 results for the photo (shoe 1 of 1 · Footwear 0.90) + “red” + “&lt;b&gt;patent&lt;/b&gt;” − “suede” (words ×0.5)")
    assert [h["score"] for h in mixed.hits] != [h["score"] for h in plain.hits]
    zero = handlers.search_image(photo, 0, [], top_k=10, text="red", text_weight=0)
    assert [h["point_id"] for h in zero.hits] == [h["point_id"] for h in plain.hits]
    assert handlers.search_image(photo, 0, [], text="red", text_weight=9).status == \
        "⚠️ The words' weight must lie between 0 and 5 (got 9)."
    assert not handlers.search_image(photo, 0, [], text="red", not_text="red").status.startswith("⚠️")  # the photo stays
    target = plain.hits[1]["point_id"]
    crop = handlers.more_like_this(target, [], top_k=5, text="black")
    assert crop.status.split("  \n")[0] == \
        "5 results for more like the selected crop (the crop itself left out) + “black” (words ×1)"
    assert target not in {h["point_id"] for h in crop.hits}


def test_crop_as_query(handlers):
    results = handlers.search_text("boot", [], top_k=3)
    hit = results.hits[1]
    thumbnail, note = handlers.crop_as_query(hit["point_id"], results.hits)
    assert Path(thumbnail).is_file() and Path(thumbnail).is_relative_to(handlers.data_dir)
    assert note.startswith(f"Searching with the indexed crop {hit['payload']['factory'].replace('_', chr(92) + '_')}")
    assert handlers.crop_as_query("", results.hits) == (None, "⚠️ Click a result first, then search with it.")


def test_like_dislike_marks_and_refine(handlers):
    results = handlers.search_text("sneaker", [], top_k=6)
    ids = [h["point_id"] for h in results.hits]
    liked, disliked, labels, note = handlers.mark([], [], {}, ids[0], results.hits, like=True)
    liked, disliked, labels, note = handlers.mark(liked, disliked, labels, ids[1], results.hits, like=True)
    liked, disliked, labels, note = handlers.mark(liked, disliked, labels, ids[2], results.hits, like=False)
    assert (liked, disliked) == (ids[:2], [ids[2]])
    payload = results.hits[2]["payload"]
    assert labels[ids[2]] == f"{payload['factory']} · {payload['product_id']}"
    assert note == f"👎 disliked {labels[ids[2]]}: Refine searches with 2 liked and 1 disliked."
    # Disliking a liked crop moves it.
    liked, disliked, labels, _ = handlers.mark(liked, disliked, labels, ids[1], results.hits, like=False)
    assert (liked, disliked) == ([ids[0]], [ids[2], ids[1]])
    assert handlers.mark(liked, disliked, labels, "", results.hits, like=True)[3].startswith("⚠️ Click a result")

    refined = handlers.refine(liked, disliked, ["factory_b"], top_k=4)
    assert refined.status.split("  \n")[0] == "4 results for 1 liked and 2 disliked crops (those left out)"
    assert len(refined.hits) == 4 and not set(ids[:3]) & {h["point_id"] for h in refined.hits}
    assert {h["payload"]["factory"] for h in refined.hits} == {"factory_b"}
    direct = handlers.search.refine(liked, disliked, where={"factory": ["factory_b"]}, top_k=4)
    assert [h["point_id"] for h in refined.hits] == [h.point_id for h in direct]
    assert handlers.refine([], []).status == "⚠️ Mark results as liked or disliked first, then refine."
    assert handlers.refine(["nope"], []).status.startswith("⚠️ 'nope' is not a crop id")


# --------------------------------------------------------------------------- photos by URL


@pytest.fixture
def photo_server(sample):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(sample.root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _url(server, sample, k):
    return f"{server}/{sample.photos[k].path.relative_to(sample.root)}"


def test_photo_by_url(handlers, sample, photo_server):
    url = _url(photo_server, sample, 4)
    refused = handlers.search_image(None, 0, [], image_url=url)
    assert refused.hits == [] and refused.status.startswith("⚠️ The image URL cannot be used: 127.0.0.1 is a loopback")
    photo, regions, note = handlers.fetch_url(url)
    assert photo is None and regions == [] and note == refused.status

    handlers.settings = handlers.settings.model_copy(update={"image_url_allow_private": True})
    found = handlers.search_image(None, 0, [], top_k=3, image_url=url)
    assert found.hits[0]["payload"]["photo_path"] == str(sample.photos[4].path) and found.hits[0]["score"] > 0.999
    photo, regions, note = handlers.fetch_url(url)
    assert isinstance(photo, Image.Image) and photo.size == Image.open(sample.photos[4].path).size
    assert [label for _, label in regions][-1] == "whole photo" and re.match(r"\d shoe\(s\) detected", note)
    missing = handlers.search_image(None, 0, [], image_url=f"{photo_server}/none.jpg")
    assert missing.status == "⚠️ The image URL cannot be used: the server answered 404 File not found."
    handlers.settings = handlers.settings.model_copy(update={"image_urls": False})
    assert "IMAGE_URLS=false" in handlers.search_image(None, 0, [], image_url=url).status


def test_a_large_photo_by_url_searches_as_the_same_file(handlers, tmp_path):
    """Past DECODE_MAX_SIDE a URL photo is reduced as a query file is: the same hits and scores."""
    import numpy as np

    rng = np.random.default_rng(5)
    large = tmp_path / "large.jpg"
    Image.fromarray(rng.integers(0, 255, size=(45, 60, 3), dtype=np.uint8)).resize((2400, 1800), Image.BICUBIC) \
        .save(large, format="JPEG", quality=90)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        handlers.settings = handlers.settings.model_copy(update={"image_url_allow_private": True})
        url = f"http://127.0.0.1:{httpd.server_address[1]}/large.jpg"
        by_url = handlers.search_image(None, 0, [], top_k=5, image_url=url)
        by_file = handlers.search_image(str(large), 0, [], top_k=5)
        assert by_url.hits and [(h["point_id"], h["score"]) for h in by_url.hits] == \
            [(h["point_id"], h["score"]) for h in by_file.hits]
        assert max(handlers.fetch_url(url)[0].size) <= handlers.settings.decode_max_side
    finally:
        httpd.shutdown()
        httpd.server_close()
