"""Search collapses products linked across factories (Search tab: "One result per linked
product"; the API's collapse_linked): handlers, the named API and the page in a real browser.
The sample catalogue sells its first two designs in every factory (A100 = B100 = C100)."""

from __future__ import annotations


from core.duplicates.review import Decisions, PairInput, product_key
from tests.ui.browser import needs_browser
from tests.ui.test_browser import assert_captions_not_cut

WAIT = 30_000
LINKED = {"factory_a/A100": "g1", "factory_b/B100": "g1", "factory_c/C100": "g1",
          "factory_a/A101": "g2", "factory_b/B101": "g2", "factory_c/C101": "g2"}


def link_products(settings) -> None:
    """Link the shared designs through the review API, as "Same product across factories" does."""
    keys = {name: product_key(*name.split("/")) for name in LINKED}
    Decisions(settings.data_dir, settings.qdrant_collection).record([
        PairInput(keys["factory_a/A100"], keys["factory_b/B100"], "same"),
        PairInput(keys["factory_b/B100"], keys["factory_c/C100"], "same"),
        PairInput(keys["factory_a/A101"], keys["factory_c/C101"], "same"),
        PairInput(keys["factory_c/C101"], keys["factory_b/B101"], "same")])


def test_handlers_collapse_linked_products(handlers, ui_settings):
    plain = handlers.search_text("shoe", top_k=40, one_per_product=True, collapse_linked=True)
    assert len(plain.hits) == 12 and "No products are linked across factories yet" in plain.status
    link_products(ui_settings)  # a link made while the UI runs counts at the next search
    found = handlers.search_text("shoe", top_k=40, one_per_product=True, collapse_linked=True)
    assert len(found.hits) == 8  # 12 products, two groups of three linked: 6 + 2
    assert "8 results for “shoe” (one per linked product, one per product)" in found.status
    for (_, caption), hit in zip(found.gallery, found.hits):
        name = f"{hit['payload']['factory']}/{hit['payload']['product_id']}"
        if name in LINKED:
            others = sorted(n for n, g in LINKED.items() if g == LINKED[name] and n != name)
            assert sorted(f"{p['factory']}/{p['product_id']}" for p in hit["also_sold_as"]) == others
            assert caption.endswith(" · also sold as " + ", ".join(
                f"{p['factory']}/{p['product_id']}" for p in hit["also_sold_as"])), caption
        else:
            assert "also_sold_as" not in hit and "also sold as" not in caption
    # the detail card names the other factories' products too
    at = next(k for k, h in enumerate(found.hits) if "also_sold_as" in h)
    _, card, _ = handlers.hit_detail(found.hits, at)
    assert card.count("| Also sold as |") == 2
    # every kind of query takes the option
    point = found.hits[0]["point_id"]
    for result in (handlers.more_like_this(point, top_k=40, collapse_linked=True),
                   handlers.refine([point], [], top_k=40, collapse_linked=True)):
        names = [f"{h['payload']['factory']}/{h['payload']['product_id']}" for h in result.hits]
        assert sum(LINKED.get(n) == "g1" for n in names) <= 1 and sum(LINKED.get(n) == "g2" for n in names) <= 1
        assert any("also_sold_as" in h for h in result.hits)
    # off: as before
    assert len(handlers.search_text("shoe", top_k=40, one_per_product=True).hits) == 12


def test_named_api_collapse_linked(served, ui_settings):
    from gradio_client import Client

    link_products(ui_settings)
    client = Client(served, verbose=False)
    _, status, hits = client.predict(query="shoe", top_k=40, one_per_product=True, collapse_linked=True,
                                     api_name="/search_text")
    assert len(hits) == 8 and sum("also_sold_as" in h for h in hits) == 2
    _, _, plain = client.predict("shoe", [], "", False, 0.0, 40, True, "", api_name="/search_text")  # positional: as before
    assert len(plain) == 12
    params = {p["parameter_name"]: p for p in client.view_api(print_info=False, return_format="dict")[
        "named_endpoints"]["/search_image"]["parameters"]}
    assert list(params)[-1] == "collapse_linked" and params["collapse_linked"]["parameter_default"] is False


@needs_browser
def test_browser_one_result_per_linked_product(served, page_of, shot, ui_settings):
    from playwright.sync_api import expect

    link_products(ui_settings)
    page = page_of(served)
    page.locator("#top-k input[type=number]").fill("40")
    page.locator("#top-k input[type=number]").press("Enter")
    expect(page.locator("#collapse-linked input")).not_to_be_checked()
    page.locator("#query-text textarea").fill("shoe")
    page.locator("#search-text-button").click()
    captions = page.locator("#results .caption-label")
    expect(captions).to_have_count(12, timeout=WAIT)
    assert not any("also sold as" in c for c in captions.all_inner_texts())

    page.locator("#collapse-linked input").check()
    page.locator("#search-text-button").click()
    expect(captions).to_have_count(8, timeout=WAIT)
    expect(page.locator("#status")).to_contain_text("8 results for “shoe” (one per linked product, one per product)")
    texts = captions.all_inner_texts()
    also = [c for c in texts if "also sold as" in c]
    assert len(also) == 2, texts
    for caption in also:
        factory, product = caption.split(" · ")[:2]
        others = sorted(n for n, g in LINKED.items() if g == LINKED[f"{factory}/{product}"] and n != f"{factory}/{product}")
        assert sorted(caption.split(" · also sold as ")[1].split(", ")) == others
    assert_captions_not_cut(page, "results")  # "also sold as ..." wraps, never cut off
    # the detail card of a collapsed result lists the other factories' products
    captions.nth(texts.index(also[0])).click()
    expect(page.locator("#detail-card")).to_contain_text("Also sold as", timeout=WAIT)
    shot(page, "search-linked-products")
    page.get_by_text("Raw results (JSON)").click()
    expect(page.locator("#raw-hits")).to_contain_text("also_sold_as", timeout=WAIT)
