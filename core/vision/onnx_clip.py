"""CLIP's towers as ONNX models run by ONNX Runtime (faster on CPUs): runtimes a ClipEmbedder
picks by its settings (EMBED_PRECISION for the image tower, TEXT_PRECISION for the text tower).

Each tower is exported once from the loaded sentence-transformers CLIP (tower + projection, the
same computation as its embeddings), int8 by dynamic quantization of the weights where asked, and
cached as `<cache_dir>/<model id>-<fingerprint>-<image|text>-<fp32|int8>.onnx`, with the int8
model's agreement with fp32 measured once and kept beside it (`.agreement.json`).

(sentence-transformers' own `backend="onnx"` cannot serve CLIP: it loads the whole model as one
optimum `ORTModelForFeatureExtraction`, which has no `get_text_features`/`get_image_features`
methods that its CLIP module calls; hence these exports.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np


class Unavailable(Exception):
    """onnxruntime / onnx missing, or the model is not a CLIPModel."""


# Shoe descriptions the int8 text tower is measured on against fp32 (cosine per text).
PROBE_TEXTS = [
    "white leather high-top sneaker", "black ankle boot with a side zip", "red high heels",
    "brown suede loafer", "running shoe with a thick foam sole", "pink sandal with ankle straps",
    "navy canvas slip-on", "waterproof hiking boot, grey and orange", "gold glitter ballet flat",
    "chunky platform trainer in pastel colours", "men's oxford shoe, polished black", "kids' velcro shoes",
]


def _fingerprint(clip, tower: str) -> str:
    """Changes when the weights change: a hash over a sample of the tower's projection weights."""
    projection = clip.visual_projection if tower == "image" else clip.text_projection
    weights = projection.weight.detach().float().cpu().numpy()
    return hashlib.sha1(weights[:, :64].tobytes() + str(weights.shape).encode()).hexdigest()[:12]


def _ort():
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: F401
    except ImportError as exc:
        raise Unavailable("the onnxruntime package (pip install onnxruntime onnx)") from exc
    return ort


def _clip_parts(model):
    module = model[0]
    clip, processor = getattr(module, "auto_model", None), getattr(module, "processor", None)
    if clip is None or not hasattr(clip, "vision_model") or not hasattr(clip, "text_model"):
        raise Unavailable("a CLIP model with image and text towers")
    return clip, processor


def _cached(cache_dir: Path | None, name: str, make: Callable[[Path], None]) -> Path:
    """`name` in the cache folder, made by `make(path)` when missing; a read-only or full
    DATA_DIR only moves this cache to the temp folder."""
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "shoe-search-models")
    target = cache / name
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        make(target)
    except OSError:
        with contextlib.suppress(OSError):
            target.with_suffix(".partial").unlink(missing_ok=True)
        target = Path(tempfile.gettempdir()) / "shoe-search-models" / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            make(target)
    return target


def _session(path: Path):
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    from core.vision.onnx_yolo import no_spinning

    no_spinning(options)  # leave the cores to ingest's decoding and writing between runs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quiet_export():
    """A one-time export: the tracer's and the quantizer's advice is for model authors, not users."""
    import logging
    import warnings

    import torch

    def not_advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    @contextlib.contextmanager
    def quiet():
        root = logging.getLogger()
        root.addFilter(not_advice)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # CLIP's pooling indexes by argmax positions (never negative): the exporter's caveat is moot.
                warnings.filterwarnings("ignore", message="Exporting aten::index operator")
                yield
        finally:
            root.removeFilter(not_advice)

    return quiet()


def _write(tower, inputs: tuple, input_names: list[str], output: str, dynamic: dict, target: Path,
           int8: bool) -> None:
    """Export `tower` to `target` (fp32, or int8 weights), atomically: a killed export never
    leaves a half-written model."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = target.with_suffix(".partial")
    with tempfile.TemporaryDirectory() as tmp, _quiet_export():
        fp32 = Path(tmp) / "tower.onnx"
        with torch.no_grad():
            torch.onnx.export(tower.float().eval(), inputs, str(fp32), input_names=input_names,
                              output_names=[output], opset_version=17, dynamo=False,
                              dynamic_axes={**dynamic, output: {0: "batch"}})
        if int8:
            quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
        else:
            shutil.move(str(fp32), str(partial))
    partial.replace(target)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class ImageSession:
    """The image tower in ONNX Runtime: `embed(images)` as the model's own image embeddings."""

    def __init__(self, session, image_processor, path: Path, precision: str) -> None:
        self.session, self.image_processor, self.path, self.precision = session, image_processor, path, precision

    def embed(self, images: list, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.image_processor(images=images[start:start + batch_size], return_tensors="np")["pixel_values"]
            out.append(self.session.run(None, {"pixel_values": pixels.astype(np.float32)})[0])
        return _normalized(np.vstack(out))


class TextSession:
    """The text tower in ONNX Runtime: `embed(texts)` as the model's own text embeddings (same
    tokenizer, cut at the model's token limit as sentence-transformers cuts)."""

    def __init__(self, session, tokenizer, max_length: int | None, path: Path, precision: str) -> None:
        self.session, self.tokenizer, self.max_length = session, tokenizer, max_length
        self.path, self.precision = path, precision
        self._lock = threading.Lock()  # a Rust tokenizer refuses concurrent calls that set its padding

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            with self._lock:
                tokens = self.tokenizer(texts[start:start + batch_size], padding=True,
                                        truncation=self.max_length is not None, max_length=self.max_length,
                                        return_tensors="np")
            out.append(self.session.run(None, {"input_ids": tokens["input_ids"].astype(np.int64),
                                               "attention_mask": tokens["attention_mask"].astype(np.int64)})[0])
        return _normalized(np.vstack(out))


def load_image_session(model, model_id: str, cache_dir: Path | None, precision: str = "int8") -> ImageSession:
    """The image tower of a loaded sentence-transformers CLIP in ONNX Runtime (exported on first use)."""
    _ort()
    clip, processor = _clip_parts(model)
    if processor is None:
        raise Unavailable("a CLIP model with an image processor")
    image_processor = getattr(processor, "image_processor", processor)

    def make(target: Path) -> None:
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self, clip_model) -> None:
                super().__init__()
                self.vision = clip_model.vision_model
                self.projection = clip_model.visual_projection

            def forward(self, pixel_values):
                return self.projection(self.vision(pixel_values=pixel_values).pooler_output)

        size = image_processor.crop_size  # a dict, a transformers SizeDict, or an int
        if isinstance(size, int):
            height = width = size
        else:
            height = getattr(size, "height", None) or size["height"]
            width = getattr(size, "width", None) or size["width"]
        _write(ImageTower(clip), (torch.zeros(2, 3, height, width),), ["pixel_values"], "image_embeds",
               {"pixel_values": {0: "batch"}}, target, int8=precision == "int8")

    path = _cached(cache_dir, f"{model_id}-{_fingerprint(clip, 'image')}-image-{precision}.onnx", make)
    return ImageSession(_session(path), image_processor, path, precision)


def load_text_session(model, model_id: str, cache_dir: Path | None, tokenizer, max_length: int | None,
                      precision: str = "int8") -> TextSession:
    """The text tower of a loaded sentence-transformers CLIP in ONNX Runtime (exported on first use)."""
    _ort()
    clip, _ = _clip_parts(model)
    if tokenizer is None:
        raise Unavailable("a CLIP model with a tokenizer")

    def make(target: Path) -> None:
        import torch

        class TextTower(torch.nn.Module):
            def __init__(self, clip_model) -> None:
                super().__init__()
                self.text = clip_model.text_model
                self.projection = clip_model.text_projection

            def forward(self, input_ids, attention_mask):
                return self.projection(self.text(input_ids=input_ids, attention_mask=attention_mask).pooler_output)

        sample = tokenizer(PROBE_TEXTS[:2], padding=True, return_tensors="pt")
        _write(TextTower(clip), (sample["input_ids"], sample["attention_mask"]), ["input_ids", "attention_mask"],
               "text_embeds", {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
               target, int8=precision == "int8")

    path = _cached(cache_dir, f"{model_id}-{_fingerprint(clip, 'text')}-text-{precision}.onnx", make)
    return TextSession(_session(path), tokenizer, max_length, path, precision)


def cached_agreement(path: Path, measure: Callable[[], float]) -> float:
    """`measure()`, taken once per exported model and kept beside it (saves seconds per start)."""
    record = path.with_suffix(".agreement.json")
    try:
        return float(json.loads(record.read_text())["min_cosine"])
    except (OSError, ValueError, KeyError):
        value = measure()
        with contextlib.suppress(OSError):  # a read-only or full cache only costs the measure next time
            record.write_text(json.dumps({"min_cosine": value}))
        return value


def image_agreement(model, session: ImageSession) -> float:
    """Lowest cosine between the session's and the torch model's image embeddings on drawn shoe photos."""
    from core.vision.drawn_shoes import probe_photos

    photos = probe_photos()
    fast = session.embed(photos, len(photos))
    exact = np.asarray(model.encode(photos, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False), dtype=np.float32)
    return float((fast * exact).sum(axis=1).min())


def text_agreement(exact: Callable[[list[str]], np.ndarray], session: TextSession) -> float:
    """Lowest cosine between the session's and the exact (torch fp32) text embeddings on probe texts."""
    fast = session.embed(PROBE_TEXTS, len(PROBE_TEXTS))
    return float((fast * exact(PROBE_TEXTS)).sum(axis=1).min())
