"""One contract, every backend: the embedded Edge store and qdrant-client (server code path,
exercised on qdrant-client's local mode, which implements the same API)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections import Counter

import numpy as np
import pytest

from core.errors import SchemaMismatch, StoreLocked
from core.store.base import Contains, StoredPoint
from core.store.edge import EdgeStore
from core.store.qdrant import QdrantClientStore

DIM = 16


def _open(kind, tmp_path):
    if kind == "edge":
        return EdgeStore(tmp_path / "edge", "shoes")
    from qdrant_client import QdrantClient

    return QdrantClientStore(QdrantClient(":memory:"), "shoes", "qdrant-client :memory:")


@pytest.fixture(params=["edge", "qdrant-client", "remote"])
def store(request, tmp_path):
    if request.param == "remote":  # an Edge store held by a StoreHost, reached as another process would
        from core.store.host import RemoteStore, open_embedded
        from tests.store_host_server import serving

        holder = EdgeStore(tmp_path / "edge", "shoes")
        try:
            with serving([holder]):
                s = open_embedded(tmp_path / "edge", "shoes", write=True)
                assert isinstance(s, RemoteStore)
                yield s
                s.close()
        finally:
            holder.close()
        return
    s = _open(request.param, tmp_path)
    yield s
    s.close()


def _points(n, rng, factories=("a", "b", "c", "d")):
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        StoredPoint(str(uuid.UUID(int=i + 1)), {"factory": factories[i % len(factories)], "product_id": f"P{i % 50}",
                                               "crop_index": i % 3}, vectors[i])
        for i in range(n)
    ]


def _filled(store, n, rng):
    """`n` random points (drawn from `rng`) upserted in batches of 500, the index optimized; the points."""
    points = _points(n, rng)
    store.ensure_collection("m", DIM)
    for start in range(0, len(points), 500):
        store.upsert(points[start:start + 500])
    store.optimize()
    return points


def test_empty_store_answers_empty(store):
    assert store.info() is None
    assert store.count() == 0 and store.facet("factory") == {}
    assert store.query(np.ones(DIM)) == [] and list(store.scroll()) == []


def test_collection_records_model_and_refuses_another(store):
    info = store.ensure_collection("clip-A", DIM)
    assert (info.model, info.dimension) == ("clip-A", DIM)
    assert store.ensure_collection("clip-A", DIM) == store.info()
    with pytest.raises(SchemaMismatch, match="model 'clip-A'.*CLIP_MODEL is 'clip-B'"):
        store.ensure_collection("clip-B", DIM)
    with pytest.raises(SchemaMismatch):
        store.ensure_collection("clip-A", DIM * 2)


def test_upsert_retrieve_update_delete(store):
    store.ensure_collection("m", DIM)
    points = _points(10, np.random.default_rng(1))
    store.upsert(points)
    store.upsert(points[:3])  # same ids: no duplicates
    assert store.count() == 10
    got = {p.id: p for p in store.retrieve([points[0].id, points[1].id, str(uuid.uuid4())], with_vectors=True)}
    assert set(got) == {points[0].id, points[1].id}
    assert got[points[0].id].payload["factory"] == "a"
    np.testing.assert_allclose(got[points[0].id].vector, points[0].vector, atol=1e-6)
    store.set_payload([points[0].id], {"product_id": "NEW", "photo_path": "/x.jpg"})
    [updated] = store.retrieve([points[0].id])
    assert updated.payload["product_id"] == "NEW" and updated.payload["factory"] == "a"
    store.delete([points[0].id, points[1].id])
    assert store.count() == 8 and store.retrieve([points[0].id]) == []
    store.delete([p.id for p in points if p.payload["factory"] == "b"])
    assert set(store.facet("factory")) == {"a", "c", "d"}  # no value left with count 0


def test_count_facet_scroll_with_filters(store):
    store.ensure_collection("m", DIM)
    points = _points(103, np.random.default_rng(2))
    store.upsert(points)
    assert store.facet("factory") == {"a": 26, "b": 26, "c": 26, "d": 25}
    assert store.count({"factory": ["a", "b"]}) == 52
    first_crops = Counter(p.payload["factory"] for p in points if p.payload["crop_index"] == 0)
    assert store.facet("factory", where={"crop_index": [0]}) == dict(first_crops)
    assert sum(first_crops.values()) == 35
    assert store.count({"product_id": Contains("P4")}) == sum("P4" in p.payload["product_id"] for p in points) == 22
    assert store.count({"product_id": Contains("p4")}) == 0  # case-sensitive
    assert store.count({"product_id": Contains("P4"), "factory": ["a"]}) == sum(
        "P4" in p.payload["product_id"] and p.payload["factory"] == "a" for p in points)
    scrolled = list(store.scroll({"factory": ["d"]}, with_vectors=True, batch_size=7))
    assert len(scrolled) == 25 and len({p.id for p in scrolled}) == 25
    assert all(p.payload["factory"] == "d" and p.vector.shape == (DIM,) for p in scrolled)


def test_filtered_query_equals_brute_force(store):
    """Recall against numpy on a few thousand points: filtered results are exact."""
    rng = np.random.default_rng(3)
    points = _filled(store, 3000, rng)
    matrix = np.stack([p.vector for p in points])
    factories = np.array([p.payload["factory"] for p in points])
    queries = rng.normal(size=(20, DIM)).astype(np.float32)
    for q in queries:
        q /= np.linalg.norm(q)
        for allowed in (["b"], ["a", "c"], None):
            mask = np.isin(factories, allowed) if allowed else np.ones(len(points), bool)
            scores = np.where(mask, matrix @ q, -np.inf)
            expected = [points[i].id for i in np.argsort(-scores)[:20]]
            hits = store.query(q, where={"factory": allowed} if allowed else None, limit=20)
            assert [h.point_id for h in hits] == expected
            assert all(h.factory in (allowed or "abcd") for h in hits)
            np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:20], atol=1e-5)


def test_score_threshold(store):
    store.ensure_collection("m", DIM)
    points = _points(50, np.random.default_rng(4))
    store.upsert(points)
    hits = store.query(points[0].vector, limit=50, score_threshold=0.5)
    assert hits[0].point_id == points[0].id and abs(hits[0].score - 1.0) < 1e-5
    assert all(h.score >= 0.5 for h in hits) and len(hits) < 50


def test_backend_differences_are_answered_by_the_store(store, request, tmp_path):
    """What the app and UI ask instead of checking types: servable, holder, a collection beside."""
    kind = request.node.callspec.params["store"]
    assert store.servable is (kind == "edge")  # only a store this process holds can be served
    if kind == "remote":
        assert "(process " in store.holder and "http://127.0.0.1:" in store.holder
    else:
        assert store.holder is None
    store.ensure_collection("m", DIM)
    store.upsert(_points(5, np.random.default_rng(4)))
    other = store.beside("shoes_head", write=True)
    try:
        assert other.collection == "shoes_head" and other.info() is None
        other.ensure_collection("head", 4)
        other.upsert([StoredPoint(str(uuid.UUID(int=99)), {"factory": "z"}, np.ones(4, dtype=np.float32) / 2)])
        assert other.count() == 1 and store.count() == 5 and store.info().model == "m"
        assert other.query(np.ones(4), limit=1)[0].point_id == str(uuid.UUID(int=99))
        if kind == "qdrant-client":  # the same client, the same place
            assert other.client is store.client and other.location == store.location and not other.servable
        else:  # the same folder; the holder serves only "shoes", so the head collection is opened here
            assert isinstance(other, EdgeStore) and other.servable and other.holder is None
            assert other.directory == tmp_path / "edge"
    finally:
        if kind != "qdrant-client":  # closing a qdrant-client store closes the client they share
            other.close()


def test_edge_store_persists_across_reopen(tmp_path):
    store = EdgeStore(tmp_path / "edge", "shoes")
    store.ensure_collection("m", DIM)
    points = _points(40, np.random.default_rng(5))
    store.upsert(points)
    store.close()
    again = EdgeStore(tmp_path / "edge", "shoes")
    try:
        assert again.info().model == "m" and again.count() == 40
        assert again.query(points[7].vector, limit=1)[0].point_id == points[7].id
    finally:
        again.close()


def test_edge_store_is_locked_against_a_second_process(tmp_path):
    store = EdgeStore(tmp_path / "edge", "shoes")
    store.ensure_collection("m", DIM)
    store.upsert(_points(5, np.random.default_rng(6)))
    try:
        with pytest.raises(StoreLocked):  # a second open in this process is refused too
            EdgeStore(tmp_path / "edge", "shoes")
        code = textwrap.dedent(f"""
            from pathlib import Path
            from core.errors import StoreLocked
            from core.store.edge import EdgeStore
            try:
                EdgeStore(Path({str(tmp_path / 'edge')!r}), "shoes")
            except StoreLocked as exc:
                print("LOCKED", exc)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert "LOCKED" in out.stdout and f"in use by process {__import__('os').getpid()}" in out.stdout
        assert store.count() == 5  # the holder is undamaged
    finally:
        store.close()
    reopened = EdgeStore(tmp_path / "edge", "shoes")  # released on close
    assert reopened.count() == 5
    reopened.close()


def test_edge_lock_is_released_when_the_holder_is_killed(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        import numpy as np
        from core.store.base import StoredPoint
        from core.store.edge import EdgeStore
        s = EdgeStore(Path({str(tmp_path / 'edge')!r}), "shoes")
        s.ensure_collection("m", {DIM})
        s.upsert([StoredPoint("00000000-0000-0000-0000-000000000001", {{"factory": "a"}}, np.ones({DIM}))])
        print("READY", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        with pytest.raises(StoreLocked, match=f"process {proc.pid}"):
            EdgeStore(tmp_path / "edge", "shoes")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    store = EdgeStore(tmp_path / "edge", "shoes")  # kill -9 left no lock, and the data reloads
    try:
        assert store.count() == 1 and store.info().model == "m"
    finally:
        store.close()


def test_collection_record_is_read_once_and_a_vanished_collection_answers_empty():
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    store = QdrantClientStore(client, "shoes", "qdrant-client :memory:")
    store.ensure_collection("m", DIM)
    points = _points(20, np.random.default_rng(7))
    store.upsert(points)
    lookups = []
    for name in ("collection_exists", "get_collection"):
        real = getattr(client, name)
        setattr(client, name, lambda *a, _real=real, _name=name, **k: lookups.append(_name) or _real(*a, **k))
    for _ in range(3):  # what a search does: record, count, query
        assert store.info().model == "m" and store.count() == 20
        assert store.query(points[0].vector, limit=1)[0].point_id == points[0].id
    assert lookups == []
    client.delete_collection("shoes")  # behind the store's back
    assert store.query(points[0].vector) == [] and store.count() == 0 and list(store.scroll()) == []
    assert store.info() is None and store.facet("factory") == {}


def test_edge_reads_its_record_once(tmp_path, monkeypatch):
    store = EdgeStore(tmp_path / "edge", "shoes")
    try:
        store.ensure_collection("m", DIM)
        reads = []
        real = type(store.meta_path).read_text
        monkeypatch.setattr(type(store.meta_path), "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k))
        for _ in range(3):
            assert store.info().model == "m"
        assert reads == []
    finally:
        store.close()
    again = EdgeStore(tmp_path / "edge", "shoes")  # a new process-like open reads it from disk
    try:
        assert again.info().dimension == DIM
    finally:
        again.close()


def _numpy_recommend(matrix, positive, negative, strategy):
    """Qdrant's recommend scores, written out in numpy (cosine on unit vectors = dot product)."""
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    if strategy == "average_vector":
        mean = np.mean(positive, axis=0)
        target = 2 * mean - np.mean(negative, axis=0) if len(negative) else mean
        return matrix @ unit(target)
    pos = matrix @ np.asarray(positive).T if len(positive) else np.zeros((len(matrix), 0))
    neg = matrix @ np.asarray(negative).T if len(negative) else np.zeros((len(matrix), 0))
    if strategy == "sum_scores":
        return pos.sum(axis=1) - neg.sum(axis=1)
    best_pos = pos.max(axis=1) if pos.shape[1] else np.full(len(matrix), -np.inf)
    best_neg = neg.max(axis=1) if neg.shape[1] else np.full(len(matrix), -np.inf)
    sigmoid = lambda x: 0.5 * (x / (1 + np.abs(x)) + 1)  # noqa: E731
    with np.errstate(invalid="ignore"):  # sigmoid(-inf) is never picked
        return np.where(best_pos > best_neg, sigmoid(best_pos), -sigmoid(best_neg))


@pytest.mark.parametrize("strategy", ["average_vector", "best_score", "sum_scores"])
def test_recommend_equals_numpy(store, strategy):
    """Likes and dislikes (as vectors): the same ranking and scores as Qdrant's formulas in numpy,
    filtered or not, on both backends."""
    rng = np.random.default_rng(11)
    points = _points(1500, rng)
    store.ensure_collection("m", DIM)
    store.upsert(points)
    store.optimize()
    matrix = np.stack([p.vector for p in points])
    factories = np.array([p.payload["factory"] for p in points])
    examples = [(points[1:3], points[10:11]), (points[5:6], []), (points[7:10], points[20:22])]
    if strategy != "average_vector":
        examples.append(([], points[30:32]))  # dislikes only: only the score strategies take them
    for liked, disliked in examples:
        positive = [p.vector for p in liked]
        negative = [p.vector for p in disliked]
        scores = _numpy_recommend(matrix, positive, negative, strategy)
        for allowed in (None, ["b", "c"]):
            mask = np.isin(factories, allowed) if allowed else np.ones(len(points), bool)
            masked = np.where(mask, scores, -np.inf)
            order = np.argsort(-masked, kind="stable")[:15]
            hits = store.recommend(positive, negative, where={"factory": allowed} if allowed else None,
                                   limit=15, strategy=strategy)
            np.testing.assert_allclose([h.score for h in hits], masked[order], rtol=1e-4, atol=1e-4)
            # Liked points score alike (each is its own best positive): ties may come in any order.
            tie_free = lambda pairs: sorted(pairs, key=lambda p: (-round(p[1], 4), p[0]))  # noqa: E731
            assert tie_free([(h.point_id, h.score) for h in hits]) == \
                [(a, pytest.approx(b, abs=1e-4)) for a, b in tie_free([(points[i].id, masked[i]) for i in order])]
            assert all(h.factory in (allowed or "abcd") for h in hits)
    threshold = store.recommend([points[1].vector], [], limit=100, score_threshold=0.6, strategy=strategy)
    assert threshold and all(h.score >= 0.6 for h in threshold)


def test_recommend_without_examples_or_with_an_unknown_strategy_is_refused(store):
    store.ensure_collection("m", DIM)
    store.upsert(_points(5, np.random.default_rng(12)))
    with pytest.raises(ValueError, match="at least one example"):
        store.recommend([], [])
    with pytest.raises(ValueError, match="unknown recommend strategy"):
        store.recommend([np.ones(DIM)], [], strategy="mean")
    with pytest.raises(ValueError, match="average_vector needs at least one positive"):
        store.recommend([], [np.ones(DIM)], strategy="average_vector")


def test_query_batch_equals_numpy_and_single_queries(store):
    """Batched queries (clustering's nearest-neighbour candidates): one hit list per vector, in order,
    equal to numpy's exact ranking, filtered or not, with or without payloads."""
    assert store.query_batch([np.ones(DIM)], limit=3) == [[]]  # no collection yet
    rng = np.random.default_rng(5)
    points = _filled(store, 2000, rng)
    assert store.query_batch([], limit=3) == []
    matrix = np.stack([p.vector for p in points])
    factories = np.array([p.payload["factory"] for p in points])
    queries = rng.normal(size=(25, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for allowed in (None, ["b", "d"]):
        where = {"factory": allowed} if allowed else None
        mask = np.isin(factories, allowed) if allowed else np.ones(len(points), bool)
        scores = np.where(mask[None, :], queries @ matrix.T, -np.inf)
        batches = store.query_batch(queries, where=where, limit=12, exact=True)
        assert len(batches) == len(queries)
        for q, hits, row in zip(queries, batches, scores):
            assert [h.point_id for h in hits] == [points[i].id for i in np.argsort(-row)[:12]]
            np.testing.assert_allclose([h.score for h in hits], np.sort(row)[::-1][:12], atol=1e-5)
            assert all(h.factory in (allowed or "abcd") for h in hits)
            assert [h.point_id for h in hits] == [h.point_id for h in store.query(q, where=where, limit=12)]
    bare = store.query_batch(matrix[:4], limit=50, score_threshold=0.6, with_payload=False)
    for i, hits in enumerate(bare):
        expected = np.sort(matrix @ matrix[i])[::-1]
        assert hits[0].point_id == points[i].id and all(h.payload == {} for h in hits)
        assert len(hits) == min(50, int((expected >= 0.6).sum()))
        assert all(h.score >= 0.6 - 1e-6 for h in hits)
