"""Real model loading: tiny CLIP through sentence-transformers, tiny YOLO through ultralytics,
and one clear error when a model is missing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from core.errors import ModelUnavailable
from core.vision.detector import YoloDetector
from core.vision.embedder import ClipEmbedder, clean_query_text, model_id_for


def test_clip_vectors_are_normalized_and_shared_by_images_and_text(tiny_embedder):
    images = tiny_embedder.embed_images([Image.new("RGB", (80, 60), c) for c in ("red", "blue", "white")])
    texts = tiny_embedder.embed_texts(["white leather high-top sneaker", "black boot"])
    assert images.shape == (3, tiny_embedder.dimension) == (3, 16) and texts.shape == (2, 16)
    assert images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([images, texts]), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images[0], images[1])


def test_text_that_looks_like_a_photo_path_is_embedded_as_text(tiny_embedder, tmp_path):
    photo = tmp_path / "shoe.jpg"
    Image.new("RGB", (64, 64), "red").save(photo)
    [as_text] = tiny_embedder.embed_texts([str(photo)])  # raw, sentence-transformers would open the file
    [as_image] = tiny_embedder.embed_images([Image.open(photo)])
    assert not np.allclose(as_text, as_image, atol=1e-3)
    photo.unlink()  # now the raw string can only be text: padding must not change its vector
    [raw_text] = tiny_embedder._encode([str(photo)])
    np.testing.assert_allclose(as_text, raw_text, atol=1e-6)
    assert clean_query_text("  white   sneaker ") == " white sneaker "


def test_model_id_of_a_local_folder_is_its_name(tiny_clip_dir):
    assert model_id_for(str(tiny_clip_dir)) == "tiny-clip"
    assert model_id_for("sentence-transformers/clip-ViT-B-32") == "clip-ViT-B-32"


@pytest.mark.parametrize("name,expected", [
    ("clip-ViT-B-32", "CLIP model 'clip-ViT-B-32' could not be loaded .*set CLIP_MODEL to a local folder"),
    ("./models/nowhere", "CLIP model folder not found: ./models/nowhere. Set CLIP_MODEL"),
])
def test_missing_clip_model_is_one_clear_error(name, expected):
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=expected):
        ClipEmbedder(name, device="cpu").load()
    assert time.perf_counter() - started < 60  # offline env: no DNS retry loop


def test_tiny_yolo_loads_and_finds_no_boxes(tiny_yolo_path):
    detector = YoloDetector(str(tiny_yolo_path), ["Footwear", "Boot"], image_size=64, device="cpu")
    found = detector.detect([Image.new("RGB", (120, 80), "white"), Image.new("RGB", (64, 64), "red")])
    assert found == [[], []]
    assert sorted(detector._class_ids.values()) == ["Boot", "Footwear"]


@pytest.mark.parametrize("name,expected", [
    ("yolov8n-oiv7.pt", "Detector model 'yolov8n-oiv7.pt' could not be loaded .*set DETECTOR_MODEL to a local .pt"),
    ("/no/such/weights.pt", "Detector weights not found: /no/such/weights.pt"),
])
def test_missing_detector_is_one_clear_error(name, expected):
    with pytest.raises(ModelUnavailable, match=expected):
        YoloDetector(name, ["Footwear"]).detect([Image.new("RGB", (8, 8))])


def test_detector_without_shoe_classes_is_refused(tiny_yolo_path):
    with pytest.raises(ModelUnavailable, match="knows none of DETECTOR_CLASSES .Person."):
        YoloDetector(str(tiny_yolo_path), ["Person"]).load()


def test_uncached_hub_model_without_offline_flags_fails_fast(monkeypatch):
    """Not in the cache and the hub unreachable: one clear error, no minutes of hub retries."""
    import core.vision.lazy_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(core.vision.lazy_model, "hub_reachable", lambda *a, **k: probes.append(1) or False)
    with pytest.raises(ModelUnavailable, match="not in the local model cache, and huggingface.co cannot be reached"):
        ClipEmbedder("sentence-transformers/clip-ViT-B-32", device="cpu").load()
    assert probes == [1]


def test_hub_offline_flag_skips_the_probe(monkeypatch):
    import core.vision.lazy_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(core.vision.lazy_model, "hub_reachable", lambda *a, **k: pytest.fail("probed while offline"))
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        ClipEmbedder("clip-ViT-B-32", device="cpu").load()
