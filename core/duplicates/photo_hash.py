"""Perceptual hashes of crops: the same photo re-encoded, resized or re-compressed, without a model.

A crop's 64-bit pHash (imagehash: DCT of a 32x32 greyscale copy, bits above the median) is stored
in its payload as 16 hex digits (`crop_phash`) at ingest. Two crops whose hashes differ in at
most a few bits are the same picture; it does not depend on the CLIP model, so it survives a
model change. Near pairs are found by pigeonhole: split the 64 bits into d + 1 bands; two hashes
within distance d agree exactly on at least one band, so only hashes sharing a band value are
compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PAYLOAD_KEY = "crop_phash"
MAX_DISTANCE = 15  # more would make the bands too short to narrow anything down


def crop_phash(image: Image.Image) -> str | None:
    """The crop's pHash as 16 hex digits (None if it cannot be computed)."""
    import imagehash

    try:
        return str(imagehash.phash(image.convert("RGB")))
    except (OSError, ValueError):
        return None


def file_phash(path: Path) -> str | None:
    """The pHash of an image file (a crop thumbnail), None if it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            return crop_phash(img)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def as_int(value: str | None) -> int | None:
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, distances) of every pair i < j of 64-bit `hashes` (uint64) within
    `max_distance` bits, exactly."""
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be 0..{MAX_DISTANCE}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    bands = max_distance + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    found: list[np.ndarray] = []
    for low, high in zip(edges[:-1], edges[1:]):
        mask = np.uint64((1 << (high - low)) - 1)
        band = (hashes >> np.uint64(low)) & mask
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_band[1:] != sorted_band[:-1]]))
        stops = np.concatenate([starts[1:], [n]])
        for start, stop in zip(starts, stops):
            if stop - start < 2:
                continue
            members = np.sort(order[start:stop])
            for first in range(0, len(members), 2048):  # bounded memory for a large bucket
                rows = members[first:first + 2048]
                xor = hashes[rows, None] ^ hashes[None, members]
                close = (np.bitwise_count(xor) <= max_distance) & (rows[:, None] < members[None, :])
                r, c = np.nonzero(close)
                if r.size:
                    found.append(rows[r].astype(np.int64) * n + members[c].astype(np.int64))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    keys = np.unique(np.concatenate(found))
    rows, cols = keys // n, keys % n
    return rows, cols, np.bitwise_count(hashes[rows] ^ hashes[cols]).astype(np.int64)
