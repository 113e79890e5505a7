"""A deterministic split of a folder's photos into N parts, for N ingest workers.

A photo belongs to part `1 + h mod N`, `h` being a stable hash (sha256) of its path relative
to the folder given to `ingest add`: every worker, on any machine where the folder is mounted
anywhere, computes the same split without talking to the others, and together the parts are
the whole folder, each photo in exactly one. Point ids are deterministic and upserts
idempotent, so the parts written into one Qdrant server equal one run over the whole folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from core.errors import ShoeSearchError


def parse_part(text: str) -> tuple[int, int]:
    """`"i/N"` as (i, N) with 1 <= i <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ShoeSearchError(f"{text!r}: write it as I/N, e.g. 1/4 (this worker's part I of N parts)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise ShoeSearchError(f"{text}: I must be between 1 and N ({count})")
    return index, count


def part_of(path: Path, root: Path, count: int) -> int:
    """The part (1..count) `path` belongs to, from its path relative to `root` (a folder, or a photo)."""
    base = root if root.is_dir() else root.parent
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    key = os.fsencode(Path(relative).as_posix())  # bytes: names that are not UTF-8 hash too
    return 1 + int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % count
