"""YOLO through ONNX Runtime (ultralytics' export) must give the boxes the torch predictor gives;
the export is cached, rebuilt when broken, and `auto` falls back to torch with a logged reason."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ModelUnavailable
from core.vision import onnx_yolo
from core.vision.detector import YoloDetector

SHOES = ["Footwear", "Boot"]  # the tiny model also knows High heels, Sandal, Roller skates: never kept


def build_lively_yolo(tiny_yolo: Path, target: Path, seed: int) -> Path:
    """The tests' tiny YOLO with weights that find boxes.

    A random-init YOLO's signal fades to zero through its layers (it finds nothing). Kaiming
    init keeps it alive; the class head's bias sets how many anchors pass 0.25, and the box
    head's bias gives boxes of a few strides, as a trained model's would.
    """
    import torch
    from ultralytics import YOLO

    yolo = YOLO(str(tiny_yolo))
    head = yolo.model.model[-1]
    torch.manual_seed(seed)
    for module in yolo.model.modules():
        if isinstance(module, torch.nn.Conv2d) and module is not head.dfl.conv:  # (DFL: a fixed integral)
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    for classes, boxes in zip(head.cv3, head.cv2):
        classes[-1].weight.data *= 60
        classes[-1].bias.data[:] = -4.5
        boxes[-1].weight.data *= 3
        boxes[-1].bias.data[:] = 0.0
        boxes[-1].bias.data[[3, 16 + 2, 32 + 4, 48 + 3]] = 8.0  # left, top, right, bottom: a few strides
    yolo.save(str(target))
    return target


@pytest.fixture(scope="module")
def lively_yolo(tiny_yolo_path, tmp_path_factory) -> Path:
    return build_lively_yolo(tiny_yolo_path, tmp_path_factory.mktemp("lively") / "lively-yolo.pt", seed=0)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Generated photos of three shapes (landscape, portrait, square), as ingest passes them."""
    out = onnx_yolo.probe_photos(count=6, seed=7)
    return out + [out[0].resize((300, 300)), out[1].crop((0, 0, 500, 333))]


def assert_same_boxes(expected, found) -> int:
    """Per photo: the same number of boxes, each within 1 px (rounding), same class, same confidence."""
    assert len(expected) == len(found)
    total = 0
    for want, got in zip(expected, found):
        assert len(want) == len(got)
        unmatched = list(got)
        for a in want:  # (left-to-right order can swap where a coordinate rounds the other way)
            match = [b for b in unmatched if np.abs(np.subtract(a.box, b.box)).max() <= 1 and a.label == b.label
                     and abs(a.confidence - b.confidence) < 1e-4]
            assert match, (a, unmatched)
            unmatched.remove(match[0])
        total += len(want)
    return total


@pytest.mark.parametrize("image_size", [320, 256])
def test_onnx_gives_the_torch_boxes_in_photo_pixels(lively_yolo, photos, tmp_path_factory, image_size):
    torch_detector = YoloDetector(str(lively_yolo), SHOES, image_size=image_size, device="cpu", runtime="torch")
    onnx_detector = YoloDetector(str(lively_yolo), SHOES, image_size=image_size, device="cpu", runtime="onnx",
                                 precision="fp32", cache_dir=tmp_path_factory.mktemp("models"))
    # ultralytics letterboxes a lone photo to its own rectangle; ONNX Runtime groups a mixed batch the same way.
    expected = [torch_detector.detect([photo])[0] for photo in photos]
    found = onnx_detector.detect(photos)
    assert torch_detector.active_runtime == "torch" and onnx_detector.active_runtime == "onnx fp32"
    assert not torch_detector.concurrent and onnx_detector.concurrent  # what ingest's overlap asks
    total = assert_same_boxes(expected, found)
    assert total >= 20, total  # the comparison is about real boxes
    labels = {d.label for per_photo in found for d in per_photo}
    assert labels <= set(SHOES) and len(labels) == 2
    for photo, per_photo in zip(photos, found):  # boxes in the photo's own pixels, not the model input's
        assert all(0 <= d.box[0] < d.box[2] <= photo.width and 0 <= d.box[1] < d.box[3] <= photo.height
                   for d in per_photo)
    assert max(d.box[2] for per_photo in found for d in per_photo) > image_size  # past the model's input size
    # A batch of same-shape photos goes through ultralytics as one batch too: still the same boxes.
    landscape = [p for p in photos if p.size == (640, 480)]
    assert_same_boxes(torch_detector.detect(landscape), onnx_detector.detect(landscape))


def test_export_is_cached_and_reused(lively_yolo, photos, tmp_path, monkeypatch):
    first = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="auto", cache_dir=tmp_path)
    boxes = first.detect(photos[:2])
    [exported] = [p for p in tmp_path.glob("*.onnx") if not p.name.endswith("-int8.onnx")]
    assert exported.name.startswith("lively-yolo-") and first.active_runtime.startswith("onnx")
    mtime = exported.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_yolo, "export", no_export)
    monkeypatch.setattr(onnx_yolo, "agreement", no_export)  # measured once, kept beside the model
    second = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="auto", cache_dir=tmp_path)
    assert second.detect(photos[:2]) == boxes
    assert second.active_runtime == first.active_runtime and exported.stat().st_mtime_ns == mtime


def test_broken_cached_export_is_rebuilt(lively_yolo, photos, tmp_path, caplog):
    good = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="onnx", precision="fp32",
                        cache_dir=tmp_path)
    boxes = good.detect(photos[:3])
    [exported] = tmp_path.glob("*.onnx")
    size = exported.stat().st_size
    exported.write_bytes(exported.read_bytes()[: size // 3])  # a copy cut short
    with caplog.at_level(logging.WARNING, logger="core.vision.onnx_yolo"):
        rebuilt = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="onnx",
                               precision="fp32", cache_dir=tmp_path)
        assert rebuilt.detect(photos[:3]) == boxes
    assert rebuilt.active_runtime == "onnx fp32" and exported.stat().st_size == size
    assert "unreadable" in caplog.text and "exporting it again" in caplog.text


def test_auto_falls_back_to_torch_with_the_reason_when_export_fails(lively_yolo, photos, tmp_path, monkeypatch,
                                                                    caplog):
    expected = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="torch").detect(photos[:2])
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError: not installed
    with caplog.at_level(logging.WARNING, logger="core.vision.detector"):
        detector = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="auto",
                                cache_dir=tmp_path / "models")
        assert detector.detect(photos[:2]) == expected
    assert detector.active_runtime == "torch"
    assert "runs on torch, not ONNX Runtime: the onnx package is not installed" in caplog.text
    assert "onnx package is not installed" in detector.fallback_reason
    assert not list(tmp_path.rglob("*.onnx"))
    # Asked for explicitly, ONNX is not silently replaced: one clear error.
    with pytest.raises(ModelUnavailable, match="DETECT_RUNTIME=onnx cannot be used: the onnx package is not installed"):
        YoloDetector(str(lively_yolo), SHOES, device="cpu", runtime="onnx", cache_dir=tmp_path / "models").load()


def test_export_into_an_unusable_cache_folder_falls_back_to_torch(lively_yolo, tmp_path, caplog):
    blocker = tmp_path / "models"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="core.vision.detector"):
        detector = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="auto",
                                cache_dir=blocker)
        detector.load()
    assert detector.active_runtime == "torch"
    assert "ONNX export failed (FileExistsError" in caplog.text


def test_int8_is_kept_only_when_its_boxes_agree(lively_yolo, tiny_yolo_path, tmp_path):
    fp32_path, int8_path = onnx_yolo.cache_paths(lively_yolo, tmp_path)
    fp32 = onnx_yolo.OnnxYolo(onnx_yolo.load_or_export(lively_yolo, fp32_path, 320))
    same = onnx_yolo.agreement(fp32, fp32, 320)
    assert same["boxes"] >= 100 and same["min_iou"] == 1.0 and same["class_agreement"] == 1.0
    assert same["max_score_diff"] == 0.0 and onnx_yolo.agrees(same)
    # Another model's boxes (other weights) must fail the guard.
    other_pt = build_lively_yolo(tiny_yolo_path, tmp_path / "other-yolo.pt", seed=1)
    other_path, _ = onnx_yolo.cache_paths(other_pt, tmp_path)
    other = onnx_yolo.OnnxYolo(onnx_yolo.load_or_export(other_pt, other_path, 320))
    differs = onnx_yolo.agreement(fp32, other, 320)
    assert not onnx_yolo.agrees(differs) and differs["min_iou"] < 0.5
    # auto: the int8 sibling is measured once, the record kept beside it, and int8 used only
    # when it agrees and is faster than fp32 on the probe photos.
    auto = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="onnx", cache_dir=tmp_path)
    auto.load()
    record = auto.int8_agreement
    assert int8_path.exists() and int8_path.with_name(int8_path.stem + ".agreement.json").exists()
    assert record["boxes"] >= 100
    wanted = onnx_yolo.agrees(record) and record["int8_seconds"] < record["fp32_seconds"]
    assert auto.active_runtime == ("onnx int8" if wanted else "onnx fp32")
    forced = YoloDetector(str(lively_yolo), SHOES, image_size=320, device="cpu", runtime="onnx", precision="int8",
                          cache_dir=tmp_path)
    forced.load()
    assert forced.active_runtime == "onnx int8"


def test_settings_select_the_detector_runtime(settings):
    from core.app import build_detector

    chosen = settings.model_copy(update={"detector_model": "some.pt", "detect_runtime": "onnx",
                                         "detect_precision": "fp32"})
    detector = build_detector(chosen)
    assert (detector.runtime, detector.precision, detector.cache_dir) == ("onnx", "fp32", settings.models_cache_dir)
    from core.settings import Settings

    assert Settings(_env_file=None).detect_runtime == "auto"
    with pytest.raises(ValueError, match="detect_runtime"):
        Settings(_env_file=None, detect_runtime="tensorrt")


def test_loading_the_torch_detector_leaves_onnx_runtime_its_threads(lively_yolo, tmp_path):
    """ultralytics sets OMP_NUM_THREADS=1 on import; later ONNX Runtime sessions (CLIP's int8
    tower, in the CLI loaded after the detector) would then run on one core."""
    import os
    import subprocess

    code = ("import os, sys\n"
            "from core.vision.detector import YoloDetector\n"
            f"YoloDetector({str(lively_yolo)!r}, ['Footwear'], device='cpu', runtime='torch').load()\n"
            "print('ultralytics' in sys.modules, os.environ.get('OMP_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "True None", done.stderr[-2000:]
