"""`ingest search` with words, a photo by URL or by crop id, and like/dislike refinement."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(args))


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    return result.stderr


@pytest.fixture
def indexed(cli_env, monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "8")
    catalogue = make_catalogue(cli_env / "shoes", factories=2, products_per_factory=3, variants_per_product=1)
    for factory in ("factory_a", "factory_b"):
        _json(_run("add", str(catalogue.factory_dir(factory)), "--json"))
    return catalogue


def _ids(report):
    return [h["point_id"] for h in report["hits"]]


def test_photo_plus_words(indexed):
    photo = str(indexed.photos[0].path)
    plain = _json(_run("search", "--image", photo, "--top-k", "12", "--json"))
    mixed = _json(_run("search", "--image", photo, "--text", "red", "--not", "suede", "--text-weight", "0.5",
                       "--top-k", "12", "--json"))
    assert mixed["query"]["words"] == [{"text": "red", "weight": 0.5}, {"text": "suede", "weight": -0.5}]
    assert mixed["query"]["image"] == photo and mixed["query"]["region"] == "whole photo"
    assert len(mixed["hits"]) == 12 and [h["score"] for h in mixed["hits"]] != [h["score"] for h in plain["hits"]]
    zero = _json(_run("search", "--image", photo, "--text", "red", "--text-weight", "0", "--top-k", "12", "--json"))
    assert _ids(zero) == _ids(plain)  # weight 0: the photo alone
    several = _json(_run("search", "--image", photo, "--text", "red, patent", "--text", "high heel", "--json"))
    assert [w["text"] for w in several["query"]["words"]] == ["red", "patent", "high heel"]


def test_words_only_and_a_crop_by_id(indexed):
    plain = _json(_run("search", "--text", "white sneaker", "--json"))
    assert plain["query"] == {"text": "white sneaker", "truncated": False}
    words = _json(_run("search", "--text", "white sneaker", "--not", "boot", "--json"))
    assert words["query"] == {"text": "white sneaker", "words": [{"text": "boot", "weight": -1.0}]}
    target = plain["hits"][0]["point_id"]
    crop = _json(_run("search", "--crop-id", target, "--text", "black", "--top-k", "5", "--json"))
    assert crop["query"]["crop_id"] == target and len(crop["hits"]) == 5 and target not in _ids(crop)
    assert "is not a crop id" in _one_line_error(_run("search", "--crop-id", "x1", "--text", "black"))


def test_like_and_dislike(indexed):
    hits = _ids(_json(_run("search", "--text", "boot", "--top-k", "4", "--json")))
    refined = _json(_run("search", "--like", hits[0], "--like", hits[1], "--dislike", hits[2], "--top-k", "3",
                         "--factory", "factory_b", "--json"))
    assert refined["query"] == {"like": hits[:2], "dislike": [hits[2]], "strategy": "average_vector"}
    assert len(refined["hits"]) == 3 and not set(hits[:3]) & set(_ids(refined))
    assert {h["payload"]["factory"] for h in refined["hits"]} == {"factory_b"}
    away = _json(_run("search", "--dislike", hits[0], "--json"))
    assert away["query"]["strategy"] == "best_score" and hits[0] not in _ids(away)
    human = _run("search", "--like", hits[0], "--strategy", "sum_scores", "--top-k", "2")
    assert human.exit_code == 0 and human.stdout.count("\n") == 2 and "  1. " in human.stdout
    assert "is both liked and disliked" in _one_line_error(_run("search", "--like", hits[0], "--dislike", hits[0]))
    assert "Unknown strategy 'mean'" in _one_line_error(_run("search", "--like", hits[0], "--strategy", "mean"))
    assert "No indexed crop with id" in _one_line_error(
        _run("search", "--like", "00000000-0000-0000-0000-000000000001"))


@pytest.fixture
def photo_server(indexed):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(indexed.root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_image_url(indexed, photo_server, monkeypatch):
    photo = indexed.photos[3]
    url = f"{photo_server}/{photo.path.relative_to(indexed.root)}"
    # Loopback is refused by default: one line naming the setting.
    refused = _one_line_error(_run("search", "--image-url", url))
    assert "127.0.0.1 is a loopback or private-network address" in refused and "IMAGE_URL_ALLOW_PRIVATE" in refused
    monkeypatch.setenv("IMAGE_URL_ALLOW_PRIVATE", "true")
    found = _json(_run("search", "--image-url", url, "--top-k", "3", "--json"))
    assert found["query"]["image_url"] == url
    assert found["hits"][0]["payload"]["photo_path"] == str(photo.path) and found["hits"][0]["score"] > 0.999
    assert "404" in _one_line_error(_run("search", "--image-url", f"{photo_server}/nothing.jpg"))
    as_json = _run("search", "--image-url", f"{photo_server}/nothing.jpg", "--json")
    assert json.loads(as_json.stdout)["exit_code"] == 1
    monkeypatch.setenv("IMAGE_URLS", "false")
    assert "turned off here (IMAGE_URLS=false)" in _one_line_error(_run("search", "--image-url", url))


def test_a_large_photo_by_url_searches_as_the_same_file(indexed, photo_server, monkeypatch):
    """A photo past DECODE_MAX_SIDE: by URL it is decoded as by file (reduced the same way), so
    both queries embed the same vector and give the same hits and scores."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    large = indexed.root / "large.jpg"
    Image.fromarray(rng.integers(0, 255, size=(45, 60, 3), dtype=np.uint8)).resize((2400, 1800), Image.BICUBIC) \
        .save(large, format="JPEG", quality=90)
    monkeypatch.setenv("IMAGE_URL_ALLOW_PRIVATE", "true")
    by_file = _json(_run("search", "--image", str(large), "--top-k", "6", "--json"))
    by_url = _json(_run("search", "--image-url", f"{photo_server}/large.jpg", "--top-k", "6", "--json"))
    assert [(h["point_id"], h["score"]) for h in by_url["hits"]] == [(h["point_id"], h["score"]) for h in by_file["hits"]]


def test_usage_errors_exit_2(indexed):
    photo = str(indexed.photos[0].path)
    some_id = "00000000-0000-0000-0000-000000000001"
    for args in (["--image", photo, "--image-url", "http://example.com/x.jpg"],
                 ["--crop-id", some_id, "--image", photo],
                 ["--like", some_id, "--text", "red"],
                 ["--like", some_id, "--image", photo],
                 ["--text", "red", "--strategy", "best_score"],
                 ["--not", "suede"],
                 ["--image", photo, "--text-weight", "9"]):
        assert _run("search", *args).exit_code == 2, args
