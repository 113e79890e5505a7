"""Disk and memory per crop in Qdrant's storage engine, with and without int8 quantization.

Runs Qdrant Edge (Qdrant's own segment/HNSW/quantization code, in process) because no Qdrant
server runs on our build machines; qdrant-client's local mode is a Python dict and says nothing
about Qdrant's footprint. A server adds its WAL, per-shard overhead, replicas and temporary
segments during optimization, which is what Qdrant's capacity formula's x1.5 is for (see
docs/SCALING.md). Two layouts, the two `QDRANT_QUANTIZATION` / `QDRANT_VECTORS_ON_DISK` ends:

- ram:  float32 vectors in RAM, HNSW (QDRANT_* defaults)
- int8: float32 originals on disk (mmap), int8 scalar-quantized copy always in RAM, HNSW;
        queries on the int8 copy, rescored on the originals with oversampling 2

Each case builds a shard of N 512-d CLIP-like vectors with ingest's real payload layout and
keyword indexes (one process), then reopens it in a fresh process and runs queries, reading
RssAnon/RssFile from /proc after them (what the process holds, against a baseline of the
same process before opening the shard).

    python -m benchmarks.bench_capacity [--sizes 20000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.common import clustered_vectors, machine, run_child, table

DIM = 512
INDEXED = ("factory", "product_id", "photo_sha256", "photo_path")


def _payload(i: int) -> dict:
    """A crop payload as `ingest add` writes it (core.domain.types.CropPayload), realistic lengths."""
    sha = f"{i:064x}"
    return {"factory": f"factory_{i % 50:02d}", "product_id": f"SKU-{i // 6:08d}",
            "photo_path": f"/srv/catalogues/factory_{i % 50:02d}/SKU-{i // 6:08d}/IMG_{i:08d}.jpg",
            "photo_sha256": sha, "crop_index": i % 2, "box": [120 + i % 97, 80, 1460, 1010],
            "detector_class": "Footwear", "detector_confidence": 0.87, "width": 1340, "height": 930,
            "photo_width": 1600, "photo_height": 1200, "crop_path": f"crops/{uuid.UUID(int=i + 1)}.jpg",
            "model": "clip-ViT-B-32", "background": None, "ingested_at": "2026-11-25T10:00:00+00:00"}


def _status() -> dict[str, float]:
    """RssAnon / RssFile / VmRSS of this process, MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def _du(path: Path) -> dict[str, float]:
    """MB on disk under `path`, in all and by kind of file."""
    kinds = {"vectors": 0, "quantized": 0, "hnsw": 0, "payload+index": 0, "wal": 0, "other": 0}
    total = 0
    for file in path.rglob("*"):
        if not file.is_file():
            continue
        size = file.stat().st_blocks * 512
        total += size
        name = str(file.relative_to(path)).lower()
        kind = ("wal" if name.startswith("wal") else "quantized" if "quant" in name
                else "hnsw" if "hnsw" in name or "graph" in name or "links" in name
                else "vectors" if "vector" in name else "payload+index" if "payload" in name or "index" in name
                else "other")
        kinds[kind] += size
    return {"total": total / 1e6, **{k: v / 1e6 for k, v in kinds.items()}}


def _config(layout: str):
    from qdrant_edge import Distance, EdgeConfig, EdgeVectorParams, ScalarQuantizationConfig, ScalarType

    if layout == "ram":
        params = EdgeVectorParams(size=DIM, distance=Distance.Cosine)
    else:
        params = EdgeVectorParams(size=DIM, distance=Distance.Cosine, on_disk=True,
                                  quantization_config=ScalarQuantizationConfig(type=ScalarType.Int8, always_ram=True))
    return EdgeConfig(vectors={"clip": params})


def build(layout: str, n: int, path: str) -> dict:
    from qdrant_edge import EdgeShard, PayloadSchemaType, Point, UpdateOperation

    vectors, _ = clustered_vectors(n, dim=DIM, seed=1)
    started = time.perf_counter()
    shard = EdgeShard.create(path, _config(layout))
    for key in INDEXED:
        shard.update(UpdateOperation.create_field_index(key, PayloadSchemaType.Keyword))
    for s in range(0, n, 1000):
        shard.update(UpdateOperation.upsert_points(
            [Point(str(uuid.UUID(int=i + 1)), {"clip": vectors[i].tolist()}, _payload(i))
             for i in range(s, min(n, s + 1000))]))
    loaded = time.perf_counter()
    shard.optimize()
    shard.flush()
    shard.close()
    return {"layout": layout, "n": n, "upsert_s": round(loaded - started, 1),
            "index_s": round(time.perf_counter() - loaded, 1), "disk_mb": _du(Path(path))}


def query(layout: str, n: int, path: str, queries: int) -> dict:
    from qdrant_edge import EdgeShard, QuantizationSearchParams, Query, QueryRequest, SearchParams

    vectors, _ = clustered_vectors(n, dim=DIM, seed=1)
    rng = np.random.default_rng(2)
    probe = vectors[rng.choice(n, queries, replace=False)] + rng.normal(scale=0.01, size=(queries, DIM))
    probe = (probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32)
    truth = [set(np.argsort(-(vectors @ q))[:10].tolist()) for q in probe]
    ids = {str(uuid.UUID(int=i + 1)): i for i in range(n)}
    del vectors
    import gc

    gc.collect()
    before = _status()
    shard = EdgeShard.load(path)
    opened = _status()
    quantization = QuantizationSearchParams(rescore=True, oversampling=2.0) if layout == "int8" else None
    times, recall = [], []
    for q, wanted in zip(probe, truth):
        started = time.perf_counter()
        points = shard.query(QueryRequest(limit=10, query=Query.Nearest(q.tolist(), using="clip"), with_payload=True,
                                          params=SearchParams(hnsw_ef=128, quantization=quantization)))
        times.append((time.perf_counter() - started) * 1000)
        recall.append(len({ids[str(p.id)] for p in points} & wanted) / 10)
    after = _status()
    shard.close()
    return {"layout": layout, "n": n, "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2), "recall@10": round(float(np.mean(recall)), 3),
            "rss_anon_mb": round(after["RssAnon"] - before["RssAnon"], 1),
            "rss_file_mb": round(after["RssFile"] - before["RssFile"], 1),
            "rss_anon_open_mb": round(opened["RssAnon"] - before["RssAnon"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--child", nargs=4, metavar=("STEP", "LAYOUT", "N", "PATH"))
    args = parser.parse_args()
    if args.child:
        step, layout, n, path = args.child
        result = build(layout, int(n), path) if step == "build" else query(layout, int(n), path, args.queries)
        print(json.dumps(result))
        return
    print(f"machine: {machine()}; {DIM}-d vectors, payload {len(json.dumps(_payload(1)))} bytes of JSON, "
          f"{len(INDEXED)} keyword indexes; Qdrant Edge (qdrant-edge-py) in process")
    rows, results = [], {}
    for n in (int(s) for s in args.sizes.split(",")):
        for layout in ("ram", "int8"):
            tmp = tempfile.mkdtemp(prefix="bench-capacity-")
            try:
                built = run_child("benchmarks.bench_capacity", "--child", "build", layout, str(n), tmp + "/shard")
                asked = run_child("benchmarks.bench_capacity", "--queries", str(args.queries),
                                  "--child", "query", layout, str(n), tmp + "/shard")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            disk = built["disk_mb"]
            results[(n, layout)] = {**built, **asked}
            rows.append([f"{n:,}", layout, f"{disk['total']:.0f}", f"{disk['vectors']:.0f}", f"{disk['quantized']:.0f}",
                         f"{disk['hnsw']:.0f}", f"{disk['payload+index']:.0f}", f"{disk['wal'] + disk['other']:.0f}",
                         f"{asked['rss_anon_mb']:.0f}", f"{asked['rss_file_mb']:.0f}",
                         asked["p50_ms"], asked["p95_ms"], asked["recall@10"], built["upsert_s"], built["index_s"]])
            print(json.dumps({**built, **asked}), file=sys.stderr, flush=True)
    print(table(["crops", "layout", "disk MB", "vectors", "int8", "hnsw", "payload+idx", "wal+other", "RssAnon MB",
                 "RssFile MB", "p50 ms", "p95 ms", "recall@10", "upsert s", "index s"], rows))
    sizes = sorted({r[0] for r in results})
    if len(sizes) >= 2:  # per crop from the difference of the two largest sizes: fixed overheads cancel
        small, large = sizes[-2], sizes[-1]
        marginal = []
        for layout in ("ram", "int8"):
            a, b = results[(small, layout)], results[(large, layout)]
            per = 1e6 / (large - small)
            marginal.append([layout] + [f"{(b['disk_mb'][k] - a['disk_mb'][k]) * per / 1000:.2f}"
                                        for k in ("total", "vectors", "quantized", "hnsw", "payload+index")]
                            + [f"{(b['rss_anon_mb'] - a['rss_anon_mb']) * per / 1000:.2f}",
                               f"{(b['rss_file_mb'] - a['rss_file_mb']) * per / 1000:.2f}"])
        print(f"\nper 1M crops, from {small:,} -> {large:,} (GB):")
        print(table(["layout", "disk", "vectors", "int8", "hnsw", "payload+idx", "RssAnon", "RssFile (touched)"],
                    marginal))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
