"""Drawn shoe photos (no files, no download): the probe images on which a faster runtime
(int8, ONNX Runtime) is checked against fp32 before it is used, and the drawing behind the sample
catalogue (tools/sample_catalogue.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

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


def probe_photos(count: int = 8, size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    """`count` drawn shoes on the four backgrounds, the same every time."""
    rng = random.Random(0)
    backgrounds = ["plain", "tinted", "stripes", "noise"]
    return [draw_shoe(random_design(rng), size, backgrounds[k % 4], seed=k)[0] for k in range(count)]
