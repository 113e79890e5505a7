"""Shoe detection: a Detector protocol, the ultralytics YOLO detector, and 'detection off'."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from core.domain.types import Detection
from core.errors import ModelUnavailable
from core.vision.lazy_model import LazyModel

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class Detector(Protocol):
    """Finds shoes. `detect` returns one list of detections per input image, in order."""

    name: str

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]: ...


class NoDetector:
    """Detection turned off (`DETECTOR_MODEL=none`): every photo is embedded whole."""

    name = "none"
    concurrent = True  # nothing runs: safe beside anything

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        return [[] for _ in images]


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith(".") or Path(value).exists()


class YoloDetector(LazyModel):
    """ultralytics YOLO, loaded on first use, keeping only boxes of the shoe classes.

    `model` is a weights name (downloaded by ultralytics on first use, e.g.
    `yolov8n-oiv7.pt`, Open Images V7 with footwear classes) or a local `.pt` file.

    `runtime`: `torch` (ultralytics' predictor), `onnx` (ultralytics' ONNX export of the same
    weights, cached under `cache_dir`, run by ONNX Runtime with the predictor's own pre- and
    postprocessing: the same boxes), or `auto` = onnx on a CPU when the export works, else torch
    with the reason logged. `precision` (onnx only): `fp32`, `int8` (dynamic quantization), or
    `auto` = int8 when its boxes agree with fp32 on probe photos and it is faster, else fp32.
    """

    kind = "Detector model"
    offline_hint = "set DETECTOR_MODEL to a local .pt file, or to 'none' to turn detection off"

    def __init__(
        self,
        model: str,
        classes: Sequence[str],
        confidence: float = 0.25,
        image_size: int = 320,
        device: str = "auto",
        batch_size: int = 16,
        runtime: str = "torch",
        precision: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.name = model
        self.classes = list(classes)
        self.confidence = confidence
        self.image_size = image_size
        self.device = device
        self.batch_size = batch_size
        self.runtime = runtime
        self.precision = precision
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.active_runtime = ""  # after load: "torch", "onnx fp32" or "onnx int8"
        self.fallback_reason = ""  # why `auto` runs on torch
        self.int8_agreement: dict | None = None  # int8 against fp32 on the probe photos, when measured
        self._yolo = None
        self._onnx = None
        self._class_ids: dict[int, str] = {}

    @property
    def concurrent(self) -> bool:
        """May two `detect` calls run at once (after load)? Through ONNX Runtime, yes (thread-safe
        sessions whose idle threads sleep, see onnx_yolo.no_spinning); ultralytics' torch
        predictor keeps per-call state, so no."""
        return self.active_runtime.startswith("onnx")

    def _load(self) -> None:
        if _looks_like_path(self.name) and not Path(self.name).is_file():
            raise ModelUnavailable(
                f"Detector weights not found: {self.name}. Set DETECTOR_MODEL to an existing "
                f"YOLO .pt file, to a name ultralytics can download (e.g. yolov8n-oiv7.pt), "
                f"or to 'none' to embed whole photos."
            )
        if self._wants_onnx():
            from core.vision import onnx_yolo

            try:
                self._load_onnx()
                return
            except onnx_yolo.Unavailable as exc:
                if self.runtime == "onnx":
                    raise ModelUnavailable(f"DETECT_RUNTIME=onnx cannot be used: {exc}. "
                                           f"Set DETECT_RUNTIME=torch or auto.") from exc
                self.fallback_reason = str(exc)
                log.warning("detector %s runs on torch, not ONNX Runtime: %s", self.name, exc)
        self._yolo = self._load_torch()
        self.active_runtime = "torch"

    def _wants_onnx(self) -> bool:
        if self.runtime == "onnx":
            return True
        if self.runtime != "auto":
            return False
        from core.vision.embedder import resolve_device

        return resolve_device(self.device) == "cpu"  # CUDA: torch in fp16

    def _load_torch(self):
        from core.vision.onnx_yolo import keep_thread_setting

        try:
            with keep_thread_setting():
                from ultralytics import YOLO

                yolo = YOLO(self.name)
        except Exception as exc:  # ultralytics raises many kinds on a failed download
            raise self.unavailable(self.name, exc) from exc
        self._class_ids = self._shoe_classes({int(k): str(v) for k, v in dict(yolo.names).items()})
        return yolo

    def _shoe_classes(self, names: dict[int, str]) -> dict[int, str]:
        wanted = {c.lower() for c in self.classes}
        class_ids = {i: n for i, n in names.items() if n.lower() in wanted}
        if not class_ids:
            sample = ", ".join(list(names.values())[:8])
            raise ModelUnavailable(
                f"Detector model '{self.name}' knows none of DETECTOR_CLASSES "
                f"({', '.join(self.classes)}); its classes start with: {sample}. "
                f"Use a footwear model (e.g. yolov8n-oiv7.pt) or set DETECTOR_CLASSES."
            )
        return class_ids

    def _load_onnx(self) -> None:
        """The cached export (made on first use) of the weights file; int8 as `precision` says."""
        from core.vision import onnx_yolo

        weights = Path(self.name)
        if not weights.is_file():  # a name ultralytics downloads: let it fetch the file first
            weights = Path(self._load_torch().ckpt_path)
        fp32_path, int8_path = onnx_yolo.cache_paths(weights, self.cache_dir)
        fp32 = onnx_yolo.OnnxYolo(onnx_yolo.load_or_export(weights, fp32_path, self.image_size), fp32_path)
        self._class_ids = self._shoe_classes(fp32.names)
        model, label = fp32, "onnx fp32"
        if self.precision in ("auto", "int8"):
            try:
                int8 = self._int8(fp32_path, int8_path)
            except onnx_yolo.Unavailable as exc:
                if self.precision == "int8":
                    raise ModelUnavailable(f"DETECT_PRECISION=int8 cannot be used: {exc}.") from exc
                int8 = None
            if int8 is not None and self.precision == "int8":
                model, label = int8, "onnx int8"
            elif int8 is not None:
                self.int8_agreement = onnx_yolo.cached_agreement(fp32, int8, int8_path, self.image_size)
                if onnx_yolo.agrees(self.int8_agreement) and \
                        self.int8_agreement["int8_seconds"] < self.int8_agreement["fp32_seconds"]:
                    model, label = int8, "onnx int8"
        self._onnx, self.active_runtime = model, label

    @staticmethod
    def _int8(fp32_path: Path, int8_path: Path):
        """The int8 sibling of the fp32 export, quantized again when missing, older or unreadable."""
        from core.vision import onnx_yolo

        record = int8_path.with_name(int8_path.stem + ".agreement.json")
        if int8_path.exists() and int8_path.stat().st_mtime >= fp32_path.stat().st_mtime:
            try:
                return onnx_yolo.OnnxYolo(onnx_yolo.open_session(int8_path), int8_path)
            except Exception as exc:
                log.warning("cached int8 detector %s is unreadable (%s); quantizing it again", int8_path,
                            type(exc).__name__)
        record.unlink(missing_ok=True)  # measured on another file
        onnx_yolo.quantize(fp32_path, int8_path)
        return onnx_yolo.OnnxYolo(onnx_yolo.open_session(int8_path), int8_path)

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        self.load()
        if self._onnx is not None:
            found = self._onnx.predict(list(images), self.image_size, self.confidence, sorted(self._class_ids))
            return [self._detections(rows[:, :4].tolist(), rows[:, 5].tolist(), rows[:, 4].tolist()) for rows in found]
        kwargs = dict(
            conf=self.confidence,
            imgsz=self.image_size,
            classes=sorted(self._class_ids),
            verbose=False,
            batch=self.batch_size,
        )
        if self.device != "auto":
            kwargs["device"] = self.device
        if self.device == "cuda":
            kwargs["half"] = True
        results = self._yolo.predict(list(images), **kwargs)
        return [self._detections(r.boxes.xyxy.tolist(), r.boxes.cls.tolist(), r.boxes.conf.tolist()) for r in results]

    def _detections(self, boxes: list, classes: list, confidences: list) -> list[Detection]:
        found = []
        for xyxy, cls, conf in zip(boxes, classes, confidences):
            x1, y1, x2, y2 = (int(round(v)) for v in xyxy)
            if x2 - x1 >= 2 and y2 - y1 >= 2:
                found.append(Detection((x1, y1, x2, y2), self._class_ids.get(int(cls), str(int(cls))), float(conf)))
        found.sort(key=lambda d: (d.box[0], d.box[1]))  # stable crop order: left to right
        return found
