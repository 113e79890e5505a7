"""One base for the models loaded on first use (CLIP, its text model, the detector, background
removal): loaded once and thread-safe, with load failures translated to one line a user can act on.

A model names itself (`kind`, e.g. "CLIP model") and says where a local copy goes (`offline_hint`);
a failed load then reads: `<kind> '<name>' could not be loaded (<error>: <its first line>). It
downloads on first use when online; offline, <offline_hint>.`
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from core.errors import ModelUnavailable


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


def error_line(exc: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message` (libraries raise many-line messages on a failed download)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else 'no detail'}"


def from_cache_or_hub(loader, name: str, device: str):
    """A local folder or cached model loads at once; a download is only tried when the hub
    answers within seconds (offline, the hub client would retry for minutes)."""
    try:
        return loader(name, device=device, local_files_only=True)
    except ModelUnavailable:  # found, and refused: no download changes that
        raise
    except Exception:
        if Path(name).exists() or hub_offline():
            raise
    if not hub_reachable():
        raise OSError("not in the local model cache, and huggingface.co cannot be reached to download it")
    return loader(name, device=device)


class LazyModel:
    """A model loaded by `load()` or on first use: once, whichever thread asks first.

    Subclasses set `kind` and `offline_hint` and implement `_load()`; a library error in there is
    turned into a `ModelUnavailable` by `unavailable(...)`.
    """

    kind = "Model"
    offline_hint = "point the setting to a local copy"

    def __init__(self) -> None:
        self._load_lock = threading.RLock()  # reentrant: a model may load a part of itself lazily too
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            self._load()
            self._loaded = True

    def _load(self) -> None:
        raise NotImplementedError

    def unavailable(self, name: str, exc: BaseException, hint: str | None = None) -> ModelUnavailable:
        """One line for a failed load: what, which, why, and that a local copy works offline."""
        return ModelUnavailable(
            f"{self.kind} '{name}' could not be loaded ({error_line(exc)}). It downloads on first use when "
            f"online; offline, {hint or self.offline_hint}."
        )
