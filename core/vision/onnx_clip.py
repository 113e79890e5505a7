"""CLIP's image tower as an int8 ONNX model run by ONNX Runtime (faster on CPUs).

Exported once from the loaded sentence-transformers CLIP (vision model + projection, the same
computation as its image embeddings), weights quantized to int8, cached as
`<cache_dir>/<model id>-<fingerprint>-image-int8.onnx`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


class Unavailable(Exception):
    """onnxruntime / onnx missing, or the model is not a CLIPModel."""


def _fingerprint(clip) -> str:
    """Changes when the weights change: a hash over a sample of the projection weights."""
    weights = clip.visual_projection.weight.detach().float().cpu().numpy()
    return hashlib.sha1(weights[:, :64].tobytes() + str(weights.shape).encode()).hexdigest()[:12]


def load_int8_image_encoder(model, model_id: str, cache_dir: Path | None):
    """(onnxruntime session, CLIPImageProcessor, cached model path) for the image tower, int8."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise Unavailable("the onnxruntime package (pip install onnxruntime onnx)") from exc
    module = model[0]
    clip, processor = getattr(module, "auto_model", None), getattr(module, "processor", None)
    if clip is None or not hasattr(clip, "vision_model") or processor is None:
        raise Unavailable("a CLIP model with an image tower")
    image_processor = getattr(processor, "image_processor", processor)
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "shoe-search-models")
    target = cache / f"{model_id}-{_fingerprint(clip)}-image-int8.onnx"
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            _export(clip, image_processor, target, quantize_dynamic, QuantType)
        except OSError:  # DATA_DIR read-only or full: this is only a cache, keep it in the temp folder
            with contextlib.suppress(OSError):
                target.with_suffix(".partial").unlink(missing_ok=True)
            target = Path(tempfile.gettempdir()) / "shoe-search-models" / target.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                _export(clip, image_processor, target, quantize_dynamic, QuantType)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    from core.vision.onnx_yolo import no_spinning

    no_spinning(options)  # leave the cores to ingest's decoding and writing between runs
    session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    return session, image_processor, target


def cached_agreement(model, session, image_processor, target: Path) -> float:
    """`agreement`, measured once per exported model and kept beside it (saves ~3 s per start)."""
    record = target.with_suffix(".agreement.json")
    try:
        return float(json.loads(record.read_text())["min_cosine"])
    except (OSError, ValueError, KeyError):
        value = agreement(model, session, image_processor)
        with contextlib.suppress(OSError):  # a read-only or full cache only costs the measure next time
            record.write_text(json.dumps({"min_cosine": value}))
        return value


def _export(clip, image_processor, target: Path, quantize_dynamic, quant_type) -> None:
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
    tower = ImageTower(clip).float().eval()
    import logging
    import warnings

    # A one-time export: the tracer's and the quantizer's advice is for model authors, not users.
    def not_advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(not_advice)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        fp32 = Path(tmp) / "image.onnx"
        with torch.no_grad():
            torch.onnx.export(tower, (torch.zeros(2, 3, height, width),), str(fp32), input_names=["pixel_values"],
                              output_names=["image_embeds"], opset_version=17, dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
        partial = target.with_suffix(".partial")
        try:
            quantize_dynamic(str(fp32), str(partial), weight_type=quant_type.QInt8)
        finally:
            root.removeFilter(not_advice)
        partial.replace(target)  # a killed export never leaves a half-written model


def embed(session, image_processor, images: list, batch_size: int) -> np.ndarray:
    """L2-normalized image embeddings, `batch_size` images per run."""
    out = []
    for start in range(0, len(images), batch_size):
        pixels = image_processor(images=images[start:start + batch_size], return_tensors="np")["pixel_values"]
        out.append(session.run(None, {"pixel_values": pixels.astype(np.float32)})[0])
    vectors = np.vstack(out).astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def agreement(model, session, image_processor) -> float:
    """Lowest cosine between int8 and fp32 image embeddings on drawn shoe photos."""
    from core.vision.drawn_shoes import probe_photos

    photos = probe_photos()
    fast = embed(session, image_processor, photos, len(photos))
    exact = np.asarray(model.encode(photos, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False), dtype=np.float32)
    return float((fast * exact).sum(axis=1).min())
