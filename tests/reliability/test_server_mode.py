"""Server-mode failures: one clear message each; transient write errors retried; failed
batches reported, never dropped."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException
from typer.testing import CliRunner

from core.catalogue.folders import discover
from core.errors import EmptyIndex
from core.pipeline.ingest import IngestService
from core.search.service import SearchService
from core.store.qdrant import QdrantClientStore
from core.vision.detector import NoDetector
from ingest.cli import app
from tests.conftest import _free_port
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


class _Refusing(BaseHTTPRequestHandler):
    """Answers every request as a Qdrant server with another API key would: 401."""

    def do_GET(self):  # noqa: N802
        body = b'{"status":{"error":"Must provide an API key or an Authorization bearer token"}}'
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_unreachable_server_is_one_line(monkeypatch):
    monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{_free_port()}")
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Cannot reach Qdrant at http://127.0.0.1:")
    assert "docker compose up -d qdrant" in result.stderr and result.stderr.count("\n") == 1


def test_wrong_api_key_is_one_line(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("QDRANT_API_KEY", "wrong")
        result = runner.invoke(app, ["stats"])
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert "refused the API key: set QDRANT_API_KEY" in result.stderr and "Traceback" not in result.output


def test_missing_collection_is_an_empty_index(tiny_embedder):
    store = QdrantClientStore(QdrantClient(":memory:"), "never_created", "qdrant-client :memory:")
    with pytest.raises(EmptyIndex, match="is empty: add photos first"):
        SearchService(store, tiny_embedder).search_text("boot")
    assert store.count() == 0 and store.facet("factory") == {}


class _Flaky:
    """Wraps a real client: the first `failures` upserts raise a transport error."""

    def __init__(self, client, failures: int) -> None:
        self._inner = client
        self.failures = failures
        self.upserts = 0

    def upsert(self, *args, **kwargs):
        self.upserts += 1
        if self.failures:
            self.failures -= 1
            raise ResponseHandlingException(ConnectionError("connection reset by peer"))
        return self._inner.upsert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _ingest_with(store, tmp_path, embedder):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=3, variants_per_product=1)
    service = IngestService(store, embedder, NoDetector(), tmp_path / "data", batch_size=2)
    return service.add(discover(catalogue.factory_dir("factory_a")), "factory_a")


def test_transient_write_errors_are_retried(tmp_path, tiny_embedder):
    flaky = _Flaky(QdrantClient(":memory:"), failures=2)
    store = QdrantClientStore(flaky, "shoes", "flaky")
    store.retry_delays = (0.0, 0.0, 0.0)
    report = _ingest_with(store, tmp_path, tiny_embedder)
    assert report.photos_failed == [] and report.photos_added == 6
    assert store.count() == 6 and flaky.upserts == 3 + 2  # 3 batches, 2 retried


def test_batches_that_keep_failing_are_reported(tmp_path, tiny_embedder):
    flaky = _Flaky(QdrantClient(":memory:"), failures=4)  # the first batch fails all its tries
    store = QdrantClientStore(flaky, "shoes", "flaky server")
    store.retry_delays = (0.0, 0.0, 0.0)
    report = _ingest_with(store, tmp_path, tiny_embedder)
    assert report.photos_added == 4 and store.count() == 4
    assert len(report.photos_failed) == 2
    assert all(f.error.startswith("not stored: upsert of 2 points to flaky server failed after 4 tries")
               for f in report.photos_failed)
    again = _ingest_with(store, tmp_path / "again", tiny_embedder)  # a rerun stores the missing ones
    assert again.photos_failed == [] and store.count() == 6


def test_non_transient_errors_are_not_retried():
    calls = []

    class Broken:
        def upsert(self, *args, **kwargs):
            calls.append(1)
            raise ValueError("bad request")

    store = QdrantClientStore(Broken(), "shoes", "x", local=False)
    with pytest.raises(ValueError):
        store._write(lambda: store.client.upsert(), "upsert")
    assert len(calls) == 1
