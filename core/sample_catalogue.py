"""Generated shoe catalogues: photos of drawn shoes with known products and variants.

Used by the demo (`make run`), the tests and the benchmarks: real JPEG/PNG files on disk
with a ground truth (which photos show the same shoe), no download needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

COLOURS = {
    "white": (236, 236, 232), "black": (28, 28, 30), "red": (190, 30, 40), "blue": (40, 70, 170),
    "brown": (120, 72, 40), "tan": (200, 160, 110), "green": (50, 120, 60), "pink": (230, 150, 170),
    "grey": (128, 128, 130), "yellow": (230, 200, 40),
}
STYLES = ("sneaker", "high-top", "boot", "heel", "sandal")


@dataclass(frozen=True)
class ShoeDesign:
    """What a product looks like; the same design may be sold by several factories."""

    style: str
    upper: str
    sole: str
    accent: str
    seed: int

    @property
    def description(self) -> str:
        return f"{self.upper} {self.style} with {self.sole} sole and {self.accent} accents"


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


def random_design(rng: random.Random) -> ShoeDesign:
    names = list(COLOURS)
    return ShoeDesign(rng.choice(STYLES), rng.choice(names), rng.choice(names), rng.choice(names), rng.randrange(1 << 30))


def draw_shoe(design: ShoeDesign, size: tuple[int, int] = (320, 240), background: str = "plain",
              seed: int = 0) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A shoe drawn on a background; returns the image and the shoe's box."""
    rng = random.Random(seed)
    width, height = size
    img = Image.new("RGB", size, _background_colour(background, rng))
    draw = ImageDraw.Draw(img)
    if background == "stripes":
        for x in range(0, width, 24):
            draw.rectangle([x, 0, x + 11, height], fill=tuple(min(255, c + 25) for c in img.getpixel((0, 0))))
    elif background == "noise":
        for _ in range(400):
            x, y = rng.randrange(width), rng.randrange(height)
            draw.point((x, y), fill=(rng.randrange(256),) * 3)
    w = int(width * rng.uniform(0.55, 0.7))
    h = int(height * (0.55 if design.style in {"boot", "high-top"} else 0.38))
    x1 = rng.randrange(int(width * 0.05), max(int(width * 0.05) + 1, width - w - int(width * 0.05)))
    y2 = height - rng.randrange(int(height * 0.08), int(height * 0.2))
    y1 = y2 - h
    upper, sole, accent = COLOURS[design.upper], COLOURS[design.sole], COLOURS[design.accent]
    sole_h = max(4, h // 6 if design.style != "heel" else h // 10)
    draw.rounded_rectangle([x1, y2 - sole_h, x1 + w, y2], radius=sole_h // 2, fill=sole)
    if design.style == "heel":
        draw.rectangle([x1 + w - w // 6, y2 - h // 2, x1 + w - w // 10, y2], fill=sole)
        draw.polygon([(x1, y2 - sole_h), (x1 + w // 2, y2 - h // 3), (x1 + w - w // 10, y1), (x1 + w, y1 + h // 5),
                      (x1 + w, y2 - sole_h)], fill=upper)
    elif design.style == "sandal":
        for k in range(3):
            sx = x1 + w // 6 + k * w // 4
            draw.rectangle([sx, y1 + h // 3, sx + w // 10, y2 - sole_h], fill=upper)
        draw.line([x1 + w // 8, y1 + h // 2, x1 + w - w // 8, y1 + h // 2], fill=accent, width=max(2, h // 12))
    else:
        top = y1 if design.style in {"boot", "high-top"} else y1 + h // 8
        draw.polygon([(x1, y2 - sole_h), (x1 + w // 8, y1 + h // 2), (x1 + w // 2, y1 + h // 2),
                      (x1 + w - w // 3, top), (x1 + w, top), (x1 + w, y2 - sole_h)], fill=upper)
        for k in range(3):  # laces / stripes
            lx = x1 + w // 3 + k * w // 10
            draw.line([lx, y1 + h // 2 + 4, lx + w // 12, y2 - sole_h - 4], fill=accent, width=max(2, w // 40))
    return img, (x1, y1, x1 + w, y2)


def _background_colour(kind: str, rng: random.Random) -> tuple[int, int, int]:
    if kind == "plain":
        return (245, 245, 245)
    return tuple(rng.randrange(90, 220) for _ in range(3))  # type: ignore[return-value]


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
