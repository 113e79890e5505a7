"""UI behaviour through the handlers, on a small real index."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.app import open_app
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
    settings = ui_settings.model_copy(update={"qdrant_collection": "empty"})
    with open_app(settings, embedder=tiny_embedder, detector=BlobDetector()) as app:
        empty = Handlers(settings, app.store, app.search, app.ingest)
        results = empty.search_text("boot")
        assert results.gallery == [] and "is empty: add photos first" in results.status
        assert "(empty: add photos below" in empty.catalogue_markdown()
        assert empty.factory_choices() == []


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
    # Review order (issue 16): to review first, cross-factory before within-factory, duplicate tier,
    # then similar, then perceptual-hash copies, then largest first; byte-identical groups last.
    tiers = {"duplicate": 0, "similar": 1, "phash": 2, "identical": 3}
    order = [(g["tier"] == "identical", g["reviewed"], len(g["factories"]) < 2, tiers[g["tier"]], -g["size"])
             for g in found.groups]
    assert order == sorted(order)
    sizes = [g["size"] for g in found.groups if g["tier"] == "duplicate" and len(g["factories"]) > 1]
    assert sizes and sizes == sorted(sizes, reverse=True)  # largest first among the same kind
    assert found.count.startswith(f"**0 of {sum(g['tier'] != 'identical' for g in found.groups)} groups reviewed**")
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


# --------------------------------------------------------------------------- review (issue 16)


from search_ui.handlers import _md_escape as md  # noqa: E402 - messages are Markdown


def _together(groups, a: str, b: str) -> bool:
    return any({a, b} <= {m["point_id"] for m in g["members"]} for g in groups if g["tier"] != "identical")


def test_review_confirm_reject_and_recluster_lower(handlers):
    found = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    first = handlers.next_group(found.groups)
    group = next(g for g in found.groups if g["id"] == first.group_id)
    assert not group["reviewed"] and group["tier"] != "identical" and len(group["members"]) >= 3
    assert first.members[0][1].endswith("representative")

    rep, rejected = group["members"][0], group["members"][2]
    assert handlers.reject_member(found.groups, group["id"], None).message.startswith("⚠️ Click the member")
    assert handlers.reject_member(found.groups, group["id"], 0).message.startswith("⚠️ That is the representative")
    after = handlers.reject_member(found.groups, group["id"], 2)
    assert after.message.startswith(f"✗ {md(rejected['factory'])} · {md(rejected['product_id'])} is not the same shoe")
    shown = next(g for g in after.groups if g["id"] == group["id"])
    assert rejected["point_id"] not in {m["point_id"] for m in shown["members"]} and shown["size"] == group["size"] - 1
    assert after.group_id == group["id"] and len(after.members) == group["size"] - 1
    assert group["size"] == len(found.groups[[g["id"] for g in found.groups].index(group["id"])]["members"])  # state copied

    confirmed = handlers.confirm_group(after.groups, group["id"])
    assert confirmed.message.startswith(f"✓ {group['id']}: {group['size'] - 1} crops confirmed as the same shoe. Next: ")
    assert next(g for g in confirmed.groups if g["id"] == group["id"])["reviewed"]
    assert confirmed.group_id != group["id"] and not next(g for g in confirmed.groups if g["id"] == confirmed.group_id)["reviewed"]
    # The confirmed group is reviewed, and so is any other whose members the decisions now join
    # (e.g. a perceptual-hash group of the same crops).
    reviewed = sum(bool(g["reviewed"]) for g in confirmed.groups)
    assert reviewed >= 1 and confirmed.count.startswith(f"**{reviewed} of ")
    assert [c for _, c in confirmed.gallery if c.startswith(group["id"])][0].endswith("reviewed ✓")
    assert confirmed.groups[-1]["tier"] == "identical" or all(g["tier"] != "identical" for g in confirmed.groups)

    # Decisions are stored: a new handler (a restart) and lower thresholds keep them.
    for dup, sim in ((0.95, 0.9), (0.9, 0.8), (0.5, 0.5)):
        for linkage in ("single", "complete"):
            again = handlers.find_duplicates(dup, sim, "all", [], "crop", linkage)
            assert not _together(again.groups, rep["point_id"], rejected["point_id"]), (dup, linkage)
            holding = [g for g in again.groups if g["tier"] == "duplicate"
                       and rep["point_id"] in {m["point_id"] for m in g["members"]}]
            assert len(holding) == 1
            assert {m["point_id"] for m in shown["members"]} <= {m["point_id"] for m in holding[0]["members"]}
    same_again = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    [kept] = [g for g in same_again.groups if g["tier"] == "duplicate"
              and rep["point_id"] in {m["point_id"] for m in g["members"]}]
    assert {m["point_id"] for m in kept["members"]} == {m["point_id"] for m in shown["members"]}
    assert kept["reviewed"] and same_again.groups.index(kept) > same_again.groups.index(
        next(g for g in same_again.groups if not g["reviewed"]))  # reviewed groups come after the rest


def test_review_representative_and_product_links(handlers):
    from core.duplicates.review import product_groups

    found = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    cross = next(g for g in found.groups if len(g["factories"]) > 1 and g["tier"] == "duplicate")
    chosen = cross["members"][1]
    made = handlers.make_representative(found.groups, cross["id"], 1)
    assert made.message.startswith(f"★ {md(chosen['factory'])} · {md(chosen['product_id'])} now represents the group")
    shown = next(g for g in made.groups if g["id"] == cross["id"])
    assert shown["members"][0]["point_id"] == chosen["point_id"] and shown["members"][0]["similarity"] == 1.0
    sims = [m["similarity"] for m in shown["members"][1:]]
    assert sims == sorted(sims, reverse=True) and all(s < 1.0 + 1e-6 for s in sims)
    assert made.members[0][1] == f"{chosen['factory']} · {chosen['product_id']} · representative"
    again = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")  # it leads in later runs too
    [same] = [g for g in again.groups if g["id"] == cross["id"]]
    assert same["members"][0]["point_id"] == chosen["point_id"]

    linked = handlers.link_products(again.groups, cross["id"])
    products = sorted({f"{m['factory']}/{m['product_id']}" for m in same["members"]})
    assert linked.message.startswith(f"🔗 Linked {len(products)} products as one shoe")
    assert next(g for g in linked.groups if g["id"] == cross["id"])["reviewed"]
    state = handlers.clusters.decisions.load()
    [group_products] = [g for g in product_groups(state) if f"product:{products[0]}" in g]
    factories = {p.split(":", 1)[1].split("/")[0] for p in group_products}
    assert factories == set(same["factories"])
    assert all(d.similarity is not None and -1 <= d.similarity <= 1.0001 for d in state.product_links())

    single = next((g for g in again.groups if len(g["factories"]) == 1 and g["tier"] != "identical"), None)
    if single is not None:
        assert handlers.link_products(again.groups, single["id"]).message.startswith("⚠️ Every member is from")
    assert handlers.confirm_group(again.groups, None).message.startswith("⚠️ Pick a group first")
    assert handlers.next_group([], None).message == "⚠️ Find duplicates first."


def test_review_error_is_a_message_and_changes_nothing(handlers):
    found = handlers.find_duplicates(0.99, 0.97, "all", [], "crop", "complete")
    group = handlers.next_group(found.groups)
    path = handlers.clusters.decisions.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not json")
    review = handlers.confirm_group(found.groups, group.group_id)
    assert review.message.startswith("⚠️ the review decisions") and "are damaged" in review.message
    assert review.group_id == group.group_id and path.read_text() == "not json"
    assert not next(g for g in review.groups if g["id"] == group.group_id)["reviewed"]
    assert handlers.find_duplicates(0.99, 0.97).status.startswith("⚠️ the review decisions")


def test_a_group_id_of_no_tier_is_a_message_not_a_silent_similar(handlers):
    results = handlers.search_text("boot", group="xyz-123")
    assert results.hits == [] and results.status.startswith("⚠️ 'xyz-123' is not a duplicate group id")
    assert handlers.find_duplicates(scope="everything").status.startswith("⚠️ Unknown option: scope 'everything'")
