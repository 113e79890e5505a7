"""A small real index (tiny CLIP, blob detector, Edge store) and the UI handlers over it."""

from __future__ import annotations

import socket

import pytest

from core.catalogue import discover
from core.ingest_service import IngestService
from core.sample_catalogue import make_catalogue
from core.search_service import SearchService
from core.settings import Settings
from core.store import EdgeStore
from search_ui.handlers import Handlers
from tests.conftest import BlobDetector


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ui_settings(tmp_path, tiny_clip_dir) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", clip_model=str(tiny_clip_dir), detector_model="none",
                    device="cpu", batch_size=8, ui_port=_free_port())


@pytest.fixture
def sample(tmp_path):
    return make_catalogue(tmp_path / "shoes", factories=3, products_per_factory=4, variants_per_product=2)


@pytest.fixture
def handlers(ui_settings, sample, tiny_embedder):
    store = EdgeStore(ui_settings.embedded_store_dir, ui_settings.qdrant_collection)
    detector = BlobDetector()
    ingest = IngestService(store, tiny_embedder, detector, ui_settings.data_dir, batch_size=8)
    for factory in ("factory_a", "factory_b", "factory_c"):
        ingest.add(discover(sample.factory_dir(factory)), factory)
    yield Handlers(ui_settings, store, SearchService(store, tiny_embedder, detector), ingest)
    store.close()


@pytest.fixture
def served(ui_settings, handlers):
    """The real app, launched on a free loopback port; yields its URL."""
    from search_ui.app import launch

    demo = launch(ui_settings, handlers, block=False)
    try:
        yield f"http://127.0.0.1:{ui_settings.ui_port}/"
    finally:
        demo.close()
