"""Optional background removal before embedding (off by default; the detector's crop is the
default way to cut background). `rembg` when installed and its model is available."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from core.errors import ModelUnavailable

if TYPE_CHECKING:
    from PIL import Image


class BackgroundRemover(Protocol):
    """Returns each image with its background replaced by white (RGB, same size)."""

    name: str

    def remove(self, images: Sequence[Image.Image]) -> list[Image.Image]: ...


def on_white(rgba: Image.Image) -> Image.Image:
    from PIL import Image

    rgba = rgba.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


class RembgRemover:
    """rembg (u2net family), loaded on first use."""

    def __init__(self, model: str = "u2net") -> None:
        self.model = model
        self.name = f"rembg:{model}"
        self._session = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            try:
                from rembg import new_session
            except ImportError as exc:
                raise ModelUnavailable(
                    "BACKGROUND_REMOVAL=rembg needs the rembg package: pip install rembg "
                    "(or set BACKGROUND_REMOVAL=none)."
                ) from exc
            if _offline() and not _model_on_disk(self.model):
                raise ModelUnavailable(
                    f"Background model '{self.model}' is not on disk and this machine is offline (HF_HUB_OFFLINE=1): "
                    f"put {self.model}.onnx in U2NET_HOME (default ~/.u2net), or set BACKGROUND_REMOVAL=none."
                )
            try:
                self._session = new_session(self.model)
            except Exception as exc:  # a failed download surfaces as many kinds
                raise ModelUnavailable(
                    f"Background model '{self.model}' could not be loaded ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no detail'}). rembg downloads it "
                    f"on first use when online; offline, put the .onnx file in U2NET_HOME (default ~/.u2net), "
                    f"or set BACKGROUND_REMOVAL=none."
                ) from exc

    def remove(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        self.load()
        from rembg import remove

        return [on_white(remove(img, session=self._session)) for img in images]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def _model_on_disk(model: str) -> bool:
    """Whether rembg would find `model` without downloading (its own lookup)."""
    try:
        from rembg.sessions import sessions_class
    except ImportError:
        return True  # cannot tell: let rembg try
    for cls in sessions_class:
        try:
            if cls.name() == model:
                return cls.resolve_existing(f"{model}.onnx") is not None
        except Exception:
            return True
    return True


def build_remover(kind: str, model: str = "u2net") -> BackgroundRemover | None:
    if kind in ("", "none", "off"):
        return None
    if kind == "rembg":
        return RembgRemover(model)
    raise ModelUnavailable(f"Unknown BACKGROUND_REMOVAL '{kind}': use none or rembg.")
