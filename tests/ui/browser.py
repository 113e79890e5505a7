"""Real-browser fixtures (a pytest plugin, loaded by tests/conftest.py): Debian's chromium through Playwright, with the page's health checked.

Every page opened through `page_of` records failed requests (HTTP status >= 400) and console
errors; the test fails at teardown if any happened, so a component whose bundle does not load
(a 404 for its JavaScript, an import error) cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets REQUIRE_BROWSER=1: there a missing chromium is a failure, not a skip.
needs_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"),
                                   reason="chromium is not installed (apt-get install chromium; CI installs it)")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "REQUIRE_BROWSER is set but no chromium is installed"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            yield chromium
        finally:
            chromium.close()


EVENT_STREAMS = ("/gradio_api/queue/data", "/gradio_api/upload_progress", "/gradio_api/heartbeat/")


class PageHealth:
    """What went wrong while a page was open: failed requests and console errors."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.console: list[str] = []

    def watch(self, page) -> None:
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.request.method} {r.url}")
                if r.status >= 400 else None)
        page.on("requestfailed", self._request_failed)
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))

    def _request_failed(self, request) -> None:
        # Gradio's event streams (queue results, upload progress, heartbeat) are cut on purpose
        # when an event ends or the page closes; any other aborted request is a real failure.
        if "net::ERR_ABORTED" in str(request.failure) and any(
                stream in request.url for stream in EVENT_STREAMS):
            return
        self.failed.append(f"failed {request.method} {request.url}: {request.failure}")

    def check(self, allow: tuple[str, ...] = ()) -> None:
        # Gradio's front end asks for an upload's progress stream after a small upload has
        # already finished; the server answers 404 "Upload not found" (gradio/routes.py,
        # get_upload_progress). The upload itself succeeded; nothing else is excused.
        allow = (*allow, "/gradio_api/upload_progress?upload_id=")
        failed = [f for f in self.failed if not any(a in f for a in allow)]
        console = [c for c in self.console if not any(a in c for a in allow)]
        assert not failed, f"requests failed: {failed}"
        assert not console, f"console errors: {console}"


@pytest.fixture
def page_of(browser):
    """page_of(url, allow=()) -> a new page at url, checked for failed assets at teardown."""
    opened = []

    def open_page(url: str, allow: tuple[str, ...] = (), permissions: tuple[str, ...] = ()):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        if permissions:
            context.grant_permissions(list(permissions), origin=url.rstrip("/"))
        page = context.new_page()
        health = PageHealth()
        health.watch(page)
        opened.append((context, health, allow))
        page.goto(url)
        page.wait_for_load_state("load")
        return page

    yield open_page
    for context, health, allow in opened:
        try:
            health.check(allow)
        finally:
            context.close()


@pytest.fixture
def shot(tmp_path):
    """shot(page, name): a full-page screenshot in tmp_path (and SCREENSHOT_DIR, for the README)."""

    def take(page, name: str, full_page: bool = True) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 10_000
        if os.environ.get("SCREENSHOT_DIR"):  # README screenshots: SCREENSHOT_DIR=docs make test
            shutil.copy(path, Path(os.environ["SCREENSHOT_DIR"]) / path.name)
        return path

    return take
