"""Server-mode failures: one clear message each; transient write errors retried; failed
batches reported, never dropped."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from typer.testing import CliRunner

from core.catalogue.folders import discover
from core.errors import EmptyIndex, StoreUnavailable
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


# --------------------------------------------------------------------------- the real exception types


class _RpcError(grpc.RpcError):
    """A failed gRPC call as grpc raises it (a client with prefer_grpc): RpcError with code()."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def _answer(status: int) -> UnexpectedResponse:
    """What qdrant-client raises for a server's answer with an error status."""
    request = httpx.Request("PUT", "http://qdrant.test:6333/collections/shoes/points")
    return UnexpectedResponse.for_response(httpx.Response(status, json={"status": {"error": "no"}}, request=request))


def _no_answer(exc: Exception) -> ResponseHandlingException:
    """What qdrant-client raises when httpx got no answer (it wraps the transport error)."""
    return ResponseHandlingException(exc)


_REQUEST = httpx.Request("PUT", "http://qdrant.test:6333")
TRANSIENT = {
    "503 unavailable": lambda: _answer(503),
    "502 bad gateway": lambda: _answer(502),
    "429 busy": lambda: _answer(429),
    "408 timeout": lambda: _answer(408),
    "429 with Retry-After": lambda: ResourceExhaustedResponse("too many requests", "1"),
    "connect refused": lambda: _no_answer(httpx.ConnectError("connection refused", request=_REQUEST)),
    "read timeout": lambda: _no_answer(httpx.ReadTimeout("timed out", request=_REQUEST)),
    "connection reset": lambda: _no_answer(httpx.RemoteProtocolError("peer closed", request=_REQUEST)),
    "httpx timeout unwrapped": lambda: httpx.ConnectTimeout("timed out", request=_REQUEST),
    "grpc unavailable": lambda: _RpcError(grpc.StatusCode.UNAVAILABLE),
    "grpc deadline": lambda: _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
}
PERMANENT = {
    "400 bad request": lambda: _answer(400),
    "401 wrong key": lambda: _answer(401),
    "404 no collection": lambda: _answer(404),
    "malformed answer": lambda: _no_answer(ValueError("could not parse the answer")),
    "grpc invalid argument": lambda: _RpcError(grpc.StatusCode.INVALID_ARGUMENT),
    "grpc unauthenticated": lambda: _RpcError(grpc.StatusCode.UNAUTHENTICATED),
}


class _Failing:
    """A client whose upsert raises `error()` for its first `failures` calls, then succeeds."""

    def __init__(self, error, failures: int) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def upsert(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()


def _store(client) -> QdrantClientStore:
    store = QdrantClientStore(client, "shoes", "Qdrant server http://qdrant.test:6333", local=False)
    store.retry_delays = (0.0, 0.0, 0.0)
    return store


def _point():
    from core.store.base import StoredPoint

    return [StoredPoint("00000000-0000-0000-0000-000000000001", {"factory": "a"}, [1.0, 0.0])]


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_errors_of_the_real_types_are_retried(error):
    client = _Failing(error, failures=2)
    _store(client).upsert(_point())
    assert client.calls == 3
    client = _Failing(error, failures=10)
    with pytest.raises(StoreUnavailable) as failed:
        _store(client).upsert(_point())
    assert client.calls == 4 and "\n" not in str(failed.value)
    assert str(failed.value).startswith("upsert of 1 points to Qdrant server http://qdrant.test:6333 failed after "
                                        f"4 tries ({type(error()).__name__}")
    if isinstance(error(), UnexpectedResponse):  # the status and the server's own words, not the raw body
        assert str(failed.value).endswith(f"(UnexpectedResponse: {error().status_code} {error().reason_phrase} no)")


@pytest.mark.parametrize("error", PERMANENT.values(), ids=PERMANENT.keys())
def test_permanent_errors_of_the_real_types_are_raised_at_once(error):
    client = _Failing(error, failures=10)
    with pytest.raises(type(error())):
        _store(client).upsert(_point())
    assert client.calls == 1


REFUSED = {"401": lambda: _answer(401), "403": lambda: _answer(403),
           "grpc unauthenticated": lambda: _RpcError(grpc.StatusCode.UNAUTHENTICATED),
           "grpc permission denied": lambda: _RpcError(grpc.StatusCode.PERMISSION_DENIED)}
UNREACHABLE = {"connect refused": TRANSIENT["connect refused"], "503": lambda: _answer(503),
               "grpc unavailable": TRANSIENT["grpc unavailable"],
               # a body that mentions 401 is not a refused key: only the status says so
               "500 saying 401": lambda: UnexpectedResponse(500, "Internal Server Error", b"error 401 Unauthorized",
                                                            httpx.Headers())}


def _connect_failing_with(monkeypatch, error):
    import qdrant_client

    class Client:
        def __init__(self, **options) -> None:
            self.init_options = options

        def get_collections(self):
            raise error()

    monkeypatch.setattr(qdrant_client, "QdrantClient", Client)
    with pytest.raises(StoreUnavailable) as failed:
        QdrantClientStore.connect("http://qdrant.test:6333", "key", "shoes")
    assert "\n" not in str(failed.value)
    return str(failed.value)


@pytest.mark.parametrize("error", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_key_is_one_line(monkeypatch, error):
    assert _connect_failing_with(monkeypatch, error) == (
        "Qdrant at http://qdrant.test:6333 refused the API key: set QDRANT_API_KEY to the server's key.")


@pytest.mark.parametrize("error", UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_an_unreachable_server_is_one_line(monkeypatch, error):
    message = _connect_failing_with(monkeypatch, error)
    assert message.startswith(f"Cannot reach Qdrant at http://qdrant.test:6333 ({type(error()).__name__}). Start it")


def test_a_collection_gone_from_the_server_reads_empty_and_other_errors_are_raised():
    """A 404 (or gRPC NOT_FOUND) from a read: the collection was deleted behind the store's back."""
    from core.store.base import CollectionInfo

    for gone in (_answer(404), _RpcError(grpc.StatusCode.NOT_FOUND)):
        store = _store(object())
        store._info = CollectionInfo("m", 2)  # known from before

        def read(gone=gone):
            raise gone

        assert store._read(read, "empty") == "empty" and store._info is None
    store = _store(object())
    store._info = CollectionInfo("m", 2)
    for error in (_answer(500), ValueError("Collection shoes not found")):  # a server's ValueError is no 404

        def read(error=error):
            raise error

        with pytest.raises(type(error)):
            store._read(read, "empty")
    assert store._info is not None


def test_local_mode_is_known_from_how_the_store_was_made(tmp_path):
    assert QdrantClientStore(QdrantClient(":memory:"), "shoes", "m").local is True
    assert QdrantClientStore(QdrantClient(path=str(tmp_path / "q")), "shoes", "p").local is True
    remote = QdrantClient(url="http://127.0.0.1:9", check_compatibility=False)
    try:
        assert QdrantClientStore(remote, "shoes", "s").local is False
    finally:
        remote.close()
