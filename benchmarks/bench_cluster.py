"""Clustering time and peak memory on synthetic clustered 512-d vectors, versus the N x N
brute force of the older scripts (in the same run, where its matrix fits), and pair recall
of the k-nearest-neighbour path (embedded store's index) against the exact path.

    python -m benchmarks.bench_cluster [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import clustered_vectors, machine, peak_rss_mb, run_child, table

BRUTE_FORCE_MAX = 20_000  # the N x N float32 matrix: 1.6 GB at 20k, 40 GB at 100k


def case(kind: str, n: int) -> dict:
    import numpy as np

    from core.duplicates.groups import ClusterSettings, Items, cluster, exact_pairs
    from tests.helpers import brute_force_pairs

    vectors, _ = clustered_vectors(n)
    ids = [f"{i:08d}" for i in range(n)]
    payloads = [{"factory": f"f{i % 20}", "product_id": f"p{i}"} for i in range(n)]
    base_rss = peak_rss_mb()
    started = time.perf_counter()
    if kind == "ours":
        groups = cluster(Items(ids, vectors, payloads), ClusterSettings(identical=False))
        result = {"groups_dup": sum(g.tier == "duplicate" for g in groups),
                  "groups_sim": sum(g.tier == "similar" for g in groups)}
    elif kind == "brute":
        result = {"pairs": len(brute_force_pairs(vectors, 0.85))}
    elif kind == "knn":
        from core.duplicates.service import knn_candidates
        from core.store.base import StoredPoint
        from core.store.edge import EdgeStore

        with tempfile.TemporaryDirectory() as tmp:
            store = EdgeStore(Path(tmp), "bench")
            store.ensure_collection("synthetic", vectors.shape[1])
            uuids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(n)]
            for s in range(0, n, 2000):
                store.upsert([StoredPoint(uuids[i], payloads[i], vectors[i]) for i in range(s, min(n, s + 2000))])
            store.optimize()
            started = time.perf_counter()
            rows, cols, _ = knn_candidates(store, Items(uuids, vectors, payloads), 32, 0.85)
            store.close()
        exact_rows, exact_cols, _ = exact_pairs(vectors, 0.85)
        truth = set(zip(exact_rows.tolist(), exact_cols.tolist()))
        found = set(zip(rows.tolist(), cols.tolist()))
        result = {"pair_recall": round(len(found & truth) / max(1, len(truth)), 4), "pairs": len(truth)}
    seconds = time.perf_counter() - started
    return {"kind": kind, "n": n, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 0),
            "base_rss_mb": round(base_rss, 0), **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--case", nargs=2, metavar=("KIND", "N"))
    parser.add_argument("--knn-size", type=int, default=10000)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case[0], int(args.case[1]))))
        return
    print(f"machine: {machine()}")
    print("settings: duplicate >= 0.95, similar >= 0.85, scope all, crop level, single linkage, block 4096; "
          "vectors: 512-d, half in groups of 8 (cosine ~0.88-0.99), half scattered; every case in its own process")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        ours = run_child("benchmarks.bench_cluster", "--case", "ours", str(n))
        brute = run_child("benchmarks.bench_cluster", "--case", "brute", str(n)) if n <= BRUTE_FORCE_MAX else None
        rows.append([n, "ours (blocked exact)", ours["seconds"], ours["peak_rss_mb"],
                     f"{ours['groups_dup']} dup / {ours['groups_sim']} sim groups",
                     f"{brute['seconds'] / ours['seconds']:.1f}x faster" if brute else "-"])
        rows.append([n, "baseline N x N matrix", brute["seconds"] if brute else "not run",
                     brute["peak_rss_mb"] if brute else f"needs {n * n * 4 / 1e9:.0f} GB",
                     f"{brute['pairs']} pairs" if brute else "-", "1.0x" if brute else "-"])
        sys.stdout.flush()
    print(table(["crops", "method", "seconds", "peak RSS MB", "result", "vs baseline"], rows))
    knn = run_child("benchmarks.bench_cluster", "--case", "knn", str(args.knn_size))
    print(f"\nkNN path (Edge HNSW, k=32) at {knn['n']} crops: pair recall {knn['pair_recall']} of "
          f"{knn['pairs']} exact pairs >= 0.85, {knn['seconds']} s for the queries")


if __name__ == "__main__":
    main()
