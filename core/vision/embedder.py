"""CLIP embeddings through sentence-transformers: images and text in one vector space."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.errors import ModelUnavailable

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


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can a model download start? (A TCP connection within `timeout` seconds.)"""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


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


class ClipEmbedder:
    """A sentence-transformers CLIP model, loaded on first use (or by `load()`).

    `precision`: `fp32`; `int8` = the image tower exported to ONNX and quantized (weights int8)
    once, cached under `cache_dir`, run by ONNX Runtime (text stays on torch); `auto` = int8
    on a CPU when onnxruntime is installed and the quantized tower agrees with fp32 (cosine >=
    0.999 on probe photos), fp32 otherwise; fp16 on CUDA in every case.
    """

    def __init__(self, model: str, device: str = "auto", batch_size: int = 32, precision: str = "auto",
                 cache_dir: Path | None = None, text_model: str = "") -> None:
        """`text_model`: a sentence-transformers text encoder trained into this CLIP's space
        (TEXT_MODEL, e.g. a multilingual one) used for texts instead of CLIP's own text tower."""
        self.model_name = model
        self.model_id = model_id_for(model)
        self.text_model_name = text_model
        self.text_model_id = model_id_for(text_model) if text_model else ""
        self._text_model = None
        self._text_model_limit: int | None = None
        self._text_model_tokenizer = None
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.active_precision = "fp32"
        self._model = None
        self._image_session = None
        self._image_processor = None
        self._dimension: int | None = None
        self._text_limit: int | None = None
        self._counting_tokenizer = None  # a copy: counting must not flip the model's own truncation settings
        self._counting_lock = threading.Lock()
        self._crops_centred = False  # does the image processor keep only the centre square?
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            path = Path(self.model_name)
            if _looks_like_a_path(self.model_name) and not path.exists():
                raise ModelUnavailable(
                    f"CLIP model folder not found: {self.model_name}. Set CLIP_MODEL to a folder holding "
                    f"a sentence-transformers CLIP model, or to a model name such as clip-ViT-B-32."
                )
            try:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # no "Loading weights" bars in CLI output
                device = resolve_device(self.device)
                model = self._from_cache_or_hub(build_sentence_transformer, device)
                if device == "cuda":
                    model.half()
            except ModelUnavailable:
                raise
            except Exception as exc:
                raise ModelUnavailable(
                    f"CLIP model '{self.model_name}' could not be loaded ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:200]}). It downloads on first use when online; "
                    f"offline, set CLIP_MODEL to a local folder with the model (e.g. one saved by "
                    f"SentenceTransformer('clip-ViT-B-32').save(PATH))."
                ) from exc
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._dimension = int(get_dim())
            self._text_limit = _text_token_limit(model)
            tokenizer = _tokenizer(model)
            self._counting_tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None
            self._crops_centred = _processor_centre_crops(model)
            self._model = model
            if device == "cuda":
                self.active_precision = "fp16"
            elif self.precision in ("int8", "auto"):
                self._load_int8()

    def _from_cache_or_hub(self, loader, device: str):
        """A local folder or cached model loads at once; a download is only tried when the hub
        answers within seconds (offline, the hub client would retry for minutes)."""
        try:
            return loader(self.model_name, device=device, local_files_only=True)
        except ModelUnavailable:  # found, and refused: no download changes that
            raise
        except Exception:
            if Path(self.model_name).exists() or hub_offline():
                raise
        if not hub_reachable():
            raise OSError("not in the local model cache, and huggingface.co cannot be reached to download it")
        return loader(self.model_name, device=device)

    @property
    def dimension(self) -> int:
        self.load()
        assert self._dimension is not None
        return self._dimension

    def _load_int8(self) -> None:
        """Use the cached int8 ONNX image tower (export it on first use) if it agrees with fp32."""
        from core.vision import onnx_clip

        try:
            session, processor, exported = onnx_clip.load_int8_image_encoder(self._model, self.model_id, self.cache_dir)
        except onnx_clip.Unavailable as exc:
            if self.precision == "int8":
                raise ModelUnavailable(f"EMBED_PRECISION=int8 needs {exc}; or set EMBED_PRECISION=fp32.") from exc
            return
        self._image_session, self._image_processor = session, processor
        agreement = onnx_clip.cached_agreement(self._model, session, processor, exported)
        if agreement < INT8_MIN_COSINE and self.precision == "auto":
            self._image_session = self._image_processor = None  # keep answers as fp32 would give them
            return
        self.active_precision = "int8"

    def _encode(self, items: list) -> np.ndarray:
        self.load()
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            items,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.load()
        if self._crops_centred:  # memory per crop stays bounded whatever its shape
            images = [centre_within_aspect(img) for img in images]
        if self._image_session is not None and images:
            from core.vision import onnx_clip

            return onnx_clip.embed(self._image_session, self._image_processor, list(images), self.batch_size)
        return self._encode(list(images))

    def _load_text_model(self):
        """TEXT_MODEL, loaded on the first text query; its vectors must have CLIP's size."""
        self.load()
        with self._lock:
            if self._text_model is None:
                try:
                    from sentence_transformers import SentenceTransformer

                    device = resolve_device(self.device)
                    model = _NamedLoader(self.text_model_name).load(SentenceTransformer, device)
                    if device == "cuda":
                        model.half()
                except Exception as exc:
                    raise ModelUnavailable(
                        f"TEXT_MODEL '{self.text_model_name}' could not be loaded ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:200]}). Offline, set TEXT_MODEL to a local folder with "
                        f"the model, or leave it empty to use CLIP's own text encoder."
                    ) from exc
                get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                if int(get_dim()) != self._dimension:
                    raise ModelUnavailable(
                        f"TEXT_MODEL '{self.text_model_name}' gives {int(get_dim())}-d vectors, but CLIP_MODEL "
                        f"'{self.model_name}' gives {self._dimension}-d: pick the text model trained for this CLIP "
                        f"(clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32), or leave TEXT_MODEL empty.")
                self._text_model_limit = _text_token_limit(model)
                tokenizer = _tokenizer(model)
                self._text_model_tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None
                self._text_model = model
            return self._text_model

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text vectors (TEXT_MODEL's when set, else CLIP's own text tower); a text over the model's
        token limit is embedded from its start (see `fit_text`)."""
        fitted = [self.fit_text(t).text for t in texts]
        if not self.text_model_name:
            return self._encode(fitted)
        model = self._load_text_model()
        if not fitted:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = model.encode(fitted, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def fit_text(self, text: str) -> QueryText:
        """The query as the text model reads it: its first `limit` tokens (CLIP: 77, start and
        end tokens included), counted with the model's own tokenizer (TEXT_MODEL's when set)."""
        self.load()
        text = clean_query_text(text)
        tokenizer = self._counting_tokenizer
        limit = self._text_limit
        if self.text_model_name:
            self._load_text_model()
            tokenizer, limit = self._text_model_tokenizer, self._text_model_limit
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


class _NamedLoader:
    """`ClipEmbedder._from_cache_or_hub` for another model name (the text model)."""

    def __init__(self, name: str) -> None:
        self.model_name = name

    def load(self, loader, device: str):
        return ClipEmbedder._from_cache_or_hub(self, loader, device)
