"""Large-run clustering paths on a real store: the bucket index (`ann`) and the store's own
nearest neighbours through batched queries (`knn`, what a Qdrant server answers) find the groups
of the exact search; vectors are read in pages, payloads trimmed to what clustering needs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from core.duplicates import service as cluster_service
from core.duplicates.groups import ClusterSettings
from core.duplicates.service import CLUSTER_KEYS, ClusterService, load_items
from core.store.base import StoredPoint
from core.store.edge import EdgeStore
from core.store.qdrant import QdrantClientStore

DIM = 32


def _vectors(n_groups=40, size=6, scattered=300, seed=2):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_groups, DIM))
    grouped = np.repeat(centers, size, axis=0) + rng.normal(scale=0.12, size=(n_groups * size, DIM))
    vectors = np.vstack([grouped, rng.normal(size=(scattered, DIM))])
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["edge", "qdrant-client"])
def store(request, tmp_path):
    if request.param == "edge":
        s = EdgeStore(tmp_path / "edge", "shoes")
    else:
        from qdrant_client import QdrantClient

        s = QdrantClientStore(QdrantClient(":memory:"), "shoes", "qdrant-client :memory:")
    vectors = _vectors()
    s.ensure_collection("m", DIM)
    s.upsert([StoredPoint(str(uuid.UUID(int=i + 1)),
                          {"factory": "AB"[i % 2], "product_id": f"P{i}", "photo_path": f"/p/{i}.jpg",
                           "photo_sha256": f"{i:064x}", "crop_index": 0, "caption": "x" * 200}, v)
              for i, v in enumerate(vectors)])
    s.optimize()
    yield s
    s.close()


def _groups(result):
    return sorted((g.tier, tuple(sorted(g.member_points))) for g in result.groups)


def test_load_items_reads_pages_into_one_matrix_and_trims_payloads(store, monkeypatch):
    monkeypatch.setattr(cluster_service, "PAGE", 37)
    items = load_items(store, keys=CLUSTER_KEYS)
    assert len(items) == 540 and items.vectors.shape == (540, DIM) and items.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items.vectors, axis=1), 1.0, atol=1e-5)
    assert all("caption" not in p and p["factory"] in "AB" for p in items.payloads)
    by_id = {p.id: p.vector for p in store.scroll(with_vectors=True)}
    np.testing.assert_allclose(items.vectors[5], by_id[items.ids[5]] / np.linalg.norm(by_id[items.ids[5]]), atol=1e-6)
    bare = load_items(store, factories=["A"], with_vectors=False)
    assert len(bare) == 270 and bare.vectors.shape == (270, 0) and bare.payloads[0]["caption"] == "x" * 200


def test_ann_and_batched_knn_find_the_exact_groups(store, tmp_path, monkeypatch):
    settings = ClusterSettings(identical=False, hash_distance=None, duplicate_threshold=0.97, similar_threshold=0.9)
    exact = ClusterService(store, tmp_path / "data").run(settings, method="exact")
    assert len(exact.by_tier("similar")) >= 30
    ann = ClusterService(store, tmp_path / "data").run(settings, method="ann")
    assert ann.method == "ann" and _groups(ann) == _groups(exact)

    def one_by_one(*args, **kwargs):
        raise AssertionError("clustering must ask the store in batches, not one query per crop")

    monkeypatch.setattr(store, "query", one_by_one)
    calls = []
    batched = store.query_batch
    monkeypatch.setattr(store, "query_batch", lambda vectors, **kw: calls.append(len(vectors)) or batched(vectors, **kw))
    monkeypatch.setattr(cluster_service, "QUERY_BATCH", 100)
    knn = ClusterService(store, tmp_path / "data").run(settings, method="knn", knn=16)
    assert knn.method == "knn" and _groups(knn) == _groups(exact)
    assert calls == [100] * 5 + [40]


def test_auto_uses_the_server_index_beyond_the_exact_size(store, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_service, "EXACT_MAX_ITEMS", 100)
    settings = ClusterSettings(identical=False, hash_distance=None)
    assert ClusterService(store, tmp_path / "data").run(settings).method == "ann"
    assert ClusterService(store, tmp_path / "data", server_index=True).run(settings).method == "knn"
    monkeypatch.setattr(cluster_service, "EXACT_MAX_ITEMS", 1000)
    assert ClusterService(store, tmp_path / "data", server_index=True).run(settings).method == "exact"
