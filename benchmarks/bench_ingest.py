"""Ingest throughput, end to end (hash, decode, detect, crop, embed, thumbnails, upsert), with a
full-size ViT-B/32 CLIP and a YOLOv8n of the real `yolov8n-oiv7.pt` shape (601 classes), both
with random weights (the real compute cost), against

- the older scripts' way (a sequential fp32 loop embedding one photo at a time), and
- the models' own ceiling, measured in the same process just before and after each ingest: the CLIP image
  tower alone and the detector alone on ready tensors, as they run inside the pipeline (same
  runtime, precision, batch), on the same photos; both per photo = 1 / (1/clip + 1/detector).

Every case runs in its own process. Also: re-run speed (hashing only), where the time outside
the models goes (ms per photo), the accuracy guards, peak RSS.

    python -m benchmarks.bench_ingest [--photos 240] [--cases baseline,auto-nodetect,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, peak_rss_mb, run_child, table

CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "shoe-search-bench"))
FOOTWEAR = ["Footwear", "Boot", "High heels", "Sandal", "Roller skates"]
# Photos of the same-process sequential baseline, measured just before and just after each ingest.
BASELINE_PHOTOS = int(os.environ.get("BENCH_BASELINE_PHOTOS", 32))
DEFAULT_CASES = ("baseline,fp32-nodetect,auto-nodetect,auto-onnx320,auto-onnx480,auto-onnx640,auto-torch320,"
                 "auto-torch640")


def _offline() -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE / "yolo-config"))


def build_oiv7_shaped_yolo(path: Path) -> Path:
    """YOLOv8n with the 601-class head of `yolov8n-oiv7.pt` (Open Images V7 names), random weights:
    built by ultralytics from its yolov8n.yaml with nc=601."""
    import yaml
    from ultralytics import YOLO
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
    names = yaml.safe_load((ROOT / "cfg" / "datasets" / "open-images-v7.yaml").read_text())["names"]
    cfg["nc"] = len(names)
    assert cfg["nc"] == 601 and all(n in names.values() for n in FOOTWEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = path.with_name("yolov8n-oiv7-random.yaml")  # the "n" in the name picks the nano scale
    cfg_path.write_text(yaml.safe_dump(cfg))
    model = YOLO(str(cfg_path))
    model.model.names = {int(k): v for k, v in names.items()}
    model.save(str(path))
    return path


def prepare(photos: int) -> dict[str, str]:
    """Full-size random models and generated photos, built once and cached."""
    _offline()
    from tests.tiny_models import build_tiny_clip
    from tools.sample_catalogue import make_catalogue

    clip = CACHE / "clip-vit-b32-random"
    if not (clip / "config.json").exists():
        build_tiny_clip(clip, full_size=True)
    yolo = CACHE / "yolov8n-oiv7-shape-random.pt"
    if not yolo.exists():
        build_oiv7_shaped_yolo(yolo)
    root = CACHE / f"photos-{photos}"
    if not root.exists():
        per_factory = photos // 4 // 2
        make_catalogue(root, factories=2, products_per_factory=per_factory, variants_per_product=3,
                       size=(640, 480))
    return {"clip": str(clip), "yolo": str(yolo), "photos": str(root)}


def _rate(seconds: float, count: int) -> float:
    return count / seconds if seconds > 0 else float("inf")


def clip_alone(embedder, images: list) -> float:
    """Images/s of the CLIP image tower alone on ready pixel tensors, batches of the pipeline's size."""
    import numpy as np

    embedder.load()
    module = embedder._model[0]
    processor = getattr(module.processor, "image_processor", module.processor)
    pixels = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    batch = embedder.batch_size
    session = getattr(embedder._images, "session", None)  # the ONNX Runtime image tower (int8), if chosen
    if session is not None:
        session.run(None, {"pixel_values": pixels[:2]})
        started = time.perf_counter()
        for start in range(0, len(pixels), batch):
            session.run(None, {"pixel_values": pixels[start:start + batch]})
        return _rate(time.perf_counter() - started, len(pixels))
    import torch

    clip = module.auto_model
    with torch.inference_mode():
        clip.get_image_features(pixel_values=torch.from_numpy(pixels[:2]))
        started = time.perf_counter()
        for start in range(0, len(pixels), batch):
            clip.get_image_features(pixel_values=torch.from_numpy(pixels[start:start + batch]))
        return _rate(time.perf_counter() - started, len(pixels))


def _by_shape(tensors: list, batch: int) -> list:
    """Runs of at most `batch` same-shape tensors, as the detectors group photos."""
    groups: dict[tuple, list] = {}
    for tensor in tensors:
        groups.setdefault(tensor.shape, []).append(tensor)
    return [group[start:start + batch] for group in groups.values() for start in range(0, len(group), batch)]


def detector_alone(detector, images: list) -> float:
    """Images/s of the detection model alone on ready letterboxed tensors, as the pipeline runs it."""
    import numpy as np

    from core.vision import onnx_yolo

    detector.load()
    if detector._onnx is not None:
        model = detector._onnx
        size = model.input_size(detector.image_size)
        tensors = [onnx_yolo.letterbox(np.asarray(img), size, model.stride) for img in images]
        model.run(np.stack(tensors[:1]))
        started = time.perf_counter()
        for run in _by_shape(tensors, onnx_yolo.RUN_BATCH):
            model.run(np.stack(run))
        return _rate(time.perf_counter() - started, len(tensors))
    import torch

    if detector._yolo.predictor is None:
        detector.detect(images[:1])  # ultralytics builds its predictor on the first call
    backend = detector._yolo.predictor.model  # ultralytics' AutoBackend, fused, as predict uses it
    size = max(-(-detector.image_size // 32) * 32, 32)
    tensors = [onnx_yolo.letterbox(np.asarray(img), size, 32) for img in images]
    with torch.inference_mode():
        backend(torch.from_numpy(np.stack(tensors[:1])).permute(0, 3, 1, 2).float() / 255)
        started = time.perf_counter()
        for run in _by_shape(tensors, detector.batch_size):
            backend(torch.from_numpy(np.stack(run)).permute(0, 3, 1, 2).float() / 255)
        return _rate(time.perf_counter() - started, len(tensors))


def sequential_fp32(embedder, sources: list) -> float:
    """Photos/s of the older scripts' loop in this process: open each photo, embed it alone through
    sentence-transformers in fp32 (torch), no detection. The embedder's own fp32 model is used, so
    the baseline is measured beside our pipeline, under the same load."""
    from PIL import Image

    embedder.load()
    model = embedder._model
    model.encode([Image.new("RGB", (64, 64))], show_progress_bar=False)
    started = time.perf_counter()
    for source in sources:
        with Image.open(source.path) as img:
            model.encode([img.convert("RGB")], normalize_embeddings=True, show_progress_bar=False)
    return _rate(time.perf_counter() - started, len(sources))


def models_alone(embedder, detector, images: list) -> dict:
    """CLIP alone, detector alone (img/s) and both per photo: 1 / (1/clip + 1/detector)."""
    clip = clip_alone(embedder, images)
    found = detector_alone(detector, images) if detector is not None else None
    return {"clip": clip, "detector": found, "ceiling": 1 / (1 / clip + (1 / found if found else 0))}


def outside_models(embedder, detector, sources: list, images: list, tmp: Path) -> dict:
    """Milliseconds per photo of the work around the models (each step alone, one thread)."""
    import numpy as np

    from core.vision import onnx_yolo
    from core.vision.images import file_sha256, load_photo_scaled, save_thumbnail

    count = len(sources)
    steps = {}
    started = time.perf_counter()
    for source in sources:
        file_sha256(source.path)
    steps["hash"] = time.perf_counter() - started
    started = time.perf_counter()
    for source in sources:
        load_photo_scaled(source.path, 80_000_000, 1600)
    steps["decode"] = time.perf_counter() - started
    module = embedder._model[0]
    processor = getattr(module.processor, "image_processor", module.processor)
    started = time.perf_counter()
    for start in range(0, count, embedder.batch_size):
        processor(images=images[start:start + embedder.batch_size], return_tensors="np")
    steps["CLIP preprocessing"] = time.perf_counter() - started
    if detector is not None:
        started = time.perf_counter()
        for img in images:
            onnx_yolo.letterbox(np.asarray(img), detector.image_size)
        steps["letterbox"] = time.perf_counter() - started
    started = time.perf_counter()
    for k, img in enumerate(images):
        save_thumbnail(img, tmp / "thumbs" / f"{k}.jpg", 256)
    steps["thumbnail"] = time.perf_counter() - started
    return {name: seconds / count * 1000 for name, seconds in steps.items()}


def case(kind: str, paths: dict[str, str]) -> dict:
    _offline()
    from core.catalogue.folders import discover

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

    from PIL import Image

    from core.pipeline.ingest import IngestService
    from core.store.edge import EdgeStore
    from core.vision.detector import NoDetector, YoloDetector
    from core.vision.embedder import ClipEmbedder

    precision, detect = kind.split("-", 1)
    with tempfile.TemporaryDirectory() as tmp:
        embedder = ClipEmbedder(paths["clip"], device="cpu", batch_size=32, precision=precision,
                                cache_dir=CACHE / "models")
        if detect == "nodetect":
            detector = NoDetector()
        else:
            runtime, size = detect[:-3], int(detect[-3:])
            detector = YoloDetector(paths["yolo"], FOOTWEAR, image_size=size, device="cpu", batch_size=32,
                                    runtime=runtime, precision="auto", cache_dir=CACHE / "models")
            detector.load()  # first, as in the CLI (ingest detects before it embeds)
        embedder.load()
        # The models alone on the same photos (decoded as ingest decodes them), just before and just
        # after the ingest: the mean is the ceiling, the two apart show how much the machine drifted.
        from core.vision.images import load_photo_scaled

        images = [load_photo_scaled(s.path, 80_000_000, 1600)[0] for s in sources]
        baseline_sample = sources[:BASELINE_PHOTOS]
        baseline_before = sequential_fp32(embedder, baseline_sample)
        before = models_alone(embedder, detector if detect != "nodetect" else None, images)
        store = EdgeStore(Path(tmp) / "edge", "shoes")
        service = IngestService(store, embedder, detector, Path(tmp), batch_size=32)
        by_factory: dict[str, list] = {}
        for s in sources:
            by_factory.setdefault(s.factory, []).append(s)
        started = time.perf_counter()
        reports = [service.add(group, factory) for factory, group in by_factory.items()]
        seconds = time.perf_counter() - started
        added = sum(r.photos_added for r in reports)
        crops = sum(r.crops_added for r in reports)
        rerun_started = time.perf_counter()
        rerun = [service.add(group, factory) for factory, group in by_factory.items()]
        rerun_seconds = time.perf_counter() - rerun_started
        out = {"kind": kind, "photos": added, "crops": crops, "seconds": seconds,
               "precision": embedder.active_precision,
               "runtime": getattr(detector, "active_runtime", "-") or "-",
               "rerun_files_per_s": sum(r.photos_unchanged for r in rerun) / rerun_seconds}
        after = models_alone(embedder, detector if detect != "nodetect" else None, images)
        baseline_after = sequential_fp32(embedder, baseline_sample)
        out["baseline"] = (baseline_before + baseline_after) / 2
        out["baseline_before_after"] = [baseline_before, baseline_after]
        out["load"] = os.getloadavg()[0]
        out["clip_alone"] = (before["clip"] + after["clip"]) / 2
        out["detector_alone"] = (before["detector"] + after["detector"]) / 2 if detect != "nodetect" else None
        out["ceiling"] = (before["ceiling"] + after["ceiling"]) / 2
        out["ceiling_before_after"] = [before["ceiling"], after["ceiling"]]
        out["outside_ms"] = outside_models(embedder, detector if detect != "nodetect" else None, sources, images,
                                           Path(tmp))
        out["yolo_int8_agreement"] = getattr(detector, "int8_agreement", None)
        out["peak_rss_mb"] = peak_rss_mb()
        if detect == "nodetect" and precision == "auto":
            import numpy as np

            texts = [time.perf_counter()]
            for k in range(20):
                embedder.embed_texts([f"white leather high-top sneaker {k}"])
                texts.append(time.perf_counter())
            out["text_query_ms_p50"] = float(np.median(np.diff(texts)) * 1000)
        if detect == "nodetect" and precision == "auto" and embedder.active_precision == "int8":
            sample = [Image.open(s.path).convert("RGB") for s in sources[:64]]
            exact = embedder._encode(sample)
            fast = embedder.embed_images(sample)
            out["int8_cosine_min"] = float((exact * fast).sum(axis=1).min())
        store.close()
    return out


LABELS = {
    "baseline": "baseline: sequential fp32, one photo at a time, no detection",
    "fp32-nodetect": "ours, fp32, detection off",
    "auto-nodetect": "ours, EMBED_PRECISION=auto, detection off",
}


def label(kind: str) -> str:
    if kind in LABELS:
        return LABELS[kind]
    precision, detect = kind.split("-", 1)
    return f"ours, {precision}, YOLO {detect[:-3]} at {detect[-3:]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--case")
    parser.add_argument("--paths")
    parser.add_argument("--cases", default=DEFAULT_CASES)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, json.loads(args.paths))))
        return
    paths = prepare(args.photos)
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"settings: {args.photos} generated 640x480 photos (JPEG/PNG), CLIP ViT-B/32 shapes with random weights, "
          f"YOLOv8n with the 601-class head of yolov8n-oiv7.pt (random: finds no box, so full detection cost "
          f"and one whole-photo crop per photo), batch 32, embedded store; model load excluded; every case in "
          f"its own process; ceiling = the models alone on ready tensors, measured in the same process")
    results = {}
    for kind in args.cases.split(","):
        try:
            results[kind] = run_child("benchmarks.bench_ingest", "--case", kind, "--paths", json.dumps(paths))
        except subprocess.CalledProcessError as exc:  # report it, keep the other cases
            print(f"case {kind} failed: {(exc.stderr or '').strip().splitlines()[-1:]}")
    base = results.get("baseline")
    base_rate = base["photos"] / base["seconds"] if base else None
    rows = []
    for kind, r in results.items():
        rate = r["photos"] / r["seconds"]
        ceiling = r.get("ceiling")
        same_run = r.get("baseline")
        rows.append([
            label(kind), r.get("precision", "fp32"), r.get("runtime", "-"), f"{rate:.1f}",
            f"{same_run:.1f} ({r['baseline_before_after'][0]:.1f}/{r['baseline_before_after'][1]:.1f})"
            if same_run else "-",
            f"**{rate / same_run:.2f}x**" if same_run else "-",
            f"{rate / base_rate:.2f}x" if base_rate else "-",
            f"{r['clip_alone']:.1f}" if "clip_alone" in r else "-",
            f"{r['detector_alone']:.1f}" if r.get("detector_alone") else "-",
            f"{ceiling:.1f} ({r['ceiling_before_after'][0]:.1f}/{r['ceiling_before_after'][1]:.1f})"
            if ceiling else "-",
            f"**{rate / ceiling:.2f}**" if ceiling else "-",
            f"{r['rerun_files_per_s']:.0f}" if "rerun_files_per_s" in r else "-", f"{r['peak_rss_mb']:.0f}"])
    print(table(["pipeline", "CLIP", "detector", "photos/s", "baseline photos/s, same process (before/after)",
                 "vs same-process baseline", "vs baseline case", "CLIP alone img/s",
                 "detector alone img/s", "ceiling photos/s (before/after)", "of ceiling", "re-run files/s", "peak RSS MB"], rows))
    print(f"baseline: the older scripts' loop (open a photo, embed it alone, fp32 torch, no detection) on "
          f"{BASELINE_PHOTOS} photos, in each case's process just before and after its ingest; 'baseline case' "
          f"= the same loop on all photos in its own process")
    from core.settings import Settings

    size = Settings.model_fields["detect_image_size"].default
    default = results.get(f"auto-onnx{size}")
    if default and default.get("baseline"):
        rate = default["photos"] / default["seconds"]
        print(f"ours with detection on (defaults: YOLO ONNX at {size}) / same-process sequential fp32 "
              f"baseline: {rate / default['baseline']:.2f}x (target >= 3x)")
    for kind, r in results.items():
        if r.get("ceiling"):
            print(f"{label(kind)}: {r['photos'] / r['seconds'] / r['ceiling']:.2f} of the models' ceiling "
                  f"(target >= 0.85), load average {r.get('load', float('nan')):.1f} at its end")
    outside = [(kind, r["outside_ms"]) for kind, r in results.items() if "outside_ms" in r]
    if outside:
        steps = sorted({step for _, ms in outside for step in ms}, key=lambda s: list(outside[0][1]).index(s)
                       if s in outside[0][1] else 99)
        print("\nwork around the models, ms per photo (each step alone, one thread; overlapped in the pipeline):")
        print(table(["pipeline", *steps, "sum", "models per photo"],
                    [[label(kind), *(f"{ms[s]:.1f}" if s in ms else "-" for s in steps), f"{sum(ms.values()):.1f}",
                      f"{1000 / results[kind]['ceiling']:.1f}"] for kind, ms in outside]))
    extra = results.get("auto-nodetect", {})
    if "text_query_ms_p50" in extra:
        print(f"\ntext query, model time (p50 of 20): {extra['text_query_ms_p50']:.1f} ms")
    if "int8_cosine_min" in extra:
        print(f"\nguard, CLIP int8 vs fp32 image embeddings on 64 of these photos: min cosine "
              f"{extra['int8_cosine_min']:.5f} (auto keeps fp32 below 0.999)")
    for kind, r in results.items():
        agreement = r.get("yolo_int8_agreement")
        if agreement:
            print(f"guard, {label(kind)}: YOLO int8 vs fp32 on {agreement['boxes']} probe boxes: min IoU "
                  f"{agreement['min_iou']:.3f}, same class {agreement['class_agreement']:.3f}, max confidence "
                  f"difference {agreement['max_score_diff']:.3f}; int8 {agreement['int8_seconds']:.2f} s vs fp32 "
                  f"{agreement['fp32_seconds']:.2f} s on the probe batch -> {r['runtime']}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
