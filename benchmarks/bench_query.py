"""Query latency at 10k and 100k crops: the embedded store (Qdrant Edge) versus qdrant-client's
local mode versus numpy brute force, filtered by factory and unfiltered: p50/p95 and recall@10
against the exact answer.

`--models`: query model time instead, with a full-size ViT-B/32 CLIP and a YOLOv8n of the
`yolov8n-oiv7.pt` shape (random weights, the real compute cost; built by bench_ingest): a text
query through CLIP's text tower in torch fp32 (the baseline), ONNX Runtime fp32 and int8
(TEXT_PRECISION), each with its cosine to torch fp32 on the same queries; and an image query
(detect + crop + embed one photo) with the default runtimes. Every case in its own process.

    python -m benchmarks.bench_query [--sizes 10000,100000] [--queries 200]
    python -m benchmarks.bench_query --models [--queries 100]
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


QUERY_WORDS = ["white", "black", "leather", "suede", "high-top", "sneaker", "ankle", "boot", "red", "heels",
               "running", "shoe", "canvas", "slip-on", "platform", "sandal", "with", "thick", "sole", "laces"]


def query_texts(count: int) -> list[str]:
    """Shoe descriptions of 3-8 words (a typed query)."""
    rng = np.random.default_rng(5)
    return [" ".join(rng.choice(QUERY_WORDS, size=rng.integers(3, 9))) for _ in range(count)]


def _percentiles(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2)}


def model_case(kind: str, queries: int) -> dict:
    """One query-model case, in this process: `text-fp32` (torch), `text-onnx32`, `text-int8`, `image`."""
    from benchmarks.bench_ingest import CACHE, prepare
    from core.vision.embedder import ClipEmbedder

    paths = prepare(24)
    cache = CACHE / "models"
    if kind.startswith("text-"):
        precision = {"text-fp32": "fp32", "text-onnx32": "auto", "text-int8": "int8"}[kind]
        if kind != "text-fp32":  # auto with the bar out of reach (fp32 export) or always met (int8, measured)
            import core.vision.embedder

            core.vision.embedder.INT8_MIN_COSINE = 2.0 if kind == "text-onnx32" else -1.0
            precision = "auto"
        embedder = ClipEmbedder(paths["clip"], device="cpu", precision="fp32", cache_dir=cache,
                                text_precision=precision)
        started = time.perf_counter()
        embedder.load()
        embedder._text_tower()  # chosen on the first text query: count it as loading
        load_s = time.perf_counter() - started
        texts = query_texts(queries)
        # The test tokenizer reads about a token per character; CLIP's BPE reads a 3-8 word query as
        # ~6-12 tokens: the same queries cut to 8 characters (10 tokens) stand for that.
        short = [t[:8] for t in texts]
        embedder.embed_texts(texts[:3] + short[:3])  # warm-up
        ms, short_ms, vectors = [], [], []
        for text, cut in zip(texts, short):  # as a search runs it: fit to the token limit, then one text
            started = time.perf_counter()
            vectors.append(embedder.embed_texts([text])[0])
            ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            embedder.embed_texts([cut])
            short_ms.append((time.perf_counter() - started) * 1000)
        tokens = [embedder.fit_text(t).tokens for t in texts]
        return {"kind": kind, "runtime": embedder.active_text_precision, "load_s": round(load_s, 1),
                "tokens": round(float(np.mean(tokens)), 1), **_percentiles(ms), "short": _percentiles(short_ms),
                "int8_agreement": embedder.text_agreement, "vectors": np.asarray(vectors).round(6).tolist(),
                "peak_rss_mb": round(peak_rss_mb())}
    from PIL import Image

    from core.search.service import SearchService
    from core.settings import Settings
    from core.vision.detector import YoloDetector

    defaults = Settings(_env_file=None)
    embedder = ClipEmbedder(paths["clip"], device="cpu", precision=defaults.embed_precision, cache_dir=cache)
    detector = YoloDetector(paths["yolo"], defaults.detector_classes, confidence=defaults.detect_confidence,
                            image_size=defaults.detect_image_size, device="cpu", runtime=defaults.detect_runtime,
                            precision=defaults.detect_precision, cache_dir=cache)
    started = time.perf_counter()
    embedder.load()
    detector.load()
    load_s = time.perf_counter() - started
    search = SearchService(None, embedder, detector, crop_margin=defaults.crop_margin)
    photos = sorted(Path(paths["photos"]).rglob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in photos[:max(4, min(queries, len(photos)))]]
    embedder.embed_images([search.query_crops(images[0])[0].image])  # warm-up
    detect_ms, total_ms = [], []
    for img in images:
        started = time.perf_counter()
        crop = search.query_crops(img)[0]
        detected = time.perf_counter()
        embedder.embed_images([crop.image])
        total_ms.append((time.perf_counter() - started) * 1000)
        detect_ms.append((detected - started) * 1000)
    return {"kind": kind, "runtime": f"detector {detector.active_runtime} at {detector.image_size} px, "
                                      f"CLIP image {embedder.active_precision}",
            "load_s": round(load_s, 1), "photos": len(images), "detect": _percentiles(detect_ms),
            **_percentiles(total_ms), "peak_rss_mb": round(peak_rss_mb())}


def models_main(queries: int) -> None:
    print(f"machine: {machine()}")
    print(f"settings: full-size random ViT-B/32 CLIP (its byte-level test tokenizer: about one token per "
          f"character, more tokens than CLIP's BPE gives), {queries} text queries of 3-8 words one at a "
          f"time, photos 640x480, default detector settings; every case in its own process")
    text = {k: run_child("benchmarks.bench_query", "--model-case", k, "--queries", str(queries))
            for k in ("text-fp32", "text-onnx32", "text-int8")}
    exact = np.asarray(text["text-fp32"]["vectors"], dtype=np.float32)
    rows = []
    for kind, r in text.items():
        vectors = np.asarray(r["vectors"], dtype=np.float32)
        cosine = (vectors * exact).sum(axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(exact, axis=1)
        rows.append([f"text query ({kind})", r["runtime"], r["tokens"], r["p50"], r["p95"],
                     f"{text['text-fp32']['p50'] / r['p50']:.1f}x", f"{cosine.min():.5f}", r["load_s"],
                     r["peak_rss_mb"]])
        rows.append([f"text query ({kind}), cut to 10 tokens", r["runtime"], 10, r["short"]["p50"],
                     r["short"]["p95"], f"{text['text-fp32']['short']['p50'] / r['short']['p50']:.1f}x", "-", "-", "-"])
    image = run_child("benchmarks.bench_query", "--model-case", "image", "--queries", str(min(queries, 24)))
    rows.append([f"image query: detect + embed one photo ({image['photos']} photos; detect alone p50 "
                 f"{image['detect']['p50']} ms)", image["runtime"], "-", image["p50"], image["p95"], "-", "-",
                 image["load_s"], image["peak_rss_mb"]])
    print(table(["case", "runtime", "tokens", "p50 ms", "p95 ms", "p50 vs torch fp32", "min cosine to torch fp32",
                 "load s", "peak RSS MB"], rows))
    agreement = text["text-int8"]["int8_agreement"]
    if agreement is not None:
        print(f"int8 text tower vs fp32 on the probe texts (TEXT_PRECISION=auto's bar is 0.999): {agreement:.5f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-max", type=int, default=100_000, help="largest size for qdrant-client local mode")
    parser.add_argument("--case", nargs=2, metavar=("BACKEND", "N"))
    parser.add_argument("--models", action="store_true", help="query model time (text and image) instead")
    parser.add_argument("--model-case")
    args = parser.parse_args()
    if args.model_case:
        print(json.dumps(model_case(args.model_case, args.queries)))
        return
    if args.models:
        models_main(min(args.queries, 100))
        return
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
