"""`ingest eval` against a server: each query's neighbours come from the server's index
(batched queries), and the metrics equal the exact in-memory path's on the same crops."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

from core.duplicates.service import load_items
from core.quality import evaluate
from core.quality.evaluate import evaluate_links, evaluate_store, evaluate_vectors
from core.store.base import StoredPoint
from core.store.edge import EdgeStore
from core.store.qdrant import QdrantClientStore
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

DIM = 24
runner = CliRunner()


def _points(seed=3):
    """3 factories x 12 products x 1-4 photos, some photos with two crops; products near their
    centre, a few products sharing a design across factories."""
    rng = np.random.default_rng(seed)
    points, n = [], 0
    for f in "ABC":
        for p in range(12):
            centre = rng.normal(size=DIM) if p >= 2 else np.full(DIM, p + 1.0) + rng.normal(scale=0.3, size=DIM)
            centre += rng.normal(scale=0.2, size=DIM)
            for photo in range(int(rng.integers(1, 5))):
                for crop in range(1 + (photo == 0 and p % 3 == 0)):
                    v = centre + rng.normal(scale=0.8, size=DIM)
                    n += 1
                    points.append(StoredPoint(str(uuid.UUID(int=n)), {
                        "factory": f, "product_id": f"P{p}", "photo_path": f"/{f}/{p}/{photo}.jpg",
                        "photo_sha256": f"{f}{p}x{photo}".ljust(64, "0"), "crop_index": crop, "caption": "x" * 50},
                        v.astype(np.float32)))
    return points


@pytest.fixture(params=["edge", "qdrant-client"])
def store(request, tmp_path):
    s = (EdgeStore(tmp_path / "edge", "shoes") if request.param == "edge"
         else QdrantClientStore(QdrantClient(":memory:"), "shoes", "qdrant-client :memory:"))
    s.ensure_collection("m", DIM)
    s.upsert(_points())
    s.optimize()
    yield s
    s.close()


class TextVectors:
    """Text queries' vectors, given (the evaluation only needs `embed_texts`)."""

    def __init__(self, vectors):
        self.vectors = vectors

    def embed_texts(self, texts):
        return self.vectors[:len(texts)]


def _dicts(evaluations):
    return {kind: e.to_dict() for kind, e in evaluations.items()}


@pytest.mark.parametrize("factories", [None, ["A", "C"]])
def test_store_ranked_metrics_equal_the_exact_path(store, monkeypatch, factories):
    monkeypatch.setattr(evaluate, "QUERY_BATCH", 7)  # many batched requests
    items = load_items(store, factories)
    rng = np.random.default_rng(0)
    text = [("a", "P0", None), ("b", "P5", None), ("c", "nothing", None)]
    embedder = TextVectors(rng.normal(size=(3, DIM)).astype(np.float32))
    pairs = [("/A/3/0.jpg", "/B/4/0.jpg"), ("/B/4/0.jpg", "/C/5/0.jpg"), ("/A/6/0.jpg", "/A/7/0.jpg")]
    links = {"A/P0": ["A/P0", "B/P0"], "B/P0": ["A/P0", "B/P0"], "C/P1": ["A/P1", "C/P1"], "A/P1": ["A/P1", "C/P1"]}

    scrolled = []
    original = store.scroll
    monkeypatch.setattr(store, "scroll", lambda *a, **k: scrolled.append(k.get("with_vectors")) or original(*a, **k))
    crops, ranked = evaluate_store(store, factories, embedder, text)
    assert crops == len(items) and not any(scrolled)  # ids and labels only: no vector matrix read
    exact = evaluate_vectors(items, embedder, text)
    assert ranked["photo"].queries > 50 and ranked["text"].queries == 2
    assert _dicts(ranked) == _dicts(exact)

    assert _dicts(evaluate_store(store, factories, pairs=pairs)[1]) == _dicts(evaluate_vectors(items, pairs=pairs))
    linked = evaluate_vectors(items)
    linked.update(evaluate_links(items, links))
    assert _dicts(evaluate_store(store, factories, links=links)[1]) == _dicts(linked)
    assert linked["cross_factory"].queries > 0


@pytest.fixture
def servers(cli_env, monkeypatch, tmp_path):
    """QDRANT_URL=http://NAME.test:6333 opens qdrant-client local mode under tmp_path/NAME (the
    server code path; no Qdrant server runs here)."""
    def connect(cls, url, api_key, collection, config=None):
        name = url.split("//")[1].split(".")[0]
        return cls(QdrantClient(path=str(tmp_path / "servers" / name)), collection, f"local {name}", config)

    monkeypatch.setattr(QdrantClientStore, "connect", classmethod(connect))

    def use(name: str | None) -> None:
        if name:
            monkeypatch.setenv("QDRANT_URL", f"http://{name}.test:6333")
        else:
            monkeypatch.delenv("QDRANT_URL", raising=False)

    return use


def test_eval_cli_on_a_server_equals_the_embedded_store(servers, tmp_path, monkeypatch):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=4, variants_per_product=2)
    queries = tmp_path / "queries.csv"
    queries.write_text("text,product_id\nred boot,A100\nwhite sneaker,B102\nunknown,ZZZ\n")
    called = []
    monkeypatch.setattr(evaluate, "ranked_leave_one_out",
                        lambda *a, _f=evaluate.ranked_leave_one_out, **k: called.append(1) or _f(*a, **k))
    results = {}
    for name in (None, "srv"):
        servers(name)
        for factory in ("factory_a", "factory_b"):
            assert runner.invoke(app, ["add", str(catalogue.factory_dir(factory))]).exit_code == 0
        for args in ([], ["--factory", "factory_b"]):
            result = runner.invoke(app, ["eval", "--queries", str(queries), "--json", *args])
            assert result.exit_code == 0, result.output
            data = json.loads(result.stdout)
            data.pop("index")
            results[name, tuple(args)] = data
    assert len(called) == 2  # the server runs ranked by the store; the embedded ones exactly
    for args in ([], ["--factory", "factory_b"]):
        assert results["srv", tuple(args)] == results[None, tuple(args)]
    assert results[None, ()]["crops"] == 24 and results[None, ()]["photo"]["queries"] == 24
    assert results[None, ("--factory", "factory_b")]["crops"] == 12


def test_eval_on_an_empty_server(servers):
    servers("empty")
    result = runner.invoke(app, ["eval"])
    assert result.exit_code == 1 and "Nothing indexed" in result.stderr
