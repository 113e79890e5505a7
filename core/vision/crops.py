"""Crop preparation: ONE way from a decoded photo and a detector box to what the embedding model
sees, used by ingest (the index) and by photo queries alike, so that the same photo gives the same
crop pixels and the same vector on both sides.

    photo (decoded, RGB) -> box grown by CROP_MARGIN, clamped -> crop (as photographed: thumbnails,
    the query's region picker) -> background removed when BACKGROUND_REMOVAL is on -> the embedder
    (which cuts an over-long crop to its centre, `centre_within_aspect`, and runs the model)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.vision.images import expand_box, to_rgb

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[int, int, int, int]


def prepare_crop(image: Image.Image, box: Box | None, margin: float) -> tuple[Image.Image, Box | None]:
    """(the crop of `image` at a detector `box` grown by `margin` of its size on each side and
    clamped to the photo, that grown box); `box=None` gives the whole photo (and None)."""
    if image.mode != "RGB":
        image = to_rgb(image)
    if box is None:
        return image, None
    grown = expand_box(box, margin, image.width, image.height)
    return image.crop(grown), grown


def model_inputs(crops: Sequence[Image.Image], background_remover=None) -> list[Image.Image]:
    """What the embedder is handed for `crops`: without their background when a remover is set
    (core.vision.background); the crops themselves stay as photographed."""
    return background_remover.remove(list(crops)) if background_remover is not None else list(crops)


def load_query_photo(path, max_pixels: int, decode_max_side: int | None) -> Image.Image:
    """A query photo decoded exactly as ingest decodes a catalogue photo (same reduction to
    DECODE_MAX_SIDE, JPEG draft scale included), so its crops match the indexed ones."""
    from pathlib import Path

    from core.vision.images import load_photo_scaled

    return load_photo_scaled(Path(path), max_pixels, decode_max_side or None)[0]
