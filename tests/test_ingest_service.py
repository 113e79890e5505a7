"""The ingest pipeline on real files, a real Edge store, the tiny real CLIP and a blob detector."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from core.catalogue.folders import discover
from core.domain.ids import point_id
from core.errors import SchemaMismatch
from core.pipeline.ingest import IngestService
from core.store.edge import EdgeStore
from core.vision.images import file_sha256
from tests.conftest import CountingEmbedder, two_shoes_photo
from tools.sample_catalogue import make_catalogue


@pytest.fixture
def store(tmp_path):
    s = EdgeStore(tmp_path / "data" / "qdrant-edge", "shoes")
    yield s
    s.close()


def _service(store, embedder, detector, tmp_path, **kw):
    return IngestService(store, embedder, detector, tmp_path / "data", batch_size=4, **kw)


def test_every_detected_shoe_becomes_a_crop_with_full_payload(tmp_path, store, counting_embedder, blob_detector):
    photo = two_shoes_photo(tmp_path / "factory_a" / "SKU1" / "pair.jpg")
    service = _service(store, counting_embedder, blob_detector, tmp_path, crop_margin=0.0)
    report = service.add(discover(tmp_path / "factory_a"), "factory_a")
    assert (report.photos_added, report.crops_added, report.photos_failed) == (1, 2, [])
    sha = file_sha256(photo)
    points = sorted(store.scroll(with_vectors=True), key=lambda p: p.payload["crop_index"])
    assert [p.id for p in points] == [point_id("factory_a", sha, 0), point_id("factory_a", sha, 1)]
    left, right = (p.payload for p in points)
    assert left["box"] == [30, 80, 150, 160] and right["box"] == [250, 70, 350, 160]
    assert (left["width"], left["height"], left["photo_width"], left["photo_height"]) == (120, 80, 400, 200)
    for payload in (left, right):
        assert payload["factory"] == "factory_a" and payload["product_id"] == "SKU1"
        assert payload["photo_path"] == str(photo.absolute()) and payload["photo_sha256"] == sha
        assert payload["detector_class"] == "Footwear" and payload["detector_confidence"] == 0.9
        assert payload["model"] == counting_embedder.model_id and payload["ingested_at"].endswith("+00:00")
        thumb = tmp_path / "data" / payload["crop_path"]
        assert thumb.is_file() and Image.open(thumb).format == "JPEG"
    # The stored vector is the CLIP vector of the crop itself, normalized.
    crop = Image.open(photo).convert("RGB").crop((30, 80, 150, 160))
    np.testing.assert_allclose(points[0].vector, counting_embedder.embed_images([crop])[0], atol=1e-4)
    assert abs(np.linalg.norm(points[0].vector) - 1) < 1e-4


def test_photo_without_detection_is_embedded_whole(tmp_path, store, tiny_embedder):
    from core.vision.detector import NoDetector

    path = tmp_path / "f" / "P9.png"
    path.parent.mkdir()
    Image.new("RGB", (90, 60), (10, 200, 10)).save(path)
    report = _service(store, tiny_embedder, NoDetector(), tmp_path).add(discover(tmp_path / "f"), "f")
    [point] = list(store.scroll())
    assert report.crops_added == 1
    assert point.payload["box"] is None and point.payload["detector_class"] is None
    assert (point.payload["width"], point.payload["height"], point.payload["product_id"]) == (90, 60, "P9")


def test_rerun_adds_nothing_and_embeds_nothing(tmp_path, store, counting_embedder, blob_detector):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=4)
    first = _service(store, counting_embedder, blob_detector, tmp_path).add(discover(catalogue.factory_dir("factory_a")), "factory_a")
    count, embedded = store.count(), counting_embedder.images_embedded
    assert first.photos_added == len(catalogue.photos) == 12 and count >= 12
    fresh = CountingEmbedder(counting_embedder.inner)
    second = _service(store, fresh, blob_detector, tmp_path).add(discover(catalogue.factory_dir("factory_a")), "factory_a")
    assert (second.photos_seen, second.photos_unchanged, second.photos_added, second.crops_added) == (12, 12, 0, 0)
    assert fresh.images_embedded == 0 and store.count() == count and embedded == count


def test_moved_photo_is_updated_not_duplicated(tmp_path, store, tiny_embedder, blob_detector):
    root = tmp_path / "factory_a"
    photo = two_shoes_photo(root / "OLD-SKU" / "a.jpg")
    service = _service(store, tiny_embedder, blob_detector, tmp_path)
    service.add(discover(root), "factory_a")
    ids_before = sorted(p.id for p in store.scroll())
    moved = root / "NEW-SKU" / "renamed.jpg"
    moved.parent.mkdir()
    shutil.move(photo, moved)
    (root / "OLD-SKU").rmdir()
    report = service.add(discover(root), "factory_a")
    assert (report.photos_updated, report.photos_added) == (1, 0)
    points = list(store.scroll())
    assert sorted(p.id for p in points) == ids_before
    assert {(p.payload["photo_path"], p.payload["product_id"]) for p in points} == {(str(moved.absolute()), "NEW-SKU")}


def test_photo_edited_in_place_replaces_its_old_crops(tmp_path, store, tiny_embedder, blob_detector):
    root = tmp_path / "factory_a"
    photo = two_shoes_photo(root / "S1" / "a.jpg")
    service = _service(store, tiny_embedder, blob_detector, tmp_path)
    service.add(discover(root), "factory_a")
    old_thumbs = [tmp_path / "data" / p.payload["crop_path"] for p in store.scroll()]
    Image.new("RGB", (100, 100), (0, 0, 0)).save(photo)  # same path, new bytes, no detection
    report = service.add(discover(root), "factory_a")
    points = list(store.scroll())
    assert report.photos_added == 1 and len(points) == 1
    assert points[0].payload["photo_sha256"] == file_sha256(photo) and points[0].payload["box"] is None
    assert not any(t.exists() for t in old_thumbs)


def test_same_bytes_in_two_factories_are_two_points(tmp_path, store, tiny_embedder, blob_detector):
    a = two_shoes_photo(tmp_path / "factory_a" / "A1.jpg")
    b = tmp_path / "factory_b" / "B1.jpg"
    b.parent.mkdir()
    shutil.copy(a, b)
    service = _service(store, tiny_embedder, blob_detector, tmp_path)
    service.add(discover(tmp_path / "factory_a"), "factory_a")
    service.add(discover(tmp_path / "factory_b"), "factory_b")
    assert store.facet("factory") == {"factory_a": 2, "factory_b": 2}


def test_corrupt_photos_are_skipped_reported_and_the_run_goes_on(tmp_path, store, tiny_embedder, blob_detector):
    root = tmp_path / "factory_a"
    two_shoes_photo(root / "good.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    service = _service(store, tiny_embedder, blob_detector, tmp_path)
    report = service.add(discover(root), "factory_a")
    assert report.photos_added == 1 and report.crops_added == 2
    assert {f.path.rsplit("/", 1)[1]: f.error.split(" (")[0] for f in report.photos_failed} == {
        "empty.jpg": "empty file", "text.jpg": "not an image Pillow can read"}
    again = service.add(discover(root), "factory_a")  # failures are retried, successes not duplicated
    assert (again.photos_unchanged, len(again.photos_failed), store.count()) == (1, 2, 2)


def test_other_model_is_refused_before_any_work(tmp_path, store, tiny_embedder, blob_detector):
    two_shoes_photo(tmp_path / "factory_a" / "a.jpg")
    _service(store, tiny_embedder, blob_detector, tmp_path).add(discover(tmp_path / "factory_a"), "factory_a")

    class OtherModel(CountingEmbedder):
        model_id = "another-clip"

    other = OtherModel(tiny_embedder)
    other.model_id = "another-clip"
    two_shoes_photo(tmp_path / "factory_a" / "b.jpg")
    with pytest.raises(SchemaMismatch, match="another-clip"):
        _service(store, other, blob_detector, tmp_path).add(discover(tmp_path / "factory_a"), "factory_a")
    assert other.images_embedded == 0 and store.count() == 2


def test_remove_by_factory_and_by_path(tmp_path, store, tiny_embedder, blob_detector):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=3, variants_per_product=1)
    service = _service(store, tiny_embedder, blob_detector, tmp_path)
    for factory in ("factory_a", "factory_b"):
        service.add(discover(catalogue.factory_dir(factory)), factory)
    product_dir = catalogue.factory_dir("factory_a") / "A100"
    doomed = service.find(path=product_dir)
    assert {p.payload["product_id"] for p in doomed} == {"A100"} and len(doomed) >= 2
    thumbs = [tmp_path / "data" / p.payload["crop_path"] for p in doomed]
    before = store.count()
    assert service.remove(doomed) == len(doomed)
    assert store.count() == before - len(doomed) and not any(t.exists() for t in thumbs)
    b_count = store.count({"factory": ["factory_b"]})
    assert service.remove(service.find(factory="factory_b")) == b_count
    assert set(store.facet("factory")) == {"factory_a"}


def test_large_jpeg_decodes_at_reduced_scale_with_boxes_in_original_pixels(tmp_path, store, tiny_embedder,
                                                                          blob_detector):
    root = tmp_path / "factory_big"
    root.mkdir()
    img = Image.new("RGB", (4000, 2000), (245, 245, 245))
    img.paste(Image.new("RGB", (1200, 800), (190, 30, 40)), (400, 1000))
    img.save(root / "camera.jpg", quality=90)
    service = _service(store, tiny_embedder, blob_detector, tmp_path, crop_margin=0.0, decode_max_side=1000)
    service.add(discover(root), "factory_big")
    [point] = list(store.scroll())
    assert (point.payload["photo_width"], point.payload["photo_height"]) == (4000, 2000)
    x1, y1, x2, y2 = point.payload["box"]  # found on the 1/2-scale decode, stored in original pixels
    assert abs(x1 - 400) <= 4 and abs(y1 - 1000) <= 4 and abs(x2 - 1600) <= 4 and abs(y2 - 1800) <= 4
    assert (point.payload["width"], point.payload["height"]) == (x2 - x1, y2 - y1)
    thumb = Image.open(tmp_path / "data" / point.payload["crop_path"])
    assert max(thumb.size) == 256


def test_a_file_replaced_after_its_hash_is_stored_with_the_hash_of_its_pixels(tmp_path, store, tiny_embedder,
                                                                             monkeypatch):
    """The file is swapped for another photo right after its first read (the hash): what is
    stored must pair the hash and the pixels of one and the same file."""
    import os

    import core.pipeline.ingest as ingest_module

    root = tmp_path / "factory_s"
    root.mkdir()
    path = root / "P1.png"
    Image.new("RGB", (60, 40), (200, 0, 0)).save(path)
    Image.new("RGB", (90, 30), (0, 0, 200)).save(tmp_path / "other.png")
    first_read = file_sha256(path)
    real_sha256 = ingest_module.file_sha256

    def hash_then_swap(p, *args, **kwargs):
        digest = real_sha256(p, *args, **kwargs)
        if (tmp_path / "other.png").exists():
            os.replace(tmp_path / "other.png", p)
        return digest

    monkeypatch.setattr(ingest_module, "file_sha256", hash_then_swap)
    report = _service(store, tiny_embedder, _NoDetector(), tmp_path).add(discover(root), "factory_s")
    assert (report.photos_added, report.photos_failed) == (1, [])
    [point] = list(store.scroll())
    now = file_sha256(path)
    assert now != first_read
    assert point.payload["photo_sha256"] == now and point.id == point_id("factory_s", now, 0)
    assert (point.payload["photo_width"], point.payload["photo_height"]) == (90, 30)
    thumb = Image.open(tmp_path / "data" / point.payload["crop_path"]).convert("RGB")
    assert thumb.getpixel((5, 5))[2] > 150 > thumb.getpixel((5, 5))[0]  # the blue photo's pixels


def _NoDetector():
    from core.vision.detector import NoDetector

    return NoDetector()


class _PoisonedEmbedder(CountingEmbedder):
    """The real tiny embedder that fails on any batch holding a 77x77 crop (as a model running
    out of memory on one odd photo would)."""

    def __init__(self, inner, error: BaseException) -> None:
        super().__init__(inner)
        self.error = error
        self.calls = 0

    def embed_images(self, images):
        self.calls += 1
        if any(img.size == (77, 77) for img in images):
            raise self.error
        return super().embed_images(images)


@pytest.mark.parametrize("error,reason", [
    (MemoryError(), "cannot process: not enough memory for this photo"),
    (RuntimeError("shape mismatch in layer 3\nmore detail"), "cannot process: RuntimeError: shape mismatch in layer 3"),
])
def test_a_photo_that_breaks_a_batch_is_reported_alone(tmp_path, store, tiny_embedder, error, reason):
    root = tmp_path / "factory_p"
    root.mkdir()
    for k in range(3):
        Image.new("RGB", (60, 40), (40 * k, 90, 90)).save(root / f"good{k}.png")
    Image.new("RGB", (77, 77), (1, 1, 1)).save(root / "odd.png")
    embedder = _PoisonedEmbedder(tiny_embedder, error)
    report = _service(store, embedder, _NoDetector(), tmp_path).add(discover(root), "factory_p")
    assert report.photos_added == 3 and store.count() == 3
    assert [(f.path.rsplit("/", 1)[-1], f.error) for f in report.photos_failed] == [("odd.png", reason)]
    assert embedder.calls == 1 + 4  # the batch, then each photo alone


def test_a_model_that_cannot_load_still_stops_the_run(tmp_path, store, tiny_embedder):
    from core.errors import ModelUnavailable

    root = tmp_path / "factory_p"
    root.mkdir()
    Image.new("RGB", (77, 77)).save(root / "odd.png")
    embedder = _PoisonedEmbedder(tiny_embedder, ModelUnavailable("CLIP model 'x' could not be loaded"))
    with pytest.raises(ModelUnavailable):
        _service(store, embedder, _NoDetector(), tmp_path).add(discover(root), "factory_p")


def test_stored_payload_is_the_computed_keys_plus_manifest_extras(tmp_path, store, tiny_embedder, blob_detector):
    """The keys a manifest may not use are exactly those ingest writes (and clustering's group keys)."""
    from core.domain.types import COMPUTED_PAYLOAD_KEYS, reserved_payload_key
    from core.domain.options import Tier

    photo = two_shoes_photo(tmp_path / "factory_a" / "pair.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,product_id,colour\npair.jpg,SKU-1,red\n")
    _service(store, tiny_embedder, blob_detector, tmp_path).add(discover(photo.parent, manifest=manifest), "factory_a")
    points = list(store.scroll())
    assert len(points) == 2
    for point in points:
        assert set(point.payload) == set(COMPUTED_PAYLOAD_KEYS) | {"colour"}
        assert point.payload["colour"] == "red" and point.payload["product_id"] == "SKU-1"
    assert all(reserved_payload_key(tier.payload_key) for tier in Tier)


def test_large_decodes_are_queued_within_the_pixel_budget(tmp_path, store, tiny_embedder):
    """Three 6-megapixel PNGs with MAX_IMAGE_PIXELS=10M: never two decoded at full size at once,
    and each leaves the decoder at DECODE_MAX_SIDE."""
    root = tmp_path / "factory_big"
    root.mkdir()
    for k in range(3):
        Image.new("RGB", (3000, 2000), (60 * k, 90, 90)).save(root / f"big{k}.png", compress_level=1)
    service = _service(store, tiny_embedder, _NoDetector(), tmp_path, max_image_pixels=10_000_000,
                       decode_max_side=800)
    report = service.add(discover(root), "factory_big")
    assert report.photos_added == 3
    assert service.decode_budget.peak == 6_000_000 and service.decode_budget.in_use == 0
    assert {(p.payload["photo_width"], p.payload["photo_height"]) for p in store.scroll()} == {(3000, 2000)}


class _CallCountingEmbedder(CountingEmbedder):
    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.calls = 0

    def embed_images(self, images):
        self.calls += 1
        return super().embed_images(images)


class _OneAtATimeDetector:
    """Finds no shoe, slowly, and records how many calls ran at once (ultralytics' torch
    predictor, or any detector the pipeline does not know, must never be called concurrently)."""

    name = "one-at-a-time"

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.active = self.most = self.calls = 0

    def detect(self, images):
        import time

        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1
        return [[] for _ in images]


def test_models_overlap_only_when_they_may(tmp_path, store, tiny_embedder):
    """An unknown detector gets whole batches, one call at a time; with no detection (or ONNX
    Runtime) and an ONNX Runtime image tower the models get half batches, two at a time. Same
    points either way, progress in batch order."""
    root = tmp_path / "factory_o"
    root.mkdir()
    for k in range(12):
        Image.new("RGB", (60, 40), (20 * k, 90, 90)).save(root / f"p{k:02d}.png")
    detector = _OneAtATimeDetector()
    progress = []
    report = _service(store, tiny_embedder, detector, tmp_path).add(discover(root), "factory_o",
                                                                    progress=lambda done, _: progress.append(done))
    assert report.photos_added == 12 and store.count() == 12
    assert (detector.calls, detector.most) == (3, 1)  # 3 batches of 4, never two at once
    assert progress == [4, 8, 12]

    halves = _CallCountingEmbedder(tiny_embedder)
    halves.concurrent = True  # may run beside the detector, as ClipEmbedder says with its int8 ONNX tower
    other = tmp_path / "factory_h"
    shutil.copytree(root, other)
    report = _service(store, halves, _NoDetector(), tmp_path).add(discover(other), "factory_h")
    assert report.photos_added == 12 and halves.calls == 6  # 3 batches of 4, as halves of 2


def test_models_say_whether_they_may_run_beside_another(tiny_embedder, tmp_path):
    """What ingest's overlap asks each model (`concurrent`): no detection and the int8 ONNX image
    tower may; CLIP in torch may not."""
    from core.vision.detector import NoDetector
    from core.vision.embedder import ClipEmbedder

    assert NoDetector().concurrent is True
    tiny_embedder.load()
    assert tiny_embedder.active_precision == "fp32" and tiny_embedder.concurrent is False
    int8 = ClipEmbedder(tiny_embedder.model_name, device="cpu", precision="int8",
                        cache_dir=tmp_path)
    int8.load()
    assert int8.active_precision == "int8" and int8.concurrent is True
