"""The launched app through gradio_client: the named API endpoints work as documented."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file


@pytest.fixture
def client(served):
    return Client(served, verbose=False)


def test_named_endpoints(client):
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) >= {
        "/search_text", "/search_image", "/more_like_this", "/factories"}


def test_text_query_filtered_by_factory(client):
    gallery, status, hits = client.predict("black leather boot", ["factory_b"], "", False, 0.0, 8, False,
                                           api_name="/search_text")
    assert status == "8 results for “black leather boot”"
    assert len(gallery) == len(hits) == 8
    assert {h["payload"]["factory"] for h in hits} == {"factory_b"}
    assert all(item["caption"].startswith("factory_b · ") for item in gallery)


def test_image_query_finds_the_photo_itself(client, sample):
    photo = sample.photos[7]
    gallery, status, hits = client.predict(handle_file(str(photo.path)), 0, [], "", False, 0.0, 3, False,
                                           api_name="/search_image")
    assert hits[0]["payload"]["photo_path"] == str(photo.path) and hits[0]["score"] > 0.999
    _, _, only_c = client.predict(handle_file(str(photo.path)), -1, ["factory_c"], "", False, 0.0, 5, False,
                                  api_name="/search_image")
    assert {h["payload"]["factory"] for h in only_c} == {"factory_c"}


def test_more_like_this_returns_the_point_first(client):
    _, _, hits = client.predict("sandal", [], "", False, 0.0, 1, False, api_name="/search_text")
    _, status, similar = client.predict(hits[0]["point_id"], [], "", False, 0.0, 5, False, api_name="/more_like_this")
    assert similar[0]["point_id"] == hits[0]["point_id"] and similar[0]["score"] > 0.999
    assert status == "5 results for more like the selected crop"


def test_a_failed_request_leaves_the_app_serving(client, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    _, status, hits = client.predict(handle_file(str(bad)), 0, [], "", False, 0.0, 3, False, api_name="/search_image")
    assert hits == [] and status.startswith("⚠️ That photo cannot be used")
    _, status, hits = client.predict("boot", [], "", False, 0.0, 2, False, api_name="/search_text")
    assert len(hits) == 2
