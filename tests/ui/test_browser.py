"""One real-browser test: Playwright driving Debian's chromium against the launched app."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets REQUIRE_BROWSER=1: there a missing chromium is a failure, not a skip.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"),
                                reason="chromium is not installed (apt-get install chromium; CI installs it)")


def test_text_search_with_factory_filter_in_a_browser(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "REQUIRE_BROWSER is set but no chromium is installed"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(served)
            page.locator("#query-text textarea").fill("red leather boot")
            page.locator("#search-text-button").click()
            expect(page.locator("#status")).to_contain_text("24 results for “red leather boot”", timeout=30_000)
            captions = page.locator("#results .caption-label")
            expect(captions).to_have_count(24)
            unfiltered = {c.split(" · ")[0] for c in captions.all_inner_texts()}
            assert len(unfiltered) >= 2 and unfiltered <= {"factory_a", "factory_b", "factory_c"}

            page.locator("#factories input").click()
            page.keyboard.type("factory_b")
            page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            page.locator("#search-text-button").click()
            expect(page.locator("#status")).to_contain_text("results for “red leather boot”", timeout=30_000)
            expect(captions.first).to_contain_text("factory_b · ")
            texts = captions.all_inner_texts()
            assert texts and all(t.startswith("factory_b · ") for t in texts), texts

            captions.first.click()  # the result's detail: full photo and payload
            expect(page.get_by_text('"factory": "factory_b"').first).to_be_visible(timeout=30_000)
            shot = tmp_path / "search-ui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            page.get_by_role("tab", name="Duplicates").click()
            page.locator("#find-duplicates").click()
            expect(page.locator("#duplicates-status")).to_contain_text("crops clustered", timeout=60_000)
            groups = page.locator("#groups .caption-label")
            expect(groups.first).to_contain_text("-", timeout=30_000)
            assert all(t.split("-")[0] in {"dup", "sim", "idt"} for t in groups.all_inner_texts())
            groups.first.click()
            expect(page.locator("#group-members .caption-label").first).to_contain_text("representative")
            page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
            if os.environ.get("SCREENSHOT_DIR"):  # README screenshots: SCREENSHOT_DIR=docs pytest ...
                shutil.copy(shot, os.path.join(os.environ["SCREENSHOT_DIR"], "search-ui.png"))
                shutil.copy(tmp_path / "duplicates.png", os.path.join(os.environ["SCREENSHOT_DIR"], "duplicates.png"))
        finally:
            browser.close()
