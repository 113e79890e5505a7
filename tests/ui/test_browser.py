"""Every UI flow as a person uses it: Playwright driving Debian's chromium against the launched app.

Each test opens the page through `page_of`, which fails the test when any request fails (a
missing component bundle is a 404) or the console shows an error, and saves a screenshot.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from core.catalogue.folders import discover
from tests.conftest import two_shoes_photo
from tests.ui.browser import needs_browser

pytestmark = needs_browser
WAIT = 30_000


def expect():
    from playwright.sync_api import expect as expect_

    return expect_


def captions(page, gallery: str):
    return page.locator(f"#{gallery} .caption-label")


def run_text_search(page, query: str) -> None:
    page.locator("#query-text textarea").fill(query)
    page.locator("#search-text-button").click()
    expect()(page.locator("#status")).to_contain_text(f"for “{query}”", timeout=WAIT)


def pick_factory(page, dropdown: str, name: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def raw_hits(page) -> list[dict]:
    """The hits behind the gallery, from the 'Raw results (JSON)' accordion."""
    accordion = page.get_by_text("Raw results (JSON)")
    if not page.locator("#raw-hits").is_visible():
        accordion.click()
    expect()(page.locator("#raw-hits")).to_be_visible()
    ids = page.locator("#raw-hits").inner_text()
    return re.findall(r'"point_id":\s*"([0-9a-f-]{36})"', ids) or re.findall(r"([0-9a-f]{8}-[0-9a-f-]{27})", ids)


def assert_captions_not_cut(page, gallery: str) -> None:
    cut = page.eval_on_selector_all(
        f"#{gallery} .caption-label",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)"
        ".map(e => e.innerText)")
    assert cut == [], f"captions cut off: {cut}"


def assert_gallery_not_clipped(page, gallery: str) -> None:
    """Every thumbnail of the gallery on the page itself: no scroll box inside the gallery hiding
    results (Gradio caps an auto-height gallery at 55% of the window)."""
    hidden = page.eval_on_selector(
        f"#{gallery} .grid-wrap", "e => e.scrollHeight - e.clientHeight")
    assert hidden <= 1, f"{hidden}px of the {gallery} gallery hidden behind a scroll box"


# --------------------------------------------------------------------------- search by photo


def test_photo_search_upload_detect_pick_and_search(served, page_of, shot, tmp_path):
    query = two_shoes_photo(tmp_path / "query.jpg")
    page = page_of(served)
    page.get_by_role("tab", name="By photo").click()
    drop_zone = page.get_by_role("button", name="Drop an image file here to upload")
    expect()(drop_zone).to_be_visible()
    expect()(page.get_by_role("button", name="Paste from clipboard")).to_be_visible()

    page.locator("#query-photo input[type=file]").set_input_files(str(query))
    expect()(page.locator("#detect-note")).to_contain_text("2 shoe(s) detected", timeout=WAIT)
    regions = captions(page, "query-regions")
    expect()(regions).to_have_count(3)
    assert regions.all_inner_texts() == ["shoe 1 of 2 · Footwear 0.90", "shoe 2 of 2 · Footwear 0.90", "whole photo"]
    # The search runs at once with the first shoe; results come one per product (12 products).
    expect()(page.locator("#status")).to_contain_text("12 results for the photo (shoe 1 of 2", timeout=WAIT)
    expect()(captions(page, "results")).to_have_count(12)
    assert_gallery_not_clipped(page, "results")
    first_run = raw_hits(page)

    regions.nth(1).click()  # the other shoe
    expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 2 of 2", timeout=WAIT)
    page.locator("#query-regions button").filter(has_text="whole photo").click()
    expect()(page.locator("#status")).to_contain_text("results for the photo (whole photo)", timeout=WAIT)
    assert raw_hits(page) != first_run
    page.locator("#search-photo-button").click()  # the button searches with the region picked last
    expect()(page.locator("#status")).to_contain_text("results for the photo (whole photo)", timeout=WAIT)
    regions.nth(0).click()
    expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 1 of 2", timeout=WAIT)
    shot(page, "photo-search")


def test_an_indexed_photo_finds_itself_and_nothing_detected_uses_the_whole_photo(served, page_of, sample, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (300, 200), (240, 240, 240)).save(plain)  # nothing to detect
    page = page_of(served)
    page.get_by_role("tab", name="By photo").click()
    page.locator("#query-photo input[type=file]").set_input_files(str(plain))
    expect()(page.locator("#detect-note")).to_contain_text("No shoe detected: the whole photo is searched",
                                                           timeout=WAIT)
    expect()(page.locator("#status")).to_contain_text("results for the photo (whole photo)", timeout=WAIT)

    photo = sample.photos[5]
    page.locator("#query-photo button[aria-label='Remove Image']").click()
    expect()(page.locator("#detect-note")).to_have_text("", timeout=WAIT)
    page.locator("#query-photo input[type=file]").set_input_files(str(photo.path))
    expect()(page.locator("#status")).to_contain_text("results for the photo", timeout=WAIT)
    expect()(captions(page, "results").first).to_contain_text(f"{photo.factory} · {photo.product_id} · 1.000")


def test_photo_by_drop_and_by_paste(served, page_of, tmp_path):
    query = two_shoes_photo(tmp_path / "dropped.png")
    data = base64.b64encode(query.read_bytes()).decode()
    page = page_of(served, permissions=("clipboard-read", "clipboard-write"))
    page.get_by_role("tab", name="By photo").click()

    # Drop: a real drop event carrying the file, on the drop zone.
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        return dt; }""", data)
    zone = page.get_by_role("button", name="Drop an image file here to upload")
    zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    zone.dispatch_event("drop", {"dataTransfer": transfer})
    expect()(page.locator("#detect-note")).to_contain_text("2 shoe(s) detected", timeout=WAIT)
    expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 1 of 2", timeout=WAIT)

    # Paste: an image on the clipboard, then the component's paste button.
    page.locator("#query-photo button[aria-label='Remove Image']").click()
    expect()(page.locator("#detect-note")).to_have_text("", timeout=WAIT)
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const blob = new Blob([bytes], {type: 'image/png'});
        await navigator.clipboard.write([new ClipboardItem({'image/png': blob})]); }""", data)
    page.get_by_role("button", name="Paste from clipboard").click()
    expect()(page.locator("#detect-note")).to_contain_text("2 shoe(s) detected", timeout=WAIT)
    expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 1 of 2", timeout=WAIT)


def test_broken_and_non_image_uploads_say_why_on_the_page(served, page_of, tmp_path, shot):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    text = tmp_path / "notes.png"
    text.write_text("these are not pixels")
    page = page_of(served)
    page.get_by_role("tab", name="By photo").click()
    for bad in (broken, text):
        page.locator("#query-photo input[type=file]").set_input_files(str(bad))
        expect()(page.locator("#detect-note")).to_contain_text("⚠️ That photo cannot be used", timeout=WAIT)
        expect()(page.locator("#status")).to_contain_text("⚠️ That photo cannot be used", timeout=WAIT)
        expect()(captions(page, "results")).to_have_count(0)
        page.locator("#query-photo button[aria-label='Remove Image']").click()
    shot(page, "photo-search-broken")


def test_an_oversized_photo_is_refused_with_a_message(small_upload_app, page_of, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"0" * (2 * 1024 * 1024))
    page = page_of(small_upload_app)
    page.get_by_role("tab", name="By photo").click()
    page.locator("#query-photo input[type=file]").set_input_files(str(big))
    expect()(page.get_by_text(re.compile(r"exceed the maximum allowed size of 1\.0 Mb: \"big\.jpg\"")).first).to_be_visible(
        timeout=WAIT)
    expect()(captions(page, "results")).to_have_count(0)


# --------------------------------------------------------------------------- search by text


def test_text_search_filters_detail_card_and_more_like_this(served, page_of, shot):
    page = page_of(served)
    run_text_search(page, "red leather boot")
    results = captions(page, "results")
    expect()(results).to_have_count(12)  # one per product by default
    unfiltered = {c.split(" · ")[0] for c in results.all_inner_texts()}
    assert len(unfiltered) >= 2 and unfiltered <= {"factory_a", "factory_b", "factory_c"}
    assert_captions_not_cut(page, "results")

    pick_factory(page, "factories", "factory_b")
    page.locator("#search-text-button").click()
    expect()(results.first).to_contain_text("factory_b · ", timeout=WAIT)
    texts = results.all_inner_texts()
    assert texts and all(t.startswith("factory_b · ") for t in texts), texts

    page.locator("#product-filter textarea, #product-filter input").first.fill("B101")
    page.locator("#search-text-button").click()
    expect()(results.first).to_contain_text("factory_b · B101 · ", timeout=WAIT)
    assert all(t.startswith("factory_b · B101 · ") for t in results.all_inner_texts())

    results.first.click()  # the result's detail: a readable card and the photo with its box
    card = page.locator("#detail-card")
    expect()(card).to_contain_text("factory_b · B101", timeout=WAIT)
    for label in ("Similarity", "Photo", "Photo size", "Crop box", "Indexed", "Crop id"):
        expect()(card).to_contain_text(label)
    assert "{" not in card.inner_text()  # not a JSON dump
    expect()(page.locator("#detail-photo img")).to_be_visible()
    assert page.eval_on_selector("#detail-photo img", "img => img.complete && img.naturalWidth > 0")
    expect()(card).to_be_in_viewport()
    shot(page, "search-detail", full_page=False)
    selected = re.search(r"Crop id\s*([0-9a-f-]{36})", card.inner_text()).group(1)

    page.locator("#product-filter textarea, #product-filter input").first.fill("")
    page.locator("#more-like-this").click()
    expect()(page.locator("#status")).to_contain_text("more like the selected crop (the crop itself left out)",
                                                      timeout=WAIT)
    hits = raw_hits(page)
    assert hits and selected not in hits


def test_results_by_product_by_default_and_every_crop_when_unticked(served, page_of, shot, handlers):
    page = page_of(served)
    page.locator("#top-k input[type=number]").fill("30")
    page.locator("#top-k input[type=number]").press("Enter")
    expect()(page.locator("#one-per-product input")).to_be_checked()
    run_text_search(page, "shoe")
    # Grouped: 3 factories x 4 products, each once, its caption counting the product's other crops.
    expect()(captions(page, "results")).to_have_count(12, timeout=WAIT)
    grouped = captions(page, "results").all_inner_texts()
    products = [tuple(c.split(" · ")[:2]) for c in grouped]
    assert len(products) == len(set(products)) == 12
    for caption, (factory, product) in zip(grouped, products):
        others = handlers.store.count({"factory": [factory], "product_id": [product]}) - 1
        assert caption.endswith(f" · +{others} more crops"), caption
    expect()(page.locator("#status")).to_contain_text("12 results for “shoe” (one per product)")
    expect()(page.locator("#status")).to_contain_text("by factory: factory_a 4 · factory_b 4 · factory_c 4")
    assert_captions_not_cut(page, "results")
    assert_gallery_not_clipped(page, "results")
    shot(page, "search-ui")
    # Unticked: every crop, several of one product, and the factory counts follow the query.
    page.locator("#one-per-product input").uncheck()
    page.locator("#search-text-button").click()
    expect()(captions(page, "results")).to_have_count(30, timeout=WAIT)
    every = [tuple(c.split(" · ")[:2]) for c in captions(page, "results").all_inner_texts()]
    assert len(every) > len(set(every))
    assert all("more crop" not in c for c in captions(page, "results").all_inner_texts())
    counts = {}
    for factory, _ in every:
        counts[factory] = counts.get(factory, 0) + 1
    line = " · ".join(f"{f} {n}" for f, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
    expect()(page.locator("#status")).to_contain_text(f"30 results for “shoe”by factory: {line}")


# --------------------------------------------------------------------------- duplicates


def test_duplicates_groups_members_heatmap_and_search_within_a_group(served, page_of, handlers, sample, shot):
    page = page_of(served)
    # A factory added while the page is open (as `ingest add` would) shows up without a reload.
    handlers.ingest.add(list(discover(sample.factory_dir("factory_a"), factory="factory_d")), "factory_d")
    page.get_by_role("tab", name="Duplicates").click()
    page.locator("#dup-factories input").click()
    expect()(page.get_by_role("option", name=re.compile(r"^factory_d \(\d+\)$"))).to_be_visible(timeout=WAIT)
    page.keyboard.press("Escape")

    page.locator("#find-duplicates").click()
    expect()(page.locator("#duplicates-status")).to_contain_text("crops clustered", timeout=60_000)
    groups = captions(page, "groups")
    expect()(groups.first).to_contain_text("-", timeout=WAIT)
    assert all(t.split("-")[0] in {"dup", "sim", "phs", "idt"} for t in groups.all_inner_texts())
    heatmap = page.locator("#heatmap img")
    expect()(heatmap).to_be_visible()
    assert page.eval_on_selector("#heatmap img", "img => img.complete && img.naturalWidth > 200")
    # Nothing is drawn over the heatmap's title: the component shows no floating label.
    expect()(page.locator("#heatmap [data-testid='block-label']")).to_be_hidden()

    groups.first.click()
    members = captions(page, "group-members")
    expect()(members.first).to_contain_text("representative", timeout=WAIT)
    texts = members.all_inner_texts()
    assert re.fullmatch(r"factory_[a-d] · [A-D]1\d\d · representative", texts[0]), texts
    assert all(re.fullmatch(r"factory_[a-d] · [A-D]1\d\d · [01]\.\d{3}", t) for t in texts[1:]), texts
    assert_captions_not_cut(page, "group-members")
    group_id = groups.first.inner_text().split(" · ")[0]
    shot(page, "duplicates")

    page.locator("#search-group").click()
    expect()(page.get_by_role("tab", name="Search", exact=True)).to_have_attribute("aria-selected", "true",
                                                                                   timeout=WAIT)
    expect()(page.locator("#status")).to_contain_text(f"{len(texts)} results for duplicate group {group_id}",
                                                      timeout=WAIT)
    expect()(captions(page, "results")).to_have_count(len(texts))
    assert page.locator("#group-filter textarea, #group-filter input").first.input_value() == group_id


def set_slider(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def run_duplicates(page, reports: Path) -> Path:
    """Find duplicates; returns the run's groups.json (the newest report, once it is written)."""
    before = set(reports.glob("*/groups.json")) if reports.exists() else set()
    page.locator("#find-duplicates").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(reports.glob("*/groups.json")) - before if reports.exists() else set()
        if new:
            break
        time.sleep(0.2)
    expect()(page.locator("#duplicates-status")).to_contain_text("crops clustered", timeout=60_000)
    [report] = new
    expect()(page.locator("#review-count")).to_contain_text("groups reviewed", timeout=WAIT)
    return report


def test_review_reject_confirm_by_keyboard_then_recluster_lower(served, page_of, handlers, shot):
    """Reject a member, confirm the rest with the keyboard, rerun lower: the rejected pair stays apart."""
    from core.duplicates.review import DIFFERENT, SAME

    page = page_of(served)
    page.get_by_role("tab", name="Duplicates").click()
    set_slider(page, "dup-threshold", "0.99")
    set_slider(page, "sim-threshold", "0.97")
    page.get_by_label("complete").check()
    reports = handlers.data_dir / "reports"
    run_duplicates(page, reports)
    count = page.locator("#review-count")
    expect()(count).to_contain_text(re.compile(r"0 of \d+ groups reviewed"), timeout=WAIT)
    first_caption = captions(page, "groups").first.inner_text()
    assert "reviewed" not in first_caption

    page.locator("#next-group").click()
    status = page.locator("#review-status")
    expect()(status).to_contain_text(first_caption.split(" · ")[0], timeout=WAIT)
    members = captions(page, "group-members")
    expect()(members.first).to_contain_text("representative", timeout=WAIT)
    size = members.count()
    assert size >= 3
    page.locator("#reject-member").click()  # nothing picked yet: says so
    expect()(status).to_contain_text("Click the member that is not the same shoe first", timeout=WAIT)
    members.nth(2).click()
    page.locator("#reject-member").click()
    expect()(status).to_contain_text("is not the same shoe", timeout=WAIT)
    expect()(members).to_have_count(size - 1, timeout=WAIT)
    shot(page, "duplicates-review")

    page.locator("#groups").click(position={"x": 5, "y": 5})  # focus leaves any text field
    page.keyboard.press("c")  # Same shoe, from the keyboard
    expect()(status).to_contain_text("confirmed as the same shoe", timeout=WAIT)
    expect()(count).to_contain_text(re.compile(r"\b[1-9]\d* of \d+ groups reviewed"), timeout=WAIT)
    # The confirmed group, and any other whose crops the decisions now all join (a pHash group of
    # the same crops, say), are reviewed: the count and the ✓ captions agree.
    reviewed = int(re.search(r"(\d+) of \d+ groups reviewed", count.inner_text()).group(1))
    expect()(page.locator("#groups .caption-label").filter(has_text="reviewed ✓")).to_have_count(reviewed)

    state = handlers.clusters.decisions.load()
    [rejected] = state.different_pairs()
    assert len(state.same_pairs()) == size - 2 and {d.decision for d in state.pairs.values()} == {SAME, DIFFERENT}
    point_of = {}
    for point in handlers.store.scroll():
        point_of[f"crop:{point.payload['photo_sha256']}:{point.payload.get('crop_index', 0)}"] = point.id
    apart = {point_of[key] for key in rejected}

    set_slider(page, "dup-threshold", "0.9")
    set_slider(page, "sim-threshold", "0.8")
    groups = json.loads(run_duplicates(page, reports).read_text())
    assert any(g["min_similarity"] < 0.99 for g in groups if g["tier"] == "duplicate")  # really lower
    for group in groups:
        if group["tier"] != "identical":
            assert not apart <= set(group["member_points"]), group["id"]
    expect()(count).to_contain_text("groups reviewed", timeout=WAIT)


# --------------------------------------------------------------------------- catalogue


def _usual_zip(tmp_path, sample) -> tuple:
    """`zip -r acme.zip acme/`: one top folder, a subfolder per product."""
    archive = tmp_path / "acme.zip"
    products = {}
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("acme/", "")
        for k, photo in enumerate(sample.photos[:6]):
            product = f"ACME-{k // 2}"
            products.setdefault(product, 0)
            products[product] += 1
            zf.write(photo.path, f"acme/{product}/{k}{photo.path.suffix}")
    return archive, products


def test_catalogue_zip_upload_keeps_products_and_is_searchable(served, page_of, sample, tmp_path, shot, handlers):
    archive, products = _usual_zip(tmp_path, sample)
    page = page_of(served)
    page.get_by_role("tab", name="Catalogue").click()
    page.locator("#upload-factory textarea, #upload-factory input").first.fill("acme")
    page.locator("#uploads input[type=file]").set_input_files(str(archive))
    expect()(page.locator("#uploads")).to_contain_text("acme.zip", timeout=WAIT)
    page.locator("#upload-button").click()
    report = page.locator("#upload-report")
    expect()(report).to_contain_text("6 photos added", timeout=60_000)
    for product in products:
        expect()(report).to_contain_text(product)
    expect()(page.locator("#catalogue-overview")).to_contain_text("acme")
    shot(page, "catalogue-upload")
    uploads = handlers.settings.uploads_dir
    assert not (uploads / "acme" / "acme").exists()  # the top folder was unwrapped

    page.get_by_role("tab", name="Search", exact=True).click()
    pick_factory(page, "factories", "acme")
    run_text_search(page, "sneaker")
    found = {c.split(" · ")[1] for c in captions(page, "results").all_inner_texts()}
    assert found == set(products), found

    # The same zip again: nothing added, no product renamed, no second copy on disk.
    files_before = sorted(p.relative_to(uploads) for p in uploads.rglob("*") if p.is_file())
    page.get_by_role("tab", name="Catalogue").click()
    page.locator("#uploads input[type=file]").set_input_files(str(archive))
    page.locator("#upload-button").click()
    expect()(report).to_contain_text("0 photos added", timeout=60_000)
    assert sorted(p.relative_to(uploads) for p in uploads.rglob("*") if p.is_file()) == files_before
    assert {p.payload["product_id"] for p in handlers.store.scroll({"factory": ["acme"]})} == set(products)


# --------------------------------------------------------------------------- login


@pytest.fixture
def login_app(ui_settings, handlers):
    from search_ui.app import launch

    settings = ui_settings.model_copy(update={"ui_username": "buyer", "ui_password": "s3cret-pass"})
    demo = launch(settings, handlers, block=False)
    yield f"http://127.0.0.1:{settings.ui_port}/"
    demo.close()


def test_login_form_first_then_the_app(login_app, page_of, shot):
    # Expected here and nowhere else: the wrong password's 400 (and the console line the browser
    # logs for it), and the login POST cut short when the right password reloads the page.
    page = page_of(login_app, allow=("400 POST " + login_app + "login", "status of 400",
                                     "POST " + login_app + "login: net::ERR_ABORTED"))
    expect()(page.get_by_role("button", name="Login")).to_be_visible(timeout=WAIT)
    html = page.content()
    assert not re.search(r"factory_[abc]", html)  # nothing of the index before login
    assert "search_text" not in html  # nor the API schema
    page.get_by_label("username").fill("buyer")
    page.get_by_label("password").fill("wrong")
    page.get_by_role("button", name="Login").click()
    expect()(page.get_by_text(re.compile("Incorrect Credentials", re.I))).to_be_visible(timeout=WAIT)
    page.get_by_label("username").fill("buyer")
    page.get_by_label("password").fill("s3cret-pass")
    page.get_by_role("button", name="Login").click()
    expect()(page.locator("#query-text textarea")).to_be_visible(timeout=WAIT)
    run_text_search(page, "boot")
    expect()(captions(page, "results")).to_have_count(12)
    shot(page, "after-login", full_page=False)


# --------------------------------------------------------------------------- photo + words, URL, likes


def crop_id_of_card(page) -> str:
    return re.search(r"Crop id\s*([0-9a-f-]{36})", page.locator("#detail-card").inner_text()).group(1)


def test_photo_plus_words(served, page_of, sample, shot):
    page = page_of(served)
    page.get_by_role("tab", name="By photo").click()
    page.locator("#query-photo input[type=file]").set_input_files(str(sample.photos[0].path))
    expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 1 of 1", timeout=WAIT)
    plain = raw_hits(page)
    page.locator("#words-add textarea").fill("red, patent")
    page.locator("#words-avoid textarea").fill("suede")
    page.locator("#words-weight input[type=number]").fill("0.5")
    page.locator("#words-weight input[type=number]").press("Enter")
    page.locator("#search-photo-button").click()
    expect()(page.locator("#status")).to_contain_text(
        "results for the photo (shoe 1 of 1 · Footwear 0.90) + “red” + “patent” − “suede” (words ×0.5)", timeout=WAIT)
    assert raw_hits(page) != plain
    shot(page, "photo-words")
    # Enter in a words box searches too.
    page.locator("#words-avoid textarea").fill("")
    page.locator("#words-add textarea").press("Enter")
    expect()(page.locator("#status")).to_contain_text("+ “red” + “patent” (words ×0.5) (one per product)by factory", timeout=WAIT)


def test_a_result_as_the_query_photo_plus_words(served, page_of, sample):
    page = page_of(served)
    run_text_search(page, "boot")
    captions(page, "results").nth(1).click()
    expect()(page.locator("#detail-card")).to_contain_text("Crop id", timeout=WAIT)
    chosen = crop_id_of_card(page)
    page.locator("#use-crop").click()
    expect()(page.get_by_role("tab", name="By photo")).to_have_attribute("aria-selected", "true", timeout=WAIT)
    expect()(page.locator("#detect-note")).to_contain_text("Searching with the indexed crop", timeout=WAIT)
    expect()(page.locator("#query-photo img")).to_be_visible()
    expect()(page.locator("#status")).to_contain_text("more like the selected crop (the crop itself left out)",
                                                      timeout=WAIT)
    page.locator("#words-add textarea").fill("red")
    page.locator("#search-photo-button").click()
    expect()(page.locator("#status")).to_contain_text(
        "more like the selected crop (the crop itself left out) + “red” (words ×1)", timeout=WAIT)
    assert chosen not in raw_hits(page)
    # A photo uploaded afterwards replaces the crop as the query.
    page.locator("#query-photo button[aria-label='Remove Image']").click()
    page.locator("#query-photo input[type=file]").set_input_files(str(sample.photos[3].path))
    expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 1 of 1", timeout=WAIT)


def test_photo_by_url(served, page_of, handlers, sample, shot):
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(sample.root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    photo = sample.photos[6]
    try:
        page = page_of(served)
        page.get_by_role("tab", name="By photo").click()
        box = page.locator("#image-url textarea, #image-url input").first
        box.fill(f"{base}/{photo.path.relative_to(sample.root)}")
        page.locator("#fetch-url").click()  # loopback: refused unless IMAGE_URL_ALLOW_PRIVATE
        expect()(page.locator("#status")).to_contain_text(
            "⚠️ The image URL cannot be used: 127.0.0.1 is a loopback or private-network address", timeout=WAIT)
        expect()(page.locator("#detect-note")).to_contain_text("IMAGE_URL_ALLOW_PRIVATE=true")

        handlers.settings = handlers.settings.model_copy(update={"image_url_allow_private": True})
        box.press("Enter")
        expect()(page.locator("#status")).to_contain_text("results for the photo (shoe 1 of 1", timeout=WAIT)
        expect()(captions(page, "results").first).to_contain_text(f"{photo.factory} · {photo.product_id} · 1.000")
        expect()(page.locator("#query-photo img")).to_be_visible()
        expect()(page.locator("#query-regions .caption-label")).to_have_count(2)
        shot(page, "photo-by-url")

        box.fill(f"{base}/nothing-here.jpg")
        page.locator("#fetch-url").click()
        expect()(page.locator("#status")).to_contain_text(
            "⚠️ The image URL cannot be used: the server answered 404 File not found.", timeout=WAIT)
        expect()(captions(page, "results")).to_have_count(0)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_like_dislike_and_refine(served, page_of, shot):
    page = page_of(served)
    run_text_search(page, "sneaker")
    results = captions(page, "results")
    labels = [" · ".join(c.split(" · ")[:2]) for c in results.all_inner_texts()]

    results.nth(0).click()
    expect()(page.locator("#detail-card")).to_contain_text("Crop id", timeout=WAIT)
    liked = crop_id_of_card(page)
    page.locator("#like-button").click()
    expect()(page.locator("#liked")).to_contain_text(labels[0], timeout=WAIT)
    results.nth(3).click()
    expect()(page.locator("#detail-card")).not_to_contain_text(liked, timeout=WAIT)
    disliked = crop_id_of_card(page)
    page.locator("#dislike-button").click()
    expect()(page.locator("#disliked")).to_contain_text(labels[3], timeout=WAIT)
    expect()(page.locator("#feedback-note")).to_contain_text("Refine searches with 1 liked and 1 disliked")

    page.locator("#refine-button").click()
    expect()(page.locator("#status")).to_contain_text(
        "results for 1 liked and 1 disliked crops (those left out) (one per product)", timeout=WAIT)
    hits = raw_hits(page)
    assert hits and liked not in hits and disliked not in hits
    shot(page, "refine")

    page.locator("#clear-feedback").click()
    expect()(page.locator("#liked")).not_to_contain_text(labels[0], timeout=WAIT)
    expect()(page.locator("#disliked")).not_to_contain_text(labels[3])
    page.locator("#refine-button").click()
    expect()(page.locator("#status")).to_contain_text("⚠️ Mark results as liked or disliked first", timeout=WAIT)
