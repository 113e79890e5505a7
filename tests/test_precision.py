"""The fast path must not change answers: int8 (ONNX Runtime) against fp32 on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.vision.embedder import ClipEmbedder
from tools.sample_catalogue import make_catalogue


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    catalogue = make_catalogue(tmp_path_factory.mktemp("prec") / "shoes", factories=2, products_per_factory=8,
                               variants_per_product=2)
    return [Image.open(p.path).convert("RGB") for p in catalogue.photos]


@pytest.fixture(scope="module")
def int8(tiny_clip_dir, tmp_path_factory):
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="int8",
                            cache_dir=tmp_path_factory.mktemp("models"))
    embedder.load()
    return embedder


def test_int8_top_k_matches_fp32(int8, tiny_embedder, photos):
    fast = int8.embed_images(photos)
    exact = tiny_embedder.embed_images(photos)
    assert int8.active_precision == "int8" and tiny_embedder.active_precision == "fp32"
    cosine = (fast * exact).sum(axis=1)
    assert cosine.min() > 0.99
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    # Each photo as a query: its 5 nearest neighbours in the int8 index versus the fp32 index.
    k = 5
    overlaps = []
    for q in range(len(photos)):
        near_exact = set(np.argsort(-(exact @ exact[q]))[1:k + 1])
        near_fast = set(np.argsort(-(fast @ exact[q]))[1:k + 1])
        overlaps.append(len(near_exact & near_fast) / k)
    assert np.mean(overlaps) >= 0.8, np.mean(overlaps)
    # Text stays on the fp32 torch model: identical vectors.
    np.testing.assert_array_equal(int8.embed_texts(["white sneaker"]), tiny_embedder.embed_texts(["white sneaker"]))


@pytest.mark.parametrize("bar,expected", [(1.01, "fp32"), (0.5, "int8")])
def test_auto_uses_int8_only_when_it_agrees_with_fp32(tiny_clip_dir, int8, monkeypatch, bar, expected):
    """auto measures int8 against fp32 on probe photos and keeps fp32 below the bar."""
    import core.vision.embedder

    monkeypatch.setattr(core.vision.embedder, "INT8_MIN_COSINE", bar)
    cache = int8.cache_dir
    exported = sorted(cache.glob("*.onnx"))
    mtime = exported[0].stat().st_mtime
    auto = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="auto", cache_dir=cache)
    auto.load()
    assert auto.active_precision == expected
    assert len(list(cache.glob("*.agreement.json"))) == 1  # measured once, kept beside the model
    assert sorted(cache.glob("*.onnx")) == exported and exported[0].stat().st_mtime == mtime  # reused, not re-exported


def test_fp32_precision_never_exports(tiny_clip_dir, tmp_path):
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32", cache_dir=tmp_path / "models")
    embedder.load()
    assert embedder.active_precision == "fp32" and not (tmp_path / "models").exists()


TEXTS = ["white leather high-top sneaker", "red boot", "a " * 200 + "very long description",  # cut at 77 tokens
         "   black   ankle boot  "]


@pytest.mark.parametrize("precision", ["auto", "int8"])
def test_text_tower_through_onnx_runtime_agrees_with_torch(tiny_clip_dir, tiny_embedder, tmp_path, precision,
                                                           monkeypatch):
    """TEXT_PRECISION: the ONNX text tower gives the torch model's text vectors (padding and cut included)."""
    import core.vision.embedder

    exact = tiny_embedder.embed_texts(TEXTS)
    if precision == "auto":  # a bar int8 cannot reach: auto keeps the fp32 export, equal to torch
        monkeypatch.setattr(core.vision.embedder, "INT8_MIN_COSINE", 1.01)
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32", text_precision=precision,
                            cache_dir=tmp_path / "models")
    fast = embedder.embed_texts(TEXTS)
    assert embedder.active_precision == "fp32"  # the image tower is not touched
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    if precision == "auto":
        assert embedder.active_text_precision == "onnx fp32" and embedder.text_agreement < 1.01
        np.testing.assert_allclose(fast, exact, atol=2e-5)
        assert len(list((tmp_path / "models").glob("*-text-fp32.onnx"))) == 1
    else:
        assert embedder.active_text_precision == "int8"
        assert (fast * exact).sum(axis=1).min() > 0.99
    one = np.vstack([embedder.embed_texts([t])[0] for t in TEXTS])  # alone, no padding: the same vectors
    if precision == "auto":
        np.testing.assert_allclose(one, fast, atol=2e-5)
    else:  # int8 activations are scaled per run (dynamic quantization): a batch shifts them a little
        assert (one * exact).sum(axis=1).min() > 0.99


def test_text_precision_fp32_never_exports(tiny_clip_dir, tmp_path):
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32", text_precision="fp32",
                            cache_dir=tmp_path / "models")
    embedder.embed_texts(["white sneaker"])
    assert embedder.active_text_precision == "fp32" and not (tmp_path / "models").exists()
