"""The launched app through gradio_client: the named API endpoints work as documented."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file


@pytest.fixture
def client(served):
    return Client(served, verbose=False)


FILTERS = ["factories", "product", "exact", "min_score", "top_k", "one_per_product", "group"]


def test_named_endpoints_with_meaningful_parameters(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) >= {"/search_text", "/search_image", "/more_like_this", "/refine", "/factories"}

    def names(endpoint):
        return [p["parameter_name"] for p in endpoints[endpoint]["parameters"]]

    # Words, the URL and collapse_linked are appended after the filters: positional callers keep working.
    assert names("/search_text") == ["query", *FILTERS, "collapse_linked"]
    assert names("/search_image") == ["photo", "region", *FILTERS, "text", "text_weight", "not_text", "image_url",
                                      "collapse_linked"]
    assert names("/more_like_this") == ["point_id", *FILTERS, "text", "text_weight", "not_text", "collapse_linked"]
    assert names("/refine") == ["liked", "disliked", *FILTERS, "collapse_linked"]
    assert names("/factories") == []
    assert endpoints["/search_text"]["description"].startswith("Search by words")


def test_keyword_call_as_the_readme_shows(client, handlers):
    gallery, status, hits = client.predict(query="white leather high-top sneaker", factories=["factory_a"],
                                           top_k=5, one_per_product=True, api_name="/search_text")
    # factory_a has 4 products: one result each, though 5 were asked for.
    assert len(hits) == 4 and {h["payload"]["factory"] for h in hits} == {"factory_a"}
    assert len({h["payload"]["product_id"] for h in hits}) == 4
    assert client.predict(api_name="/factories") == [list(c) for c in handlers.factory_choices()]


def test_text_query_filtered_by_factory(client):
    gallery, status, hits = client.predict("black leather boot", ["factory_b"], "", False, 0.0, 8, False,
                                           api_name="/search_text")
    assert status == "8 results for “black leather boot”  \nby factory: factory\\_b 8"
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


def test_more_like_this_leaves_the_point_out(client):
    _, _, hits = client.predict("sandal", [], "", False, 0.0, 1, False, api_name="/search_text")
    _, status, similar = client.predict(hits[0]["point_id"], [], "", False, 0.0, 5, False, api_name="/more_like_this")
    assert len(similar) == 5 and hits[0]["point_id"] not in {h["point_id"] for h in similar}
    assert status.split("  \n")[0] == "5 results for more like the selected crop (the crop itself left out)"


def test_a_failed_request_leaves_the_app_serving(client, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    _, status, hits = client.predict(handle_file(str(bad)), 0, [], "", False, 0.0, 3, False, api_name="/search_image")
    assert hits == [] and status.startswith("⚠️ That photo cannot be used")
    _, status, hits = client.predict("boot", [], "", False, 0.0, 2, False, api_name="/search_text")
    assert len(hits) == 2


def test_readme_gradio_client_example(served, sample, tmp_path, capsys):
    """The README's gradio_client block, run as written against the launched app."""
    import re
    import shutil
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("Named API endpoints for scripts"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code and 'handle_file("query.jpg")' in code
    shutil.copy(sample.photos[0].path, tmp_path / "query.jpg")  # the working directory is tmp_path
    exec(compile(code.replace("http://127.0.0.1:7860/", served), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "results for the photo" in printed and "factory_a (" in printed


def test_every_search_endpoint_documents_every_parameter(handlers):
    """The Args Gradio reads (API and MCP descriptions): the shared filter lines are filled into each
    search endpoint's own docstring, so every parameter is described and no placeholder is left."""
    from gradio.utils import get_function_description

    from search_ui.app import build_app

    demo = build_app(handlers)
    documented = {fn.api_name: fn.fn for fn in demo.fns.values()
                  if fn.api_name in ("search_text", "search_image", "more_like_this", "refine")}
    assert len(documented) == 4
    for name, fn in documented.items():
        description, parameters, returns = get_function_description(fn)
        assert "{" not in fn.__doc__, name
        assert all(parameters.values()), (name, [p for p, text in parameters.items() if not text])
        assert parameters["factories"] == "only these factories (empty: all)"
        assert parameters["collapse_linked"].startswith("one result per group of products linked")
        assert returns == ["gallery (thumbnail, caption), status line, hits (point_id, score, payload)"]
