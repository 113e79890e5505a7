"""The launched app's API for photo + words, photo by URL, refinement and its stable defaults."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gradio_client import Client, handle_file


@pytest.fixture
def client(served):
    return Client(served, verbose=False)


def test_api_defaults_do_not_follow_the_page(client):
    """The page groups results by product by default; the API keeps one_per_product=False."""
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/search_text", "/search_image", "/more_like_this", "/refine"):
        params = {p["parameter_name"]: p for p in endpoints[name]["parameters"]}
        assert params["one_per_product"]["parameter_default"] is False
    params = {p["parameter_name"]: p for p in endpoints["/search_image"]["parameters"]}
    assert (params["text"]["parameter_default"], params["text_weight"]["parameter_default"],
            params["not_text"]["parameter_default"], params["image_url"]["parameter_default"]) == ("", 1.0, "", "")
    _, _, hits = client.predict(query="boot", top_k=24, api_name="/search_text")
    products = [(h["payload"]["factory"], h["payload"]["product_id"]) for h in hits]
    assert len(products) == 24 > len(set(products))  # every crop, as before


def test_photo_plus_words_positional_and_by_keyword(client, sample):
    photo = handle_file(str(sample.photos[2].path))
    # The old positional call, unchanged.
    _, status, plain = client.predict(photo, -1, [], "", False, 0.0, 6, False, "", api_name="/search_image")
    assert status.startswith("6 results for the photo (whole photo)  \n")
    _, status, mixed = client.predict(photo=photo, region=-1, top_k=6, text="red", not_text="suede", text_weight=0.5,
                                      api_name="/search_image")
    assert status.startswith("6 results for the photo (whole photo) + “red” − “suede” (words ×0.5)  \n")
    assert [h["score"] for h in mixed] != [h["score"] for h in plain]
    target = plain[0]["point_id"]
    _, status, more = client.predict(point_id=target, top_k=4, text="black", api_name="/more_like_this")
    assert len(more) == 4 and target not in {h["point_id"] for h in more} and "+ “black”" in status


def test_refine(client):
    _, _, hits = client.predict(query="sneaker", top_k=5, api_name="/search_text")
    ids = [h["point_id"] for h in hits]
    gallery, status, refined = client.predict(liked=ids[:2], disliked=ids[2:3], factories=["factory_c"], top_k=3,
                                              one_per_product=True, api_name="/refine")
    assert status.startswith("3 results for 2 liked and 1 disliked crops (those left out) (one per product)")
    assert len(refined) == 3 and {h["payload"]["factory"] for h in refined} == {"factory_c"}
    assert not set(ids[:3]) & {h["point_id"] for h in refined}
    assert all("more crop" in item["caption"] for item in gallery)
    _, status, none = client.predict(api_name="/refine")
    assert none == [] and status == "⚠️ Mark results as liked or disliked first, then refine."


def test_image_url(client, handlers, sample):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(sample.root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{sample.photos[5].path.relative_to(sample.root)}"
        _, status, hits = client.predict(image_url=url, api_name="/search_image")
        assert hits == [] and "127.0.0.1 is a loopback or private-network address" in status
        handlers.settings = handlers.settings.model_copy(update={"image_url_allow_private": True})
        _, status, hits = client.predict(image_url=url, top_k=3, api_name="/search_image")
        assert hits[0]["payload"]["photo_path"] == str(sample.photos[5].path) and hits[0]["score"] > 0.999
    finally:
        httpd.shutdown()
        httpd.server_close()
