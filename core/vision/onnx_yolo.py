"""YOLO detection through ONNX Runtime: ultralytics' own ONNX export of the weights, cached.

The export (`YOLO(weights).export(format="onnx", dynamic=True)`: batch, height and width are
dynamic) is made once per weights file and cached as `<cache_dir>/<stem>-<sha256[:12]>.onnx`;
its int8 sibling (`...-int8.onnx`, onnxruntime dynamic quantization) is used only when its boxes
agree with fp32 on generated probe photos (and it is faster), measured once and kept beside it.

Pre- and postprocessing are ultralytics' predictor's own, rewritten in numpy so a cached model
runs without importing torch or ultralytics: letterbox to the smallest stride-multiple rectangle
(grey 114 padding, cv2 bilinear resize), best class per anchor over all classes, the confidence
threshold, the wanted classes, class-aware NMS at IoU 0.7, at most 300 boxes, boxes scaled back
to the input photo's pixels.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# ultralytics' predict defaults (cfg/default.yaml): NMS IoU and the most boxes kept per photo.
NMS_IOU = 0.7
MAX_DET = 300
# Photos per session run. Measured on a 2-core EPYC (YOLOv8n, 601 classes, fp32): batch 8 gives
# 55 img/s at 320 and 30 at 480 against 45 and 24 at batch 1; the output is B x (4 + classes) x
# anchors floats (8 x 605 x 6300 = 122 MB at 640), so larger runs only cost memory.
RUN_BATCH = 8
PAD_VALUE = 114

# int8 is kept only when, on the probe photos, its boxes match fp32's this closely.
INT8_MIN_BOX_IOU = 0.9       # every compared box
INT8_MIN_CLASS_AGREEMENT = 0.95  # share of compared boxes with the same best class
INT8_MAX_SCORE_DIFF = 0.05   # largest absolute confidence difference

log = logging.getLogger(__name__)
_import_lock = threading.Lock()


class Unavailable(Exception):
    """The ONNX path cannot be used (a package missing, the export failed); the text says why."""


def fingerprint(weights: Path) -> str:
    """The first 12 hex digits of the weights file's sha256: the cache key of its exports."""
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def cache_paths(weights: Path, cache_dir: Path | None) -> tuple[Path, Path]:
    """(fp32 export, int8 export) paths for `weights` under `cache_dir` (a temp folder if None)."""
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "shoe-search-models")
    stem = f"{weights.stem}-{fingerprint(weights)}"
    return cache / f"{stem}.onnx", cache / f"{stem}-int8.onnx"


@contextlib.contextmanager
def keep_thread_setting():
    """ultralytics sets OMP_NUM_THREADS=1 when imported (for its training workers); every ONNX
    Runtime session made after that would run on one core. Put the variable back as it was."""
    with _import_lock:
        before = os.environ.get("OMP_NUM_THREADS")
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before


def export(weights: Path, target: Path, image_size: int) -> None:
    """Export `weights` with ultralytics to ONNX (fp32, dynamic batch/height/width) at `target`.

    Raises Unavailable with the reason when a package is missing or the export fails. A killed
    export never leaves a half-written file at `target`.
    """
    try:
        import onnx  # noqa: F401  (ultralytics would try to pip-install it when missing)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the {exc.name or 'onnx'} package is not installed (pip install onnx onnxruntime)") from exc
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            # ultralytics writes the .onnx beside the weights: export from a copy in a private folder.
            copy = Path(tmp) / f"{weights.stem}.pt"
            shutil.copyfile(weights, copy)
            with keep_thread_setting():
                from ultralytics import YOLO
                from ultralytics.utils import LOGGER

            level = LOGGER.level
            LOGGER.setLevel(logging.ERROR)
            try:
                with contextlib.redirect_stdout(io.StringIO()), keep_thread_setting():
                    written = YOLO(str(copy)).export(format="onnx", dynamic=True, simplify=False, imgsz=image_size,
                                                     batch=1, device="cpu", verbose=False)
            finally:
                LOGGER.setLevel(level)
            open_session(Path(written))  # refuse a file ONNX Runtime cannot run
            Path(written).replace(target)
    except Unavailable:
        raise
    except Exception as exc:  # ultralytics, torch.onnx and the file system raise many kinds
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise Unavailable(f"ONNX export failed ({type(exc).__name__}: {first})") from exc


def quantize(fp32: Path, target: Path) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized at run time) of `fp32`."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise Unavailable("onnxruntime.quantization is not available") from exc
    partial = target.with_suffix(".partial")
    try:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a "run pre-processing first" hint
        try:
            quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        partial.replace(target)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise Unavailable(f"int8 quantization failed ({type(exc).__name__}: {str(exc)[:200]})") from exc


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for `path` (raises on a missing or broken file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0) or 0) or (os.cpu_count() or 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    no_spinning(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def no_spinning(options) -> None:
    """ONNX Runtime's idle intra-op threads wait asleep instead of spinning. Ingest runs decoding
    and writing beside the models on the same cores; spinning threads took that CPU. Measured on
    2 shared cores (CLIP int8 tower, batch 32): 43-44 ms CPU per image without spinning against
    53-57 ms with it, and 135-157 ms against 172-179 ms wall (load average 9-11)."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def load_or_export(weights: Path, target: Path, image_size: int):
    """A session over the cached export at `target`, exporting first when it is missing; a cached
    file ONNX Runtime cannot open (truncated, overwritten) is exported again."""
    if target.exists():
        try:
            return open_session(target)
        except Exception as exc:
            log.warning("cached detector export %s is unreadable (%s); exporting it again", target,
                        str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__)
            target.unlink(missing_ok=True)
    export(weights, target, image_size)
    return open_session(target)


# --------------------------------------------------------------------------- the model


class OnnxYolo:
    """An exported YOLO detection model in an ONNX Runtime session."""

    def __init__(self, session, path: Path | None = None) -> None:
        self.session = session
        self.path = path
        meta = session.get_modelmeta().custom_metadata_map
        try:
            self.names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
            self.stride = int(meta.get("stride", 32))
        except (KeyError, ValueError, SyntaxError) as exc:
            raise Unavailable("the ONNX file has no ultralytics class names") from exc
        if meta.get("task", "detect") != "detect":
            raise Unavailable(f"an ultralytics detection model (this one is '{meta.get('task')}')")
        self.input_name = session.get_inputs()[0].name

    def input_size(self, image_size: int) -> int:
        """`image_size` rounded up to a multiple of the stride, as ultralytics' check_imgsz does."""
        return max(math.ceil(image_size / self.stride) * self.stride, self.stride)

    def predict(self, images: Sequence, image_size: int, confidence: float,
                classes: Sequence[int] | None) -> list[np.ndarray]:
        """Per image, an (n, 6) float array: x1, y1, x2, y2 (photo pixels), confidence, class.

        Photos are grouped by letterboxed shape so each run is one tensor; runs of RUN_BATCH.
        """
        size = self.input_size(image_size)
        prepared = [letterbox(np.asarray(img.convert("RGB") if img.mode != "RGB" else img), size, self.stride)
                    for img in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, tensor in enumerate(prepared):
            groups.setdefault(tensor.shape[:2], []).append(index)
        out: list[np.ndarray] = [np.zeros((0, 6), np.float32)] * len(images)
        wanted = None if classes is None else np.asarray(sorted(classes))
        for shape, indices in groups.items():
            for start in range(0, len(indices), RUN_BATCH):
                chunk = indices[start:start + RUN_BATCH]
                raw = self.run(np.stack([prepared[i] for i in chunk]))
                for i, pred in zip(chunk, raw):
                    found = select(pred, confidence, wanted)
                    found[:, :4] = scale_boxes(shape, found[:, :4], (images[i].height, images[i].width))
                    out[i] = found
        return out

    def run(self, batch_hwc: np.ndarray) -> np.ndarray:
        """Raw output (B, 4 + classes, anchors) for uint8 letterboxed photos (B, H, W, 3)."""
        tensor = np.ascontiguousarray(batch_hwc.transpose(0, 3, 1, 2), dtype=np.float32)
        tensor /= 255.0
        return self.session.run(None, {self.input_name: tensor})[0]


def letterbox(rgb: np.ndarray, size: int, stride: int = 32) -> np.ndarray:
    """ultralytics' LetterBox(size, auto=True): scale to fit `size`, pad to the smallest
    multiple of `stride` around it (centred, grey 114). Returns (H, W, 3) uint8."""
    import cv2

    height, width = rgb.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    dw, dh = (size - new_w) % stride / 2, (size - new_h) % stride / 2
    if (width, height) != (new_w, new_h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(np.ascontiguousarray(rgb), top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(PAD_VALUE,) * 3)


def scale_boxes(input_shape: tuple[int, int], boxes: np.ndarray, photo_shape: tuple[int, int]) -> np.ndarray:
    """xyxy boxes from the letterboxed input (h, w) back to the photo (h, w), clipped to it."""
    gain = min(input_shape[0] / photo_shape[0], input_shape[1] / photo_shape[1])
    new_h, new_w = (max(round(x * gain), 1) for x in photo_shape)
    gain_y, gain_x = new_h / photo_shape[0], new_w / photo_shape[1]
    pad_x, pad_y = round((input_shape[1] - new_w) / 2 - 0.1), round((input_shape[0] - new_h) / 2 - 0.1)
    boxes = boxes.copy()
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad_x) / gain_x).clip(0, photo_shape[1])
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad_y) / gain_y).clip(0, photo_shape[0])
    return boxes


def select(pred: np.ndarray, confidence: float, classes: np.ndarray | None,
           iou: float = NMS_IOU, max_det: int = MAX_DET) -> np.ndarray:
    """ultralytics' non_max_suppression for one image's raw output (4 + classes, anchors): the
    best class over all classes, above `confidence`, in `classes`, class-aware NMS. (n, 6)."""
    scores = pred[4:]
    best = scores.argmax(axis=0)
    conf = scores[best, np.arange(scores.shape[1])]
    keep = conf > confidence
    if classes is not None:
        keep &= np.isin(best, classes)
    if not keep.any():
        return np.zeros((0, 6), np.float32)
    xywh = pred[:4, keep].T
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    conf, best = conf[keep], best[keep].astype(np.float32)
    order = np.argsort(-conf, kind="stable")[:30000]
    boxes, conf, best = boxes[order], conf[order], best[order]
    kept = nms(boxes + best[:, None] * 7680.0, conf, iou, max_det)  # offset per class: class-aware NMS
    return np.concatenate([boxes[kept], conf[kept, None], best[kept, None]], axis=1).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int = MAX_DET) -> np.ndarray:
    """Greedy NMS (torchvision's): indices kept, highest score first, at most `limit`."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    kept = []
    while order.size and len(kept) < limit:
        i = order[0]
        kept.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-9) <= iou]
    return np.asarray(kept, dtype=np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between xyxy boxes a (n, 4) and b (m, 4)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


# --------------------------------------------------------------------------- int8 guard


def probe_photos(count: int = 8, seed: int = 0) -> list:
    """Generated photos for the int8 check: shoe-like blobs (soles, uppers, laces) on plain,
    gradient and noisy backgrounds, landscape and portrait. Deterministic."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    photos = []
    for k in range(count):
        width, height = (640, 480) if k % 3 else (480, 640)
        kind = k % 4
        if kind == 0:
            base = np.full((height, width, 3), rng.integers(200, 256, 3), np.uint8)
        elif kind == 1:
            ramp = np.linspace(0, 1, width)[None, :, None]
            base = (rng.integers(0, 256, 3) * ramp + rng.integers(0, 256, 3) * (1 - ramp)).astype(np.uint8)
            base = np.broadcast_to(base, (height, width, 3)).copy()
        elif kind == 2:
            base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        else:
            base = np.full((height, width, 3), rng.integers(0, 80, 3), np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(width // 5, width // 2)), int(rng.integers(height // 8, height // 3))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(h // 2, height - h))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rounded_rectangle((x, y + h * 2 // 3, x + w, y + h), radius=h // 6, fill=(30, 30, 30))  # sole
            draw.ellipse((x, y, x + w * 3 // 4, y + h), fill=colour)  # upper
            draw.polygon([(x + w // 2, y + h // 3), (x + w, y + h * 2 // 3), (x + w // 2, y + h * 2 // 3)], fill=colour)
            for lace in range(4):
                lx = x + w // 5 + lace * w // 10
                draw.line((lx, y + h // 5, lx + w // 12, y + h // 3), fill=(240, 240, 240), width=3)
        photos.append(img.filter(ImageFilter.GaussianBlur(0.8)))
    return photos


def agreement(fp32: OnnxYolo, int8: OnnxYolo, image_size: int, top: int = 20) -> dict:
    """How closely int8's boxes follow fp32's on the probe photos.

    Generated photos rarely reach the confidence threshold, so the comparison takes fp32's `top`
    most confident boxes per photo (after NMS, every class, no threshold) and, for each, the
    int8 box of highest IoU: the lowest such IoU, the share with the same class, the largest
    confidence difference. Also the time of both on the probe batch (int8 is only worth it faster).
    """
    photos = probe_photos()
    size = fp32.input_size(image_size)
    ious, same_class, score_diffs, seconds = [], [], [], {"fp32": 0.0, "int8": 0.0}
    prepared = [letterbox(np.asarray(p), size, fp32.stride) for p in photos]
    groups: dict[tuple, list[np.ndarray]] = {}
    for tensor in prepared:
        groups.setdefault(tensor.shape, []).append(tensor)
    for tensors in groups.values():
        batch = np.stack(tensors)
        outputs = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
            model.run(batch[:1])  # warm-up
            started = time.perf_counter()
            outputs[name] = model.run(batch)
            seconds[name] += time.perf_counter() - started
        for exact, fast in zip(outputs["fp32"], outputs["int8"]):
            a = select(exact, 0.0, None, max_det=top)
            b = select(fast, 0.0, None, max_det=MAX_DET)
            if not len(a):
                continue
            if not len(b):
                ious += [0.0] * len(a)
                same_class += [False] * len(a)
                score_diffs += [1.0] * len(a)
                continue
            overlap = box_iou(a[:, :4], b[:, :4])
            match = overlap.argmax(axis=1)
            ious += overlap[np.arange(len(a)), match].tolist()
            same_class += (a[:, 5] == b[match, 5]).tolist()
            score_diffs += np.abs(a[:, 4] - b[match, 4]).tolist()
    return {
        "image_size": size,
        "boxes": len(ious),
        "min_iou": float(min(ious, default=1.0)),
        "class_agreement": float(np.mean(same_class)) if same_class else 1.0,
        "max_score_diff": float(max(score_diffs, default=0.0)),
        "fp32_seconds": seconds["fp32"],
        "int8_seconds": seconds["int8"],
    }


def agrees(result: dict) -> bool:
    return (result["min_iou"] >= INT8_MIN_BOX_IOU and result["class_agreement"] >= INT8_MIN_CLASS_AGREEMENT
            and result["max_score_diff"] <= INT8_MAX_SCORE_DIFF)


def cached_agreement(fp32: OnnxYolo, int8: OnnxYolo, int8_path: Path, image_size: int) -> dict:
    """`agreement`, measured once per int8 export and image size, kept beside the export."""
    record = int8_path.with_name(int8_path.stem + ".agreement.json")
    key = str(fp32.input_size(image_size))
    try:
        stored = json.loads(record.read_text())
        return stored[key]
    except (OSError, ValueError, KeyError, TypeError):
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    result = agreement(fp32, int8, image_size)
    stored[key] = result
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps(stored, indent=1))
    partial.replace(record)
    return result
