"""Ingest throughput, end to end (decode + detect + crop + embed + thumbnails + upsert), with a
full-size ViT-B/32 CLIP (random weights: the real compute cost) and a full-size YOLOv8n,
against the older scripts' way (a sequential fp32 loop embedding one photo at a time) on the
same generated photos, in the same run. Also: re-run speed (hashing only), text query model
time, int8/fp32 agreement, peak RSS.

    python -m benchmarks.bench_ingest [--photos 240]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, peak_rss_mb, run_child, table

CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "shoe-search-bench"))


def _offline() -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE / "yolo-config"))


def prepare(photos: int) -> dict[str, str]:
    """Full-size random models and generated photos, built once and cached."""
    _offline()
    from core.sample_catalogue import make_catalogue
    from tests.tiny_models import build_tiny_clip, build_tiny_yolo

    clip = CACHE / "clip-vit-b32-random"
    if not (clip / "config.json").exists():
        build_tiny_clip(clip, full_size=True)
    yolo = CACHE / "yolov8n-footwear-random.pt"
    if not yolo.exists():
        build_tiny_yolo(yolo)
    root = CACHE / f"photos-{photos}"
    if not root.exists():
        per_factory = photos // 4 // 2
        make_catalogue(root, factories=2, products_per_factory=per_factory, variants_per_product=3,
                       size=(640, 480))
    return {"clip": str(clip), "yolo": str(yolo), "photos": str(root)}


def case(kind: str, paths: dict[str, str]) -> dict:
    _offline()
    from core.catalogue import discover

    sources = [s for f in sorted(Path(paths["photos"]).iterdir()) for s in discover(f)]
    if kind == "baseline":
        from PIL import Image
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(paths["clip"], device="cpu")
        model.encode([Image.new("RGB", (64, 64))])
        started = time.perf_counter()
        for source in sources:
            with Image.open(source.path) as img:
                model.encode([img.convert("RGB")], normalize_embeddings=True, show_progress_bar=False)
        seconds = time.perf_counter() - started
        return {"kind": kind, "photos": len(sources), "seconds": seconds, "peak_rss_mb": peak_rss_mb()}

    from core.detector import NoDetector, YoloDetector
    from core.embedder import ClipEmbedder
    from core.ingest_service import IngestService
    from core.store import EdgeStore

    precision, detect = kind.split("-", 1)
    with tempfile.TemporaryDirectory() as tmp:
        embedder = ClipEmbedder(paths["clip"], device="cpu", batch_size=32, precision=precision,
                                cache_dir=CACHE / "models")
        embedder.load()
        detector = NoDetector() if detect == "nodetect" else YoloDetector(
            paths["yolo"], ["Footwear", "Boot", "High heels", "Sandal", "Roller skates"], image_size=int(detect[6:]),
            device="cpu", batch_size=32)
        if hasattr(detector, "load"):
            detector.load()
        store = EdgeStore(Path(tmp) / "edge", "shoes")
        service = IngestService(store, embedder, detector, Path(tmp), batch_size=32)
        by_factory: dict[str, list] = {}
        for s in sources:
            by_factory.setdefault(s.factory, []).append(s)
        started = time.perf_counter()
        reports = [service.add(group, factory) for factory, group in by_factory.items()]
        seconds = time.perf_counter() - started
        added = sum(r.photos_added for r in reports)
        rerun_started = time.perf_counter()
        rerun = [service.add(group, factory) for factory, group in by_factory.items()]
        rerun_seconds = time.perf_counter() - rerun_started
        out = {"kind": kind, "photos": added, "seconds": seconds, "precision": embedder.active_precision,
               "rerun_files_per_s": sum(r.photos_unchanged for r in rerun) / rerun_seconds, "peak_rss_mb": peak_rss_mb()}
        if detect == "nodetect" and precision == "auto":
            import numpy as np
            from PIL import Image

            texts = [time.perf_counter()]
            for k in range(20):
                embedder.embed_texts([f"white leather high-top sneaker {k}"])
                texts.append(time.perf_counter())
            out["text_query_ms_p50"] = float(np.median(np.diff(texts)) * 1000)
            if embedder.active_precision == "int8":
                sample = [Image.open(s.path).convert("RGB") for s in sources[:64]]
                exact = embedder._encode(sample)
                fast = embedder.embed_images(sample)
                out["int8_cosine_min"] = float((exact * fast).sum(axis=1).min())
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--case")
    parser.add_argument("--paths")
    parser.add_argument("--cases", default="baseline,fp32-nodetect,auto-nodetect,auto-detect320,auto-detect640")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, json.loads(args.paths))))
        return
    paths = prepare(args.photos)
    print(f"machine: {machine()}")
    print(f"settings: {args.photos} generated 640x480 photos (JPEG/PNG), CLIP ViT-B/32 shapes with random weights, "
          f"YOLOv8n (random, finds no box: full detection cost, whole-photo crops), batch 32, embedded store; "
          f"model load excluded; every case in its own process")
    results = {k: run_child("benchmarks.bench_ingest", "--case", k, "--paths", json.dumps(paths))
               for k in args.cases.split(",")}
    base = results.get("baseline")
    rows = []
    labels = {"baseline": "baseline: sequential fp32, one photo at a time, no detection",
              "fp32-nodetect": "ours, fp32, detection off", "auto-nodetect": "ours, EMBED_PRECISION=auto, detection off",
              "auto-detect320": "ours, auto, YOLO at 320", "auto-detect640": "ours, auto, YOLO at 640"}
    for kind, r in results.items():
        rate = r["photos"] / r["seconds"]
        rows.append([labels.get(kind, kind), r.get("precision", "fp32"), f"{rate:.1f}",
                     f"{rate / (base['photos'] / base['seconds']):.2f}x" if base else "-",
                     f"{r['rerun_files_per_s']:.0f}" if "rerun_files_per_s" in r else "-", f"{r['peak_rss_mb']:.0f}"])
    print(table(["pipeline", "image precision", "photos/s", "vs baseline", "re-run files/s", "peak RSS MB"], rows))
    extra = results.get("auto-nodetect", {})
    if "text_query_ms_p50" in extra:
        print(f"\ntext query, model time (p50 of 20): {extra['text_query_ms_p50']:.1f} ms")
    if "int8_cosine_min" in extra:
        print(f"int8 vs fp32 image embeddings on 64 of these photos: min cosine {extra['int8_cosine_min']:.5f}")


if __name__ == "__main__":
    main()
