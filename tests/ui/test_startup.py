"""`search-ui` start-up: the page is served while the models load; a query that comes first waits."""

from __future__ import annotations

import threading
import time

import httpx


def test_the_page_is_served_while_the_models_load_and_a_first_query_waits(ui_settings, sample):
    from gradio_client import Client

    from core.catalogue.folders import discover
    from core.pipeline.ingest import IngestService
    from core.store.edge import EdgeStore
    from core.vision.detector import NoDetector
    from core.app import open_app
    from core.vision.embedder import ClipEmbedder
    from search_ui.app import create_handlers, launch, preload_models

    settings = ui_settings.model_copy(update={"embed_precision": "fp32"})
    store = EdgeStore(settings.embedded_store_dir, settings.qdrant_collection)
    IngestService(store, ClipEmbedder(settings.clip_model, device="cpu", precision="fp32"), NoDetector(),
                  settings.data_dir).add(discover(sample.factory_dir("factory_a")), "factory_a")
    store.close()

    app = open_app(settings).__enter__()
    handlers = create_handlers(app, preload=False)
    embedder = app.embedder
    assert not embedder.loaded  # nothing loaded yet
    gate = threading.Event()  # the model load takes until the test says so
    real_load = embedder.load

    def slow_load() -> None:
        gate.wait(60)
        real_load()

    embedder.load = slow_load
    loading = preload_models(app, handlers)
    demo = launch(settings, handlers, block=False)
    url = f"http://127.0.0.1:{settings.ui_port}/"
    try:
        assert httpx.get(url, timeout=30).status_code == 200 and not loading.done()  # served before the models
        answer: dict = {}

        def query() -> None:
            answer["result"] = Client(url, verbose=False).predict("boot", [], "", False, 0.0, 5, False,
                                                                  api_name="/search_text")

        asking = threading.Thread(target=query)
        asking.start()
        asking.join(3)
        assert asking.is_alive() and "result" not in answer  # the query waits for the models
        gate.set()
        asking.join(120)
        loading.result(timeout=60)
        _, status, hits = answer["result"]
        assert len(hits) == 5 and status.startswith("5 results for")
        assert embedder.loaded
    finally:
        gate.set()
        demo.close()
        app.close()


def test_a_model_that_fails_in_the_background_is_raised_by_launch(ui_settings, tmp_path):
    """`search-ui` exits with the model's one-line error (main prints it): launch re-raises it."""
    import pytest

    from core.app import open_app
    from core.errors import ShoeSearchError
    from search_ui.app import create_handlers, launch, preload_models

    settings = ui_settings.model_copy(update={"clip_model": str(tmp_path / "no-such-model")})
    started = time.perf_counter()
    with open_app(settings) as app:
        handlers = create_handlers(app, preload=False)
        with pytest.raises(ShoeSearchError, match="CLIP model folder not found"):
            launch(settings, handlers, models_loading=preload_models(app, handlers))
    assert time.perf_counter() - started < 120
