"""Deterministic point ids: the same crop of the same bytes in a factory is always one point."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("5b0e7c4e-3f6a-4a52-9c1e-7d1f0a6b2c11")


def point_id(factory: str, photo_sha256: str, crop_index: int) -> str:
    """uuid5 of factory + photo content hash + crop index.

    Not the path: a moved or renamed photo keeps its ids, so it is updated, not duplicated.
    """
    return str(uuid.uuid5(_NAMESPACE, f"{factory}\x1f{photo_sha256}\x1f{crop_index}"))
