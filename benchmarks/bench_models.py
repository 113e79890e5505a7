"""Which CLIP? Size, dimension and CPU speed of the OpenAI shapes CLIP_MODEL can be: ViT-B/32
(clip-ViT-B-32, patrickjohncyh/fashion-clip), ViT-B/16 (clip-ViT-B-16), ViT-L/14 at 224 px
(clip-ViT-L-14).

No weights can be downloaded here: each model is built with random weights from the published
config.json values (openai/clip-vit-base-patch32, -base-patch16, -large-patch14; the compute and
the size on disk are those of the real model, the vectors mean nothing), saved as a plain
transformers CLIPModel checkpoint and loaded through the app's own ClipEmbedder.

    python -m benchmarks.bench_models [--int8] [--images 32] [--large-images 8]

Prints the machine (CPU flags, threads), the date and the load average, then per model:
parameters, size on disk, dimension, images/s (photos 640x480 through the whole embedder path:
preprocessing + image tower, batch 32; fewer for L/14, which is slow), and the median ms of one
text query.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

from benchmarks.bench_ingest import CACHE, _offline
from benchmarks.common import machine, table

# Published config.json values (hidden sizes, layers, heads, MLP width, patch, projection).
# B/32 and B/16 are transformers' CLIPConfig defaults but for the patch size; the vocabulary is
# CLIP's 49,408 BPE tokens (it sets the size of the text embedding table).
TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
VISION_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224)
SHAPES = {
    "ViT-B/32": dict(text=TEXT_B, vision=dict(VISION_B, patch_size=32), projection_dim=512),
    "ViT-B/16": dict(text=TEXT_B, vision=dict(VISION_B, patch_size=16), projection_dim=512),
    "ViT-L/14": dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=224, patch_size=14),
                     projection_dim=768),
}
VOCAB = 49408


def build(name: str, directory: Path) -> Path:
    """A random-init CLIPModel of `name`'s published shape, with a tokenizer and CLIP's processor."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.tiny_models import build_tiny_clip

    build_tiny_clip(directory)  # only for its byte-level tokenizer files; the model is replaced below
    processor = CLIPProcessor.from_pretrained(directory)
    tokenizer = processor.tokenizer
    shape = SHAPES[name]
    text = dict(shape["text"], vocab_size=VOCAB, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=shape["vision"],
                                 projection_dim=shape["projection_dim"]))
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def _disk_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6


def measure(name: str, directory: Path, images: int, precision: str, batch: int) -> dict:
    from PIL import Image

    from core.vision.embedder import ClipEmbedder
    from tools.sample_catalogue import make_catalogue

    photos_dir = CACHE / "photos-bench-models"
    if not photos_dir.exists():
        make_catalogue(photos_dir, factories=1, products_per_factory=8, variants_per_product=3, size=(640, 480))
    paths = sorted(p for p in photos_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:images]
    photos = [Image.open(p).convert("RGB") for p in paths]
    embedder = ClipEmbedder(str(directory), device="cpu", batch_size=batch, precision=precision,
                            cache_dir=CACHE / "models")
    started = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - started
    params = sum(p.numel() for p in embedder._model[0].auto_model.parameters())
    embedder.embed_images(photos[:2])  # warm-up
    started = time.perf_counter()
    vectors = embedder.embed_images(photos)
    image_s = time.perf_counter() - started
    embedder.embed_texts(["warm up"])
    runs = []
    for query in ("black leather ankle boot", "red suede sandal with a block heel", "white sneaker",
                  "brown loafer", "silver high heels", "kids rain boots", "hiking boot", "espadrille"):
        started = time.perf_counter()
        embedder.embed_texts([query])
        runs.append(time.perf_counter() - started)
    return {"model": name, "params_m": params / 1e6, "disk_mb": _disk_mb(directory), "dimension": vectors.shape[1],
            "precision": embedder.active_precision, "images": len(photos), "img_per_s": len(photos) / image_s,
            "text_ms": statistics.median(runs) * 1000, "load_s": load_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photos per model (one batch of 32)")
    parser.add_argument("--large-images", type=int, default=8, help="photos for ViT-L/14 (slow on a CPU)")
    parser.add_argument("--int8", action="store_true", help="also measure the int8 ONNX image tower")
    parser.add_argument("--models", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    args = parser.parse_args()
    _offline()
    print(f"machine: {machine()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"load average at start (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    rows = []
    for name in args.models.split(","):
        directory = build(name, CACHE / f"clip-{name.replace('/', '').lower()}-published-shape-random")
        count = args.large_images if name == "ViT-L/14" else args.images
        for precision in ("fp32", "int8") if args.int8 else ("fp32",):
            result = measure(name, directory, count, precision, batch=count)
            rows.append([name, f"{result['params_m']:.0f}M", f"{result['disk_mb']:.0f} MB", str(result["dimension"]),
                         result["precision"], str(result["images"]), f"{result['img_per_s']:.1f}",
                         f"{result['text_ms']:.0f}", f"{result['load_s']:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    print(f"load average at end (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(["model", "parameters", "on disk (fp32)", "dim", "precision", "photos", "images/s",
                 "text query ms", "load s"], rows))


if __name__ == "__main__":
    main()
