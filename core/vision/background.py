"""Optional background removal before embedding (off by default; the detector's crop is the
default way to cut background). `rembg` when installed and its model is available."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from core.errors import ModelUnavailable
from core.vision.lazy_model import LazyModel, hub_offline

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


class RembgRemover(LazyModel):
    """rembg (u2net family), loaded on first use."""

    kind = "Background model"
    offline_hint = "put the .onnx file in U2NET_HOME (default ~/.u2net), or set BACKGROUND_REMOVAL=none"

    def __init__(self, model: str = "u2net") -> None:
        super().__init__()
        self.model = model
        self.name = f"rembg:{model}"
        self._session = None

    def _load(self) -> None:
        try:
            from rembg import new_session
        except ImportError as exc:
            raise ModelUnavailable(
                "BACKGROUND_REMOVAL=rembg needs the rembg package: pip install rembg "
                "(or set BACKGROUND_REMOVAL=none)."
            ) from exc
        if hub_offline() and not _model_on_disk(self.model):
            raise ModelUnavailable(
                f"Background model '{self.model}' is not on disk and this machine is offline (HF_HUB_OFFLINE=1): "
                f"put {self.model}.onnx in U2NET_HOME (default ~/.u2net), or set BACKGROUND_REMOVAL=none."
            )
        try:
            self._session = new_session(self.model)
        except Exception as exc:  # a failed download surfaces as many kinds
            raise self.unavailable(self.model, exc) from exc

    def remove(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        self.load()
        from rembg import remove

        return [on_white(remove(img, session=self._session)) for img in images]


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
