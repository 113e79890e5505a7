"""UI behaviour through the handlers, on a small real index."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.store import EdgeStore
from core.search_service import SearchService
from core.ingest_service import IngestService
from search_ui.handlers import Handlers
from tests.conftest import BlobDetector, two_shoes_photo


def test_factory_choices_carry_counts(handlers):
    choices = handlers.factory_choices()
    counts = handlers.store.facet("factory")
    assert choices == [(f"{name} ({counts[name]})", name) for name in ("factory_a", "factory_b", "factory_c")]


def test_text_search_gallery_captions_and_factory_filter(handlers):
    results = handlers.search_text("white sneaker", ["factory_b"], top_k=10)
    assert len(results.gallery) == len(results.hits) == 10
    for (thumb, caption), hit in zip(results.gallery, results.hits):
        assert caption.startswith("factory_b · ") and caption.endswith(f"{hit['score']:.3f}")
        assert Path(thumb).is_file() and Path(thumb).is_relative_to(handlers.data_dir)
    # The status says where the results come from, per factory, on a second line.
    assert results.status == "10 results for “white sneaker”  \nby factory: factory\\_b 10"


def test_one_result_per_product(handlers):
    results = handlers.search_text("boot", [], top_k=12, one_per_product=True)
    keys = [(h["payload"]["factory"], h["payload"]["product_id"]) for h in results.hits]
    assert len(keys) == len(set(keys)) == 12
    all_crops = handlers.search_text("boot", [], top_k=100)
    best = {}
    for h in all_crops.hits:
        best.setdefault((h["payload"]["factory"], h["payload"]["product_id"]), h["point_id"])
    assert [h["point_id"] for h in results.hits] == list(best.values())[:12]


def test_product_filter_contains_and_exact(handlers):
    contains = handlers.search_text("shoe", [], product="10", top_k=100)
    assert contains.hits and all("10" in h["payload"]["product_id"] for h in contains.hits)
    assert {h["payload"]["product_id"] for h in contains.hits} > {"A101"}
    exact = handlers.search_text("shoe", [], product="A101", product_exact=True, top_k=100)
    assert {h["payload"]["product_id"] for h in exact.hits} == {"A101"}


def test_min_score_filters_inside_the_query(handlers):
    target = handlers.search_text("shoe", [], top_k=1).hits[0]
    results = handlers.more_like_this(target["point_id"], [], min_score=0.99, top_k=100)
    assert results.hits and all(h["score"] >= 0.99 for h in results.hits)
    everything = handlers.more_like_this(target["point_id"], [], top_k=100)
    assert len(results.hits) < len(everything.hits)


def test_photo_search_with_detected_regions(handlers, tmp_path):
    query = two_shoes_photo(tmp_path / "query.jpg")
    image = Image.open(query)
    regions, note = handlers.detect(image)
    assert [label for _, label in regions] == ["shoe 1 of 2 · Footwear 0.90", "shoe 2 of 2 · Footwear 0.90",
                                               "whole photo"]
    assert note.startswith("2 shoe(s) detected")
    whole = handlers.search_image(image, -1, [], top_k=3)
    first = handlers.search_image(image, 0, ["factory_c"], top_k=3)
    assert whole.status.split("  \n")[0].endswith("(whole photo)")
    assert first.status == "3 results for the photo (shoe 1 of 2 · Footwear 0.90)  \nby factory: factory\\_c 3"
    assert {h["payload"]["factory"] for h in first.hits} == {"factory_c"}


def test_photo_search_finds_an_indexed_photo_first(handlers, sample):
    photo = sample.photos[4]
    results = handlers.search_image(str(photo.path), 0, [], top_k=3)
    assert results.hits[0]["payload"]["photo_path"] == str(photo.path) and results.hits[0]["score"] > 0.999


def test_unreadable_upload_and_empty_inputs_are_messages(handlers, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    assert handlers.search_image(str(bad)).status.startswith("⚠️ That photo cannot be used: not an image")
    assert handlers.search_image(None).status == "⚠️ Upload or paste a photo first."
    assert handlers.search_text("   ").status.startswith("⚠️ Type a description")
    assert handlers.more_like_this("").status == "⚠️ Select a result first."


def test_empty_index_is_a_message(ui_settings, tiny_embedder):
    store = EdgeStore(ui_settings.embedded_store_dir, "empty")
    try:
        empty = Handlers(ui_settings, store, SearchService(store, tiny_embedder),
                         IngestService(store, tiny_embedder, BlobDetector(), ui_settings.data_dir))
        results = empty.search_text("boot")
        assert results.gallery == [] and "is empty: add photos first" in results.status
        assert "(empty: add photos below" in empty.catalogue_markdown()
        assert empty.factory_choices() == []
    finally:
        store.close()


def test_hit_detail_draws_the_box_on_the_full_photo(handlers, tmp_path):
    photo = two_shoes_photo(tmp_path / "factory_d" / "D1" / "pair.jpg")
    handlers.add_photos([str(photo)], "factory_d")
    results = handlers.search_text("x", ["factory_d"], top_k=5)
    index = next(i for i, h in enumerate(results.hits) if h["payload"]["crop_index"] == 0)
    image, card, point_id = handlers.hit_detail(results.hits, index)
    hit = results.hits[index]
    assert point_id == hit["point_id"] and f"| Crop id | {point_id.replace('-', '-')} |" in card
    x1, y1, x2, y2 = hit["payload"]["box"]
    assert image.size == (400, 200)
    assert np.asarray(image)[y1 + (y2 - y1) // 2, x1][0] > 200  # red outline on the box edge
    # A card a person reads: factory and product as the title, then labelled rows, no JSON.
    assert card.startswith("### factory\\_d · pair\n") and f"**Similarity {hit['score']:.3f}**" in card
    assert f"| Photo size | 400 × 200 px, {photo.stat().st_size / 1024:,.0f} KB on disk |" in card
    assert f"| Crop box | {x1}, {y1} → {x2}, {y2} |" in card and "| Detected as | Footwear \\(0.90\\) |" in card
    assert "{" not in card
    assert handlers.hit_detail(results.hits, 99) == (None, "", "")


def test_more_like_this_leaves_the_query_crop_out(handlers):
    target = handlers.search_text("sandal", ["factory_a"], top_k=1).hits[0]
    results = handlers.more_like_this(target["point_id"], [], top_k=5)
    assert len(results.hits) == 5 and target["point_id"] not in {h["point_id"] for h in results.hits}
    first_line, factories = results.status.split("  \n")
    assert first_line == "5 results for more like the selected crop (the crop itself left out)"
    counts = {}
    for hit in results.hits:
        counts[hit["payload"]["factory"]] = counts.get(hit["payload"]["factory"], 0) + 1
    assert factories == "by factory: " + " · ".join(
        f"{name.replace('_', chr(92) + '_')} {n}" for name, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
    for bad in ("not-an-id", "' OR 1=1", "\x00", "9" * 5000):
        assert handlers.more_like_this(bad).status.startswith("⚠️ ") and "is not a crop id" in \
            handlers.more_like_this(bad).status


def test_thumbnails_outside_data_dir_are_never_served(handlers, tmp_path):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(secret)
    for evil in ("../secret.jpg", str(secret), "crops/../../secret.jpg"):
        assert handlers._thumbnail_path({"crop_path": evil}) is None


def test_add_photos_from_files_and_zip(handlers, tmp_path):
    loose = two_shoes_photo(tmp_path / "up" / "SKU9.jpg")
    archive = tmp_path / "up" / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        other = tmp_path / "z" / "front.jpg"
        other.parent.mkdir()
        Image.new("RGB", (300, 200), (30, 160, 60)).save(other)
        zf.write(other, "batch/P77/front.jpg")  # the usual `zip -r batch.zip batch/`: top folder unwrapped
        zf.writestr("../escape.jpg", loose.read_bytes())
        zf.writestr("notes.txt", "ignored")
    report = handlers.add_photos([str(loose), str(archive)], "factory_new")
    assert report.startswith("**factory\\_new:** 2 photos added (3 crops)")
    assert "- refused batch.zip: ../escape.jpg: its path climbs out of the folder" in report
    assert "- ignored 1 entry that are not photos (or hidden): batch.zip: notes.txt" in report
    assert not (handlers.settings.uploads_dir / "escape.jpg").exists()
    assert not (handlers.settings.uploads_dir / "factory_new" / "batch").exists()
    assert {p.payload["product_id"] for p in handlers.store.scroll({"factory": ["factory_new"]})} == {"SKU9", "P77"}
    again = handlers.add_photos([str(loose)], "factory_new")  # same photo again: nothing new
    assert "0 photos added" in again and "already indexed" in again
    assert handlers.add_photos([str(loose)], "../x").startswith("⚠️ Name the factory")
    assert handlers.add_photos([], "f").startswith("⚠️ Choose photos")


def test_add_photos_reports_what_the_zip_held_and_is_idempotent(handlers, tmp_path):
    archive = tmp_path / "up" / "acme.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for k, name in enumerate(["acme/P1/a.jpg", "acme/P1/b.jpg", "acme/P2/c.jpg"]):
            photo = two_shoes_photo(tmp_path / "src" / f"{k}.jpg")
            with open(photo, "ab") as handle:
                handle.write(bytes([k]))  # distinct bytes, distinct photos
            zf.write(photo, name)
        zf.writestr("acme/P2/broken.jpg", "not a photo")
    report = handlers.add_photos([str(archive)], "acme")
    lines = report.splitlines()
    assert lines[0].startswith("**acme:** 3 photos added (6 crops), 0 already indexed, 0 re-labelled, 1 failed")
    assert lines[1:4] == ["- found 4 photos of 2 products: P1, P2",
                          "- acme.zip: 4 photos of 2 products, top folder acme/ unwrapped",
                          "- saved under uploads/acme: 4 new files, 0 already there"]
    assert lines[4].startswith("- skipped acme.zip: acme/P2/broken.jpg: not an image Pillow can read")
    assert lines[4].endswith("(removed from uploads)")
    uploads = handlers.settings.uploads_dir / "acme"
    assert sorted(p.relative_to(uploads).as_posix() for p in uploads.rglob("*") if p.is_file()) == \
        ["P1/a.jpg", "P1/b.jpg", "P2/c.jpg"]
    products = {p.id: p.payload["product_id"] for p in handlers.store.scroll({"factory": ["acme"]})}
    assert set(products.values()) == {"P1", "P2"}

    again = handlers.add_photos([str(archive)], "acme")
    assert again.startswith("**acme:** 0 photos added (0 crops), 3 already indexed, 0 re-labelled, 1 failed")
    assert "- saved under uploads/acme: 1 new files, 3 already there" in again  # the broken one, removed again
    assert {p.id: p.payload["product_id"] for p in handlers.store.scroll({"factory": ["acme"]})} == products


def test_add_photos_without_photos_or_with_bad_names_says_so(handlers, tmp_path):
    docs = tmp_path / "docs.zip"
    with zipfile.ZipFile(docs, "w") as zf:
        zf.writestr("notes.txt", "no photos here")
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    report = handlers.add_photos([str(docs), str(fake)], "brand_new")
    assert report.splitlines() == [
        "⚠️ No photos found in the upload: nothing was added to **brand\\_new** "
        "(photos are .avif .bmp .gif .heic .heif .jpeg .jpg .png .tif .tiff .webp files, loose or in a .zip).",
        "- refused fake.zip: not a zip file, or a damaged one \\(its table of contents cannot be read\\)",
        "- ignored 1 entry that are not photos (or hidden): docs.zip: notes.txt",
    ]
    assert "brand_new" not in handlers.store.facet("factory")
    assert not (handlers.settings.uploads_dir / "brand_new").exists()
    for bad in ("a\x00b", "..", ".hidden", "x" * 256, "a\\b"):
        assert handlers.add_photos([str(docs)], bad).startswith("⚠️ Name the factory these photos come from")
    assert not handlers.settings.uploads_dir.exists() or list(handlers.settings.uploads_dir.iterdir()) == []


def test_catalogue_markdown_escapes_names(handlers, tmp_path):
    photo = two_shoes_photo(tmp_path / "p.jpg")
    report = handlers.add_photos([str(photo)], "<img src=x onerror=alert(1)>")
    assert "<img" not in report and "&lt;img src=x onerror=alert\\(1\\)&gt;" in report
    text = handlers.catalogue_markdown()
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in text and "<img" not in text
    assert "**Model:** tiny-clip (16-d)" in text


def test_find_duplicates_lists_groups_heatmap_and_reports(handlers):
    found = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    assert found.status.startswith(f"**{handlers.store.count()} crops** clustered")
    assert "| duplicate |" in found.status and "| similar |" in found.status
    non_identical = [g for g in found.groups if g["tier"] != "identical"]
    sizes = [g["size"] for g in non_identical if g["tier"] == "duplicate"]
    assert sizes and sizes == sorted(sizes, reverse=True)  # largest first
    assert len(found.gallery) == len(found.groups)
    assert found.heatmap is not None and found.heatmap.size[0] > 200
    assert sorted(Path(f).name for f in found.files) == ["groups.csv", "groups.json", "summary.json"]
    assert all(Path(f).is_file() and Path(f).is_relative_to(handlers.data_dir / "reports") for f in found.files)
    members, group_id = handlers.group_members(found.groups, 0)
    assert group_id == found.groups[0]["id"] and len(members) == found.groups[0]["size"]
    first = found.groups[0]["members"]
    assert members[0][1] == f"{first[0]['factory']} · {first[0]['product_id']} · representative"
    assert members[1][1] == f"{first[1]['factory']} · {first[1]['product_id']} · {first[1]['similarity']:.3f}"


def test_search_filtered_by_group(handlers):
    found = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    group = next(g for g in found.groups if g["tier"] == "duplicate")
    members = {m["point_id"] for m in group["members"]}
    results = handlers.search_text("shoe", [], top_k=100, group=group["id"])
    assert {h["point_id"] for h in results.hits} == members


def test_search_within_a_group_lists_its_members_representative_first(handlers):
    found = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    group = next(g for g in found.groups if g["tier"] == "duplicate")
    results = handlers.search_group(found.groups, group["id"])
    assert [h["point_id"] for h in results.hits][0] == group["members"][0]["point_id"]
    assert {h["point_id"] for h in results.hits} == {m["point_id"] for m in group["members"]}
    assert results.status.split("  \n")[0] == f"{group['size']} results for duplicate group {group['id']}"
    assert handlers.search_group(found.groups, "dup-nonexistent").status.startswith("⚠️ Pick a group first")


def test_find_duplicates_scope_and_bad_options(handlers):
    cross = handlers.find_duplicates(0.99, 0.97, "cross-factory", ["factory_a", "factory_b"], "crop", "single")
    assert all(len(set(g["factories"])) >= 2 for g in cross.groups)
    assert handlers.find_duplicates(0.95, 0.85, "everything").status.startswith("⚠️ Unknown option")
