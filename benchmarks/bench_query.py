"""Query latency at 10k and 100k crops: the embedded store (Qdrant Edge) versus qdrant-client's
local mode versus numpy brute force, filtered by factory and unfiltered: p50/p95 and recall@10
against the exact answer. Model time is not included (see bench_ingest for text embedding).

    python -m benchmarks.bench_query [--sizes 10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.common import clustered_vectors, machine, peak_rss_mb, run_child, table

FACTORIES = 20


def case(backend: str, n: int, queries: int) -> dict:
    from core.store.base import StoredPoint
    from core.store.edge import EdgeStore
    from core.store.qdrant import QdrantClientStore

    vectors, _ = clustered_vectors(n, seed=1)
    factories = np.array([f"factory_{i % FACTORIES:02d}" for i in range(n)])
    rng = np.random.default_rng(2)
    probe = vectors[rng.choice(n, queries, replace=False)] + rng.normal(scale=0.01, size=(queries, vectors.shape[1]))
    probe = (probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32)
    wanted = [factories[rng.integers(n)] for _ in range(queries)]
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]

    def exact(q, factory):
        scores = vectors @ q
        if factory is not None:
            scores = np.where(factories == factory, scores, -np.inf)
        return [ids[i] for i in np.argsort(-scores)[:10]]

    with tempfile.TemporaryDirectory() as tmp:
        load_started = time.perf_counter()
        if backend == "numpy":
            search = lambda q, f: exact(q, f)  # noqa: E731
            store = None
        else:
            if backend == "edge":
                store = EdgeStore(Path(tmp), "bench")
            else:
                from qdrant_client import QdrantClient

                store = QdrantClientStore(QdrantClient(path=tmp), "bench", "local mode")
            store.ensure_collection("synthetic", vectors.shape[1])
            for s in range(0, n, 1000):
                store.upsert([StoredPoint(ids[i], {"factory": str(factories[i])}, vectors[i])
                              for i in range(s, min(n, s + 1000))])
            store.optimize()
            search = lambda q, f: [h.point_id for h in store.query(q, where={"factory": [f]} if f else None, limit=10)]  # noqa: E731
        load_seconds = time.perf_counter() - load_started
        out = {"backend": backend, "n": n, "load_s": round(load_seconds, 1)}
        for label, filters in (("filtered", wanted), ("unfiltered", [None] * queries)):
            search(probe[0], filters[0])
            latencies, recall = [], []
            for q, f in zip(probe, filters):
                started = time.perf_counter()
                got = search(q, f)
                latencies.append((time.perf_counter() - started) * 1000)
                recall.append(len(set(got) & set(exact(q, f))) / 10)
            out[label] = {"p50": round(float(np.percentile(latencies, 50)), 2),
                          "p95": round(float(np.percentile(latencies, 95)), 2),
                          "recall@10": round(float(np.mean(recall)), 4)}
        if store is not None:
            store.close()
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-max", type=int, default=100_000, help="largest size for qdrant-client local mode")
    parser.add_argument("--case", nargs=2, metavar=("BACKEND", "N"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case[0], int(args.case[1]), args.queries)))
        return
    print(f"machine: {machine()}")
    print(f"settings: 512-d clustered vectors, {FACTORIES} factories (filter = one factory, ~5% of points), "
          f"top-10, {args.queries} queries per row, recall@10 against exact numpy; every case in its own process")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        results = {b: run_child("benchmarks.bench_query", "--case", b, str(n), "--queries", str(args.queries))
                   for b in ("edge", "local", "numpy") if b != "local" or n <= args.local_max}
        base = results["numpy"]
        for backend, r in results.items():
            name = {"edge": "embedded (Qdrant Edge)", "local": "qdrant-client local mode", "numpy": "numpy brute force (baseline)"}[backend]
            rows.append([n, name, r["filtered"]["p50"], r["filtered"]["p95"], r["filtered"]["recall@10"],
                         r["unfiltered"]["p50"], r["unfiltered"]["p95"], r["unfiltered"]["recall@10"],
                         f"{base['filtered']['p95'] / r['filtered']['p95']:.1f}x", r["load_s"], r["peak_rss_mb"]])
    print(table(["crops", "store", "filtered p50 ms", "p95 ms", "recall@10", "unfiltered p50 ms", "p95 ms",
                 "recall@10", "filtered p95 vs numpy", "load s", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
