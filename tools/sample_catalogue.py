"""Generated shoe catalogues: photos of drawn shoes with known products and variants.

Used by the demo (`make run`), the tests and the benchmarks: real JPEG/PNG files on disk
with a ground truth (which photos show the same shoe), no download needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from core.vision.drawn_shoes import COLOURS, STYLES, ShoeDesign, draw_shoe, random_design  # noqa: F401

@dataclass
class SamplePhoto:
    path: Path
    factory: str
    product_id: str
    design: ShoeDesign
    variant: str
    box: tuple[int, int, int, int]  # where the shoe is, in the saved photo


@dataclass
class SampleCatalogue:
    root: Path
    photos: list[SamplePhoto] = field(default_factory=list)

    def factory_dir(self, factory: str) -> Path:
        return self.root / factory


def variant(img: Image.Image, box: tuple[int, int, int, int], kind: str, rng: random.Random):
    """A near-duplicate of a photo: resized, re-cropped, mirrored, brighter. Returns (image, box)."""
    x1, y1, x2, y2 = box
    if kind == "resized":
        scale = rng.uniform(0.6, 0.8)
        out = img.resize((int(img.width * scale), int(img.height * scale)))
        return out, tuple(int(v * scale) for v in box)
    if kind == "cropped":
        left, top = min(x1, rng.randrange(5, 30)), min(y1, rng.randrange(5, 20))
        out = img.crop((left, top, img.width - min(img.width - x2, 10), img.height))
        return out, (x1 - left, y1 - top, x2 - left, y2 - top)
    if kind == "mirrored":
        return ImageOps.mirror(img), (img.width - x2, y1, img.width - x1, y2)
    if kind == "brighter":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(1.15, 1.3)), box
    return img, box


def make_catalogue(root: Path, factories: int = 3, products_per_factory: int = 6, variants_per_product: int = 2,
                   shared_products: int = 2, product_folders: bool = True, seed: int = 7,
                   size: tuple[int, int] = (320, 240)) -> SampleCatalogue:
    """Write a catalogue under `root`: one folder per factory, photos per product.

    `shared_products` designs are sold by every factory under its own SKU (cross-factory
    duplicates). Each product has one 'front' photo plus `variants_per_product` near-duplicates.
    """
    rng = random.Random(seed)
    root = Path(root)
    catalogue = SampleCatalogue(root)
    shared = [random_design(rng) for _ in range(shared_products)]
    kinds = ["resized", "cropped", "mirrored", "brighter"]
    for f in range(factories):
        factory = f"factory_{chr(ord('a') + f)}"
        designs = shared + [random_design(rng) for _ in range(products_per_factory - len(shared))]
        for p, design in enumerate(designs):
            sku = f"{factory[-1].upper()}{100 + p}"
            background = rng.choice(["plain", "plain", "tinted", "stripes", "noise"])
            img, box = draw_shoe(design, size, background, seed=design.seed + f)
            shots = [("front", img, box)]
            for v in range(variants_per_product):
                kind = kinds[(p + v) % len(kinds)]
                out, out_box = variant(img, box, kind, rng)
                shots.append((kind, out, out_box))
            for name, shot, shot_box in shots:
                ext = ".png" if name == "mirrored" else ".jpg"
                path = (root / factory / sku / f"{name}{ext}") if product_folders else (root / factory / f"{sku}_{name}{ext}")
                path.parent.mkdir(parents=True, exist_ok=True)
                shot.save(path, quality=rng.randrange(80, 95)) if ext == ".jpg" else shot.save(path)
                catalogue.photos.append(SamplePhoto(path, factory, sku, design, name, shot_box))
    return catalogue


def main() -> None:
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "sample_catalogue")
    catalogue = make_catalogue(root)
    print(f"wrote {len(catalogue.photos)} photos of {len({p.product_id for p in catalogue.photos})} products under {root}/")


if __name__ == "__main__":
    main()
