"""Shared fixtures: offline environment, tiny real models, generated catalogues, stores."""

from __future__ import annotations

import os
import tempfile

# Before any Hugging Face / ultralytics / gradio import: never wait on DNS retries.
_CONFIG_DIR = tempfile.mkdtemp(prefix="shoe-search-test-")
for _key, _value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_CONFIG_DIR": _CONFIG_DIR,
    "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": os.path.join(_CONFIG_DIR, "gradio"),
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

# Real-browser fixtures (browser, page_of, shot): one session-wide chromium for every test file.
pytest_plugins = ["tests.ui.browser"]

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from core.domain.types import Detection  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.tiny_models import build_tiny_clip, build_tiny_yolo  # noqa: E402

# Settings from the test's own values only: a developer's .env or environment never leaks in.
_SETTING_VARS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch, tmp_path):
    for name in _SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    # fp32 everywhere but tests/test_precision.py, which compares int8 against it.
    monkeypatch.setenv("EMBED_PRECISION", "fp32")
    monkeypatch.setenv("TEXT_PRECISION", "fp32")
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_yolo_path(tmp_path_factory) -> Path:
    return build_tiny_yolo(tmp_path_factory.mktemp("yolo") / "tiny-shoes-yolov8n.pt")


@pytest.fixture
def cli_env(monkeypatch, tmp_path, tiny_clip_dir) -> Path:
    """Environment for CLI runs: a temp DATA_DIR, the tiny CLIP, no detector. Returns tmp_path."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLIP_MODEL", str(tiny_clip_dir))
    monkeypatch.setenv("DETECTOR_MODEL", "none")
    monkeypatch.setenv("DEVICE", "cpu")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_embedder(tiny_clip_dir):
    from core.vision.embedder import ClipEmbedder

    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", batch_size=16, precision="fp32")
    embedder.load()
    return embedder


@pytest.fixture
def settings(tmp_path, tiny_clip_dir) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", clip_model=str(tiny_clip_dir),
                    detector_model="none", device="cpu", batch_size=8, embed_precision="fp32",
                    text_precision="fp32")


class BlobDetector:
    """A real, simple detector for generated photos: boxes of non-background blobs.

    Pixels far from the top-left corner colour are foreground; columns without foreground
    split blobs, so a photo with two shoes side by side gives two boxes.
    """

    name = "blob-detector"

    def __init__(self, min_width: int = 8) -> None:
        self.min_width = min_width
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        out = []
        for img in images:
            arr = np.asarray(img, dtype=np.int16)
            mask = np.abs(arr - arr[0, 0]).sum(axis=2) > 60
            cols = np.flatnonzero(mask.any(axis=0))
            found = []
            if cols.size:
                runs = np.split(cols, np.flatnonzero(np.diff(cols) > 3) + 1)
                for run in runs:
                    if run[-1] - run[0] + 1 < self.min_width:
                        continue
                    rows = np.flatnonzero(mask[:, run[0]:run[-1] + 1].any(axis=1))
                    found.append(Detection((int(run[0]), int(rows[0]), int(run[-1]) + 1, int(rows[-1]) + 1),
                                           "Footwear", 0.9))
            out.append(found)
        return out


class CountingEmbedder:
    """The real tiny embedder, counting how many images it embeds."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.images_embedded = 0

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_images(self, images):
        self.images_embedded += len(images)
        return self.inner.embed_images(images)

    def embed_texts(self, texts):
        return self.inner.embed_texts(texts)

    def fit_text(self, text):
        return self.inner.fit_text(text)


@pytest.fixture
def blob_detector() -> BlobDetector:
    return BlobDetector()


@pytest.fixture
def counting_embedder(tiny_embedder) -> CountingEmbedder:
    return CountingEmbedder(tiny_embedder)


def two_shoes_photo(path: Path) -> Path:
    """A plain-background photo with two shoes side by side (two detections)."""
    img = Image.new("RGB", (400, 200), (245, 245, 245))
    img.paste(Image.new("RGB", (120, 80), (190, 30, 40)), (30, 80))
    img.paste(Image.new("RGB", (100, 90), (40, 70, 170)), (250, 70))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


# --------------------------------------------------------------------------- a small real index for the UI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ui_settings(tmp_path, tiny_clip_dir) -> Settings:
    """Settings for a UI over the small index, on a free loopback port."""
    return Settings(_env_file=None, data_dir=tmp_path / "data", clip_model=str(tiny_clip_dir), detector_model="none",
                    device="cpu", batch_size=8, ui_port=_free_port())


@pytest.fixture
def sample(tmp_path):
    from tools.sample_catalogue import make_catalogue

    return make_catalogue(tmp_path / "shoes", factories=3, products_per_factory=4, variants_per_product=2)


@pytest.fixture
def handlers(ui_settings, sample, tiny_embedder):
    """The UI's handlers over the app (core/app.py) with the tiny CLIP model and the blob detector."""
    from core.app import open_app
    from core.catalogue.folders import discover
    from search_ui.handlers import Handlers

    with open_app(ui_settings, embedder=tiny_embedder, detector=BlobDetector(), background_remover=None) as app:
        for factory in ("factory_a", "factory_b", "factory_c"):
            app.ingest.add(discover(sample.factory_dir(factory)), factory)
        yield Handlers(ui_settings, app.store, app.search, app.ingest)


@pytest.fixture
def served(ui_settings, handlers):
    """The real app, launched on a free loopback port; yields its URL."""
    from search_ui.app import launch

    demo = launch(ui_settings, handlers, block=False)
    try:
        yield f"http://127.0.0.1:{ui_settings.ui_port}/"
    finally:
        demo.close()


@pytest.fixture
def small_upload_app(ui_settings, handlers):
    """The real app with UI_MAX_UPLOAD_MB=1; yields its URL."""
    from search_ui.app import launch

    settings = ui_settings.model_copy(update={"ui_max_upload_mb": 1})
    demo = launch(settings, handlers, block=False)
    try:
        yield f"http://127.0.0.1:{settings.ui_port}/"
    finally:
        demo.close()
