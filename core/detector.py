"""Shoe detection: a Detector protocol, the ultralytics YOLO detector, and 'detection off'."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from core.errors import ModelUnavailable
from core.models import Detection

if TYPE_CHECKING:
    from PIL import Image


class Detector(Protocol):
    """Finds shoes. `detect` returns one list of detections per input image, in order."""

    name: str

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]: ...


class NoDetector:
    """Detection turned off (`DETECTOR_MODEL=none`): every photo is embedded whole."""

    name = "none"

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        return [[] for _ in images]


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith(".") or Path(value).exists()


class YoloDetector:
    """ultralytics YOLO, loaded on first use, keeping only boxes of the shoe classes.

    `model` is a weights name (downloaded by ultralytics on first use, e.g.
    `yolov8n-oiv7.pt`, Open Images V7 with footwear classes) or a local `.pt` file.
    """

    def __init__(
        self,
        model: str,
        classes: Sequence[str],
        confidence: float = 0.25,
        image_size: int = 640,
        device: str = "auto",
        batch_size: int = 16,
    ) -> None:
        self.name = model
        self.classes = list(classes)
        self.confidence = confidence
        self.image_size = image_size
        self.device = device
        self.batch_size = batch_size
        self._yolo = None
        self._class_ids: dict[int, str] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._yolo is not None:
                return
            if _looks_like_path(self.name) and not Path(self.name).is_file():
                raise ModelUnavailable(
                    f"Detector weights not found: {self.name}. Set DETECTOR_MODEL to an existing "
                    f"YOLO .pt file, to a name ultralytics can download (e.g. yolov8n-oiv7.pt), "
                    f"or to 'none' to embed whole photos."
                )
            try:
                from ultralytics import YOLO

                yolo = YOLO(self.name)
            except Exception as exc:  # ultralytics raises many kinds on a failed download
                raise ModelUnavailable(
                    f"Detector model '{self.name}' could not be loaded ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:200]}). It downloads on first use when online; "
                    f"offline, set DETECTOR_MODEL to a local .pt file, or to 'none' to turn detection off."
                ) from exc
            names = {int(k): str(v) for k, v in dict(yolo.names).items()}
            wanted = {c.lower() for c in self.classes}
            class_ids = {i: n for i, n in names.items() if n.lower() in wanted}
            if not class_ids:
                sample = ", ".join(list(names.values())[:8])
                raise ModelUnavailable(
                    f"Detector model '{self.name}' knows none of DETECTOR_CLASSES "
                    f"({', '.join(self.classes)}); its classes start with: {sample}. "
                    f"Use a footwear model (e.g. yolov8n-oiv7.pt) or set DETECTOR_CLASSES."
                )
            self._class_ids = class_ids
            self._yolo = yolo

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        self.load()
        kwargs = dict(
            conf=self.confidence,
            imgsz=self.image_size,
            classes=sorted(self._class_ids),
            verbose=False,
            batch=self.batch_size,
        )
        if self.device != "auto":
            kwargs["device"] = self.device
            kwargs["half"] = self.device == "cuda"
        results = self._yolo.predict(list(images), **kwargs)
        out: list[list[Detection]] = []
        for result in results:
            found = []
            boxes = result.boxes
            for xyxy, cls, conf in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist()):
                x1, y1, x2, y2 = (int(round(v)) for v in xyxy)
                if x2 - x1 >= 2 and y2 - y1 >= 2:
                    found.append(Detection((x1, y1, x2, y2), self._class_ids.get(int(cls), str(int(cls))), float(conf)))
            found.sort(key=lambda d: (d.box[0], d.box[1]))  # stable crop order: left to right
            out.append(found)
        return out
