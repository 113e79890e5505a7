"""The served UI: no file outside DATA_DIR's thumbnails, upload limit, escaped text, and a
bounded loopback load test of concurrent text queries."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from gradio_client import Client


def test_only_thumbnails_under_data_dir_are_served(served, handlers, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    thumb = next(iter(handlers.store.scroll())).payload["crop_path"]
    inside = handlers.data_dir / thumb
    ok = httpx.get(f"{served}gradio_api/file={inside}")
    assert ok.status_code == 200 and ok.content[:2] == b"\xff\xd8"
    for target in (secret, "/etc/passwd", f"{handlers.data_dir}/../secret.txt", f"{handlers.data_dir}/crops/../../secret.txt",
                   handlers.data_dir / "qdrant-edge" / "shoes.json"):
        response = httpx.get(f"{served}gradio_api/file={target}")
        assert response.status_code in (403, 404), (target, response.status_code)
        assert b"do not serve me" not in response.content and b"root:" not in response.content


def test_uploads_over_the_limit_are_refused(small_upload_app, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"0" * (2 * 1024 * 1024))
    with open(big, "rb") as handle:
        response = httpx.post(f"{small_upload_app}gradio_api/upload", files={"files": ("big.jpg", handle, "image/jpeg")})
    assert response.status_code == 413


def test_defaults_bind_loopback_and_limit_uploads():
    from core.settings import Settings

    settings = Settings(_env_file=None)
    assert (settings.ui_host, settings.ui_username, settings.ui_max_upload_mb) == ("127.0.0.1", "", 50)


def test_query_photo_over_the_pixel_limit_is_refused(handlers, tmp_path):
    from tests.helpers import png_bomb

    bomb = tmp_path / "bomb.png"
    png_bomb(bomb)
    results = handlers.search_image(str(bomb))
    assert results.hits == [] and results.status.startswith("⚠️ That photo cannot be used: image too large")
    regions, note = handlers.detect(str(bomb))
    assert regions == [] and "image too large" in note


def test_user_text_is_shown_escaped(handlers):
    results = handlers.search_text("<img src=x onerror=alert(1)>", [], top_k=2)
    assert "<img" not in results.status and "&lt;img src=x onerror=alert\\(1\\)&gt;" in results.status


def test_concurrent_text_queries_load(served, capsys):
    """Loopback only, bounded: 4 clients x 10 queries; every answer must arrive without error."""
    clients = [Client(served, verbose=False) for _ in range(4)]
    queries = ["white sneaker", "black boot", "red heel", "sandal", "brown leather"]

    def work(client):
        errors, answered = 0, 0
        for k in range(10):
            try:
                _, status, hits = client.predict(queries[k % len(queries)], [], "", False, 0.0, 5, False,
                                                 api_name="/search_text")
                answered += len(hits) == 5 and not status.startswith("⚠️")
            except Exception:
                errors += 1
        return errors, answered

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(work, clients))
    seconds = time.perf_counter() - started
    errors = sum(e for e, _ in outcomes)
    answered = sum(a for _, a in outcomes)
    with capsys.disabled():
        print(f"\nload test: 40 text queries from 4 clients in {seconds:.1f}s = {40 / seconds:.1f} queries/s, "
              f"{errors} errors")
    assert errors == 0 and answered == 40
