"""CLIP embeddings through sentence-transformers: images and text in one vector space."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.errors import ModelUnavailable
from core.vision.lazy_model import LazyModel, from_cache_or_hub, hub_offline, hub_reachable  # noqa: F401

if TYPE_CHECKING:
    from PIL import Image


class Embedder(Protocol):
    """Turns crops and texts into L2-normalized float32 vectors of one space."""

    model_id: str

    @property
    def dimension(self) -> int: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def fit_text(self, text: str) -> QueryText: ...


@dataclass(frozen=True)
class QueryText:
    """A text query as the text model reads it: cut at the model's token limit."""

    text: str  # what is handed to the model (the whole query when it fits)
    tokens: int  # tokens of the whole query, start and end tokens included (0: not counted)
    limit: int  # the most tokens the text model reads
    read: str  # the part of the query the model reads

    @property
    def truncated(self) -> bool:
        return self.tokens > self.limit

    @property
    def notice(self) -> str:
        """One line for the user when the query was cut, else empty."""
        if not self.truncated:
            return ""
        tail = self.read[-40:]
        return (f"query truncated: {self.tokens:,} tokens, the CLIP text model reads only the first {self.limit} "
                f"(up to \u201c{'...' if len(self.read) > 40 else ''}{tail}\u201d)")


def text_model_of(embedder) -> str:
    """The text encoder an embedder pairs with its CLIP model ('' = CLIP's own text tower)."""
    return getattr(embedder, "text_model_id", "")


def model_id_for(model: str) -> str:
    """The name recorded in the collection: a local directory counts by its folder name,
    so `./models/clip-ViT-B-32` and `clip-ViT-B-32` are the same model."""
    path = Path(model)
    if path.is_dir():
        return path.resolve().name
    return model.removeprefix("sentence-transformers/")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def clean_query_text(text: str) -> str:
    """Make sure a text query is embedded as text.

    sentence-transformers treats a string that looks like an image path, URL or data URI
    as an image; CLIP's tokenizer strips outer whitespace, so padding changes nothing else.
    """
    return f" {' '.join(text.split())} "


# Below this cosine to fp32 (on probe photos) the int8 image encoder is not used.
INT8_MIN_COSINE = 0.999

# CLIP's processor scales a crop's short side to 224 px and keeps the centre square; a 200000x1
# strip would first become 44,800,000x224 pixels (30 GB). Longer crops are cut to their centre
# at this ratio first: the square the model sees is inside it, so what it sees is unchanged.
MAX_EMBED_ASPECT = 3.0


def centre_within_aspect(img: Image.Image, max_aspect: float = MAX_EMBED_ASPECT) -> Image.Image:
    """`img`, or its centre part whose long side is at most `max_aspect` times its short side."""
    width, height = img.size
    short = max(1, min(width, height))
    if max(width, height) <= max_aspect * short:
        return img
    keep = max(1, int(max_aspect * short))
    if width > height:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return img.crop((0, top, width, top + keep))


def _tokenizer(model):
    module = model[0]
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is None:
        processor = getattr(module, "processor", None)
        tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer if callable(tokenizer) else None


def _text_token_limit(model) -> int | None:
    """The most tokens the text tower reads: its position embeddings (CLIP: 77), or the
    tokenizer's own limit when smaller. Also makes sentence-transformers truncate there: a
    saved tokenizer may declare no limit, and a longer text would crash the text tower."""
    module = model[0]
    config = getattr(getattr(module, "auto_model", None), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    limits = [getattr(config, "max_position_embeddings", None), getattr(_tokenizer(model), "model_max_length", None)]
    found = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    if not found:
        return None
    limit = min(found)
    if getattr(module, "max_seq_length", None) != limit:
        try:
            module.max_seq_length = limit
        except (AttributeError, TypeError):
            pass
    return limit


def _processor_centre_crops(model) -> bool:
    """True when the image processor scales the short side and keeps the centre (CLIP's)."""
    processor = getattr(model[0], "processor", None)
    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    return bool(getattr(image_processor, "do_center_crop", False)) and bool(shortest)


# Files that say a checkpoint needs its own code (open_clip, or transformers' trust_remote_code).
_CUSTOM_CODE_MARKS = ("auto_map", "open_clip_model_name")


def _clip_module_class():
    """sentence-transformers' CLIP module (moved in 5.4; `models.CLIPModel` is the older home)."""
    try:
        from sentence_transformers.sentence_transformer.modules import CLIPModel
    except ImportError:
        from sentence_transformers.models import CLIPModel
    return CLIPModel


def _checkpoint_folder(name: str, local_files_only: bool) -> Path | None:
    """The folder holding `name`'s small description files (modules.json, config.json): the local
    folder itself, or for a hub `owner/name` only those files from the hub (or its cache). None when
    it cannot be told (sentence-transformers' own names, not cached offline): then
    sentence-transformers loads it as it always did."""
    path = Path(name)
    if path.is_dir():
        return path
    if "/" not in name or name.startswith("sentence-transformers/") or _looks_like_a_path(name):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["modules.json", "config.json", "open_clip_config.json"],
                                      local_files_only=local_files_only))
    except Exception:
        return None


def _looks_like_a_path(name: str) -> bool:
    """A folder name rather than a hub id (`clip-ViT-B-32`, `owner/name`): `models/x` counts as a
    folder when a folder `models` exists here."""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or (name.count("/") == 1 and Path(name.split("/")[0]).is_dir()))


def build_sentence_transformer(name: str, device: str = "cpu", local_files_only: bool = False):
    """A SentenceTransformer for a CLIP-family checkpoint (a folder or a hub name).

    A sentence-transformers model (modules.json: clip-ViT-B-32, clip-ViT-B-16, clip-ViT-L-14) loads
    as saved. A plain transformers CLIPModel checkpoint without modules.json (config.json +
    processor: patrickjohncyh/fashion-clip, openai/clip-vit-base-patch16) is wrapped in
    sentence-transformers' CLIP module. A checkpoint that needs its own code (open_clip or
    trust_remote_code, e.g. Marqo/marqo-fashionCLIP) or is no CLIPModel is refused (ModelUnavailable).
    """
    from sentence_transformers import SentenceTransformer

    folder = _checkpoint_folder(name, local_files_only)
    if folder is None or (folder / "modules.json").is_file():
        return SentenceTransformer(name, device=device, local_files_only=local_files_only)
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    if (folder / "open_clip_config.json").is_file() or any(key in config for key in _CUSTOM_CODE_MARKS):
        raise ModelUnavailable(
            f"CLIP model '{name}' is an open_clip / custom-code checkpoint (it needs open_clip or "
            f"trust_remote_code), which is not supported: use a sentence-transformers CLIP (clip-ViT-B-32, "
            f"clip-ViT-B-16, clip-ViT-L-14) or a transformers CLIPModel checkpoint (e.g. patrickjohncyh/fashion-clip).")
    if config.get("model_type") != "clip" or "CLIPModel" not in (config.get("architectures") or ["CLIPModel"]):
        found = config.get("architectures") or config.get("model_type") or "no config.json"
        raise ModelUnavailable(
            f"CLIP model '{name}' is neither a sentence-transformers model (no modules.json) nor a transformers "
            f"CLIPModel checkpoint ({found}): set CLIP_MODEL to a CLIP model such as clip-ViT-B-32.")
    if not Path(name).is_dir():  # a hub CLIPModel checkpoint: now the whole of it, torch weights once
        from huggingface_hub import snapshot_download

        other_frameworks = ["*.h5", "*.msgpack", "*.onnx", "onnx/*", "*.ot"]
        folder = Path(snapshot_download(name, local_files_only=local_files_only,
                                        ignore_patterns=[*other_frameworks, "*.bin"]))
        if not any(folder.glob("*.safetensors")):  # an older checkpoint: pytorch_model.bin only
            folder = Path(snapshot_download(name, local_files_only=local_files_only, ignore_patterns=other_frameworks))
    return SentenceTransformer(modules=[_clip_module_class().load(str(folder))], device=device)


class TorchTower:
    """A sentence-transformers model as a runtime of one tower: `embed(items)` = its own `encode`."""

    def __init__(self, model, precision: str = "fp32") -> None:
        self.model, self.precision = model, precision

    def embed(self, items: list, batch_size: int) -> np.ndarray:
        vectors = self.model.encode(items, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def _load_sentence_transformer(name: str, device: str, loader=None):
    """`loader(name, device=..., local_files_only=...)` (default: SentenceTransformer) from the
    cache or, when the hub answers, a download."""
    from transformers.utils import logging as hf_logging

    if loader is None:
        from sentence_transformers import SentenceTransformer as loader
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in CLI output
    model = from_cache_or_hub(loader, name, device)
    if device == "cuda":
        model.half()
    return model


class TextModel(LazyModel):
    """TEXT_MODEL: a sentence-transformers text encoder trained into a CLIP's space (e.g. a
    multilingual one), loaded on the first text query."""

    kind = "TEXT_MODEL"
    offline_hint = "set TEXT_MODEL to a local folder with the model, or leave it empty to use CLIP's own text encoder"

    def __init__(self, name: str, device: str) -> None:
        super().__init__()
        self.name, self.device = name, device
        self.model = None
        self.limit: int | None = None
        self.tokenizer = None

    def _load(self) -> None:
        try:
            model = _load_sentence_transformer(self.name, resolve_device(self.device))
        except Exception as exc:
            raise self.unavailable(self.name, exc) from exc
        self.limit = _text_token_limit(model)
        tokenizer = _tokenizer(model)
        self.tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None
        self.model = model

    @property
    def dimension(self) -> int:
        self.load()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())


class ClipEmbedder(LazyModel):
    """A sentence-transformers CLIP model, loaded on first use (or by `load()`), each tower run by
    the runtime its setting picks:

    `precision` (image tower, EMBED_PRECISION): `fp32` = torch; `int8` = the tower exported to ONNX
    and quantized (weights int8) once, cached under `cache_dir`, run by ONNX Runtime; `auto` = int8
    on a CPU when onnxruntime is installed and the quantized tower agrees with fp32 (cosine >= 0.999
    on probe photos), fp32 otherwise.

    `text_precision` (CLIP's text tower, TEXT_PRECISION): `fp32` = torch; `int8` = ONNX Runtime,
    int8 weights; `auto` = ONNX Runtime on a CPU, int8 when it agrees with fp32 (cosine >= 0.999
    on probe texts), else the fp32 export; torch when onnxruntime is missing. fp16 on CUDA in
    every case.
    """

    kind = "CLIP model"
    offline_hint = ("set CLIP_MODEL to a local folder with the model (e.g. one saved by "
                    "SentenceTransformer('clip-ViT-B-32').save(PATH))")

    def __init__(self, model: str, device: str = "auto", batch_size: int = 32, precision: str = "auto",
                 cache_dir: Path | None = None, text_model: str = "", text_precision: str = "fp32") -> None:
        """`text_model`: a sentence-transformers text encoder trained into this CLIP's space
        (TEXT_MODEL, e.g. a multilingual one) used for texts instead of CLIP's own text tower."""
        super().__init__()
        self.model_name = model
        self.model_id = model_id_for(model)
        self.text_model_name = text_model
        self.text_model_id = model_id_for(text_model) if text_model else ""
        self._text_model = TextModel(text_model, device) if text_model else None
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.text_precision = text_precision
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.active_precision = "fp32"  # the image tower's runtime after load: fp32, fp16 or int8
        self.active_text_precision = "fp32"  # CLIP's text tower (after a text query): fp32 (torch), fp16, onnx fp32, int8
        self.text_agreement: float | None = None  # int8 text tower against fp32, when measured
        self._model = None
        self._images = None  # the image tower's runtime: TorchTower or onnx_clip.ImageSession
        self._texts = None  # CLIP's text tower's runtime (TorchTower or onnx_clip.TextSession), on first use
        self._dimension: int | None = None
        self._text_limit: int | None = None
        self._counting_tokenizer = None  # a copy: counting must not flip the model's own truncation settings
        self._counting_lock = threading.Lock()
        self._crops_centred = False  # does the image processor keep only the centre square?

    def _load(self) -> None:
        path = Path(self.model_name)
        if _looks_like_a_path(self.model_name) and not path.exists():
            raise ModelUnavailable(
                f"CLIP model folder not found: {self.model_name}. Set CLIP_MODEL to a folder holding "
                f"a sentence-transformers CLIP model, or to a model name such as clip-ViT-B-32."
            )
        device = resolve_device(self.device)
        try:
            model = _load_sentence_transformer(self.model_name, device, build_sentence_transformer)
        except ModelUnavailable:  # found, and refused (open_clip, not a CLIP): said as it is
            raise
        except Exception as exc:
            raise self.unavailable(self.model_name, exc) from exc
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self._dimension = int(get_dim())
        self._text_limit = _text_token_limit(model)
        tokenizer = _tokenizer(model)
        self._counting_tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None
        self._crops_centred = _processor_centre_crops(model)
        self._model = model
        if device == "cuda":
            self._images = self._texts = TorchTower(model, "fp16")
            self.active_precision = self.active_text_precision = "fp16"
            return
        self._images = self._image_runtime(model) or TorchTower(model)
        self.active_precision = self._images.precision
        # CLIP's text tower gets its runtime on the first text query (`_text_tower`): an ingest
        # never exports or opens it, and with TEXT_MODEL set it is never asked at all.

    def _text_tower(self):
        """CLIP's text tower's runtime, chosen (and exported if need be) on first use."""
        self.load()
        if self._texts is None:
            with self._load_lock:
                if self._texts is None:
                    texts = self._text_runtime(self._model, _tokenizer(self._model)) or TorchTower(self._model)
                    self.active_text_precision = texts.precision if isinstance(texts, TorchTower) \
                        else ("int8" if texts.precision == "int8" else "onnx fp32")
                    self._texts = texts
        return self._texts

    def _image_runtime(self, model):
        """The cached int8 ONNX image tower (exported on first use) when asked and it agrees with fp32."""
        if self.precision not in ("int8", "auto"):
            return None
        from core.vision import onnx_clip

        try:
            session = onnx_clip.load_image_session(model, self.model_id, self.cache_dir, "int8")
        except onnx_clip.Unavailable as exc:
            if self.precision == "int8":
                raise ModelUnavailable(f"EMBED_PRECISION=int8 needs {exc}; or set EMBED_PRECISION=fp32.") from exc
            return None
        agreement = onnx_clip.cached_agreement(session.path, lambda: onnx_clip.image_agreement(model, session))
        if agreement < INT8_MIN_COSINE and self.precision == "auto":
            return None  # keep answers as fp32 would give them
        return session

    def _text_runtime(self, model, tokenizer):
        """CLIP's text tower in ONNX Runtime as TEXT_PRECISION asks (None: stay on torch)."""
        if self.text_precision not in ("int8", "auto"):
            return None
        from core.vision import onnx_clip

        def load(precision: str):
            return onnx_clip.load_text_session(model, self.model_id, self.cache_dir, copy.deepcopy(tokenizer),
                                               self._text_limit, precision)

        try:
            int8 = load("int8")
            if self.text_precision == "int8":
                return int8
            exact = TorchTower(model)
            self.text_agreement = onnx_clip.cached_agreement(
                int8.path, lambda: onnx_clip.text_agreement(lambda t: exact.embed(t, len(t)), int8))
            return int8 if self.text_agreement >= INT8_MIN_COSINE else load("fp32")
        except onnx_clip.Unavailable as exc:
            if self.text_precision == "int8":
                raise ModelUnavailable(f"TEXT_PRECISION=int8 needs {exc}; or set TEXT_PRECISION=fp32.") from exc
            return None

    @property
    def dimension(self) -> int:
        self.load()
        assert self._dimension is not None
        return self._dimension

    @property
    def concurrent(self) -> bool:
        """May image embedding run beside another model's call (after load)? With the int8 tower in
        ONNX Runtime, yes; torch's CLIP would put its spinning OpenMP threads on the same cores."""
        return self.active_precision == "int8"

    def _encode(self, items: list) -> np.ndarray:
        """The torch model's own embeddings of `items` (images or texts)."""
        self.load()
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return TorchTower(self._model).embed(items, self.batch_size)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.load()
        if self._crops_centred:  # memory per crop stays bounded whatever its shape
            images = [centre_within_aspect(img) for img in images]
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._images.embed(list(images), self.batch_size)

    def _load_text_model(self) -> TextModel:
        """TEXT_MODEL, loaded on the first text query; its vectors must have CLIP's size."""
        self.load()
        text_model = self._text_model
        text_model.load()
        if text_model.dimension != self._dimension:
            raise ModelUnavailable(
                f"TEXT_MODEL '{self.text_model_name}' gives {text_model.dimension}-d vectors, but CLIP_MODEL "
                f"'{self.model_name}' gives {self._dimension}-d: pick the text model trained for this CLIP "
                f"(clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32), or leave TEXT_MODEL empty.")
        return text_model

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text vectors (TEXT_MODEL's when set, else CLIP's own text tower); a text over the model's
        token limit is embedded from its start (see `fit_text`)."""
        fitted = [self.fit_text(t).text for t in texts]
        if not fitted:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if not self.text_model_name:
            return self._text_tower().embed(fitted, self.batch_size)
        return TorchTower(self._load_text_model().model).embed(fitted, self.batch_size)

    def fit_text(self, text: str) -> QueryText:
        """The query as the text model reads it: its first `limit` tokens (CLIP: 77, start and
        end tokens included), counted with the model's own tokenizer (TEXT_MODEL's when set)."""
        self.load()
        text = clean_query_text(text)
        tokenizer = self._counting_tokenizer
        limit = self._text_limit
        if self.text_model_name:
            text_model = self._load_text_model()
            tokenizer, limit = text_model.tokenizer, text_model.limit
        if tokenizer is None or limit is None:
            return QueryText(text, 0, 0, text)
        offsets = bool(getattr(tokenizer, "is_fast", False))
        with self._counting_lock:  # a Rust tokenizer refuses concurrent calls that change its settings
            encoded = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False,
                                return_offsets_mapping=offsets)
        ids = list(encoded["input_ids"])
        if len(ids) <= limit:
            return QueryText(text, len(ids), limit, text)
        # CLIP wraps a text in start/end tokens, BERT-family text models in [CLS]/[SEP].
        starts = {getattr(tokenizer, name, None) for name in ("bos_token_id", "cls_token_id")} - {None}
        ends = {getattr(tokenizer, name, None) for name in ("eos_token_id", "sep_token_id")} - {None}
        leading = 1 if ids[0] in starts else 0
        trailing = 1 if ids[-1] in ends else 0
        keep = limit - leading - trailing  # content tokens the model reads (sentence-transformers cuts there)
        if offsets:
            spans = encoded["offset_mapping"]
            read = text[:spans[leading + keep - 1][1]]
            # Hand the model a few tokens more than it reads: the last word it reads keeps its own
            # tokens, so the vector equals the one of the whole query; 100k characters cost nothing.
            text = text[:spans[min(len(ids) - 1 - trailing, leading + keep + 16)][1]]
        else:
            with self._counting_lock:
                read = text = tokenizer.decode(ids[leading:leading + keep], skip_special_tokens=True)
        return QueryText(clean_query_text(text), len(ids), limit, " ".join(read.split()))
