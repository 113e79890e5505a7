"""Plain data passed between the services, the CLI and the UI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from collections.abc import Mapping
from typing import Any


@dataclass(frozen=True)
class PhotoSource:
    """One photo file to ingest, with the catalogue facts known before decoding it."""

    path: Path
    factory: str
    product_id: str
    extras: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CropPayload:
    """The payload ingest computes for one stored crop (`core.pipeline.ingest` builds it from
    this class). A manifest's extra columns go beside it and may not use these names."""

    factory: str
    product_id: str
    photo_path: str
    photo_sha256: str
    crop_index: int
    box: list[int] | None  # x1, y1, x2, y2 in the upright photo's original pixels; None = whole photo
    detector_class: str | None
    detector_confidence: float | None
    width: int
    height: int
    photo_width: int
    photo_height: int
    crop_path: str
    model: str
    background: str | None
    ingested_at: str
    crop_phash: str | None = None  # 64-bit perceptual hash, 16 hex digits (core.duplicates.photo_hash)

    def to_payload(self, extras: dict[str, str]) -> dict[str, Any]:
        """Extras first, computed fields last: a computed field always wins."""
        return {**extras, **asdict(self)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CropPayload:
        """The computed fields of a stored payload, typed. A key missing (a point indexed by an
        older version, a partial payload) reads as empty: "" for text, 0 for sizes and the crop
        index, None for the optional fields."""
        get = payload.get
        return cls(**{name: str(get(name) or "") for name in _TEXT_FIELDS},
                   **{name: int(get(name) or 0) for name in _INT_FIELDS},
                   **{name: get(name) for name in _OPTIONAL_FIELDS})

    @property
    def product(self) -> str:
        """'factory/product_id': a product, whatever factory shares its id."""
        return f"{self.factory}/{self.product_id}"

    @property
    def photo(self) -> str:
        """'factory/sha256' (the path for a point without a content hash): one photo of a factory."""
        return f"{self.factory}/{self.photo_sha256 or self.photo_path}"


_TEXT_FIELDS = ("factory", "product_id", "photo_path", "photo_sha256", "crop_path", "model", "ingested_at")
_INT_FIELDS = ("crop_index", "width", "height", "photo_width", "photo_height")


COMPUTED_PAYLOAD_KEYS: tuple[str, ...] = tuple(f.name for f in fields(CropPayload))
# box, detector_class, detector_confidence, background, crop_phash: None when missing
_OPTIONAL_FIELDS = tuple(name for name in COMPUTED_PAYLOAD_KEYS if name not in _TEXT_FIELDS + _INT_FIELDS)
# `ingest cluster` writes group ids under keys starting with this (core.duplicates.service).
GROUP_KEY_PREFIX = "group_"


def reserved_payload_key(name: str) -> bool:
    """Is `name` a payload key computed by ingest or clustering (so no manifest column may use it)?"""
    return name in COMPUTED_PAYLOAD_KEYS or name.startswith(GROUP_KEY_PREFIX)


@dataclass(frozen=True)
class Detection:
    """One shoe found by the detector, in pixel coordinates of the upright photo."""

    box: tuple[int, int, int, int]  # x1, y1, x2, y2
    label: str
    confidence: float


@dataclass(frozen=True)
class LinkedProduct:
    """A product linked to a hit's product in the review (the same shoe sold by another factory),
    shown with the hit when search collapses linked products. `score` and `point_id`: its best
    crop among the results folded into the hit; None when none of its crops was among them."""

    factory: str
    product_id: str
    score: float | None = None
    point_id: str | None = None

    @property
    def name(self) -> str:
        return f"{self.factory}/{self.product_id}"

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "product_id": self.product_id,
                "score": None if self.score is None else round(self.score, 6), "point_id": self.point_id}


@dataclass(frozen=True)
class Hit:
    """One search result: a stored crop, its score and its payload; `linked`: the other products
    of its link group, when search collapsed linked products into this one result."""

    point_id: str
    score: float
    payload: dict[str, Any]
    linked: tuple[LinkedProduct, ...] = ()

    @property
    def factory(self) -> str:
        return self.payload.get("factory", "")

    @property
    def product_id(self) -> str:
        return self.payload.get("product_id", "")


@dataclass
class FailedPhoto:
    path: str
    error: str


@dataclass
class IngestReport:
    """What one `ingest add` run did. `to_dict()` is the CLI's `--json` output."""

    factory: str
    photos_seen: int = 0
    photos_added: int = 0
    photos_unchanged: int = 0
    photos_updated: int = 0  # same bytes already indexed, path / product / extras changed
    photos_failed: list[FailedPhoto] = field(default_factory=list)
    crops_added: int = 0
    # `ingest add --prune`: photos of this factory under the folder whose files are gone (with --dry-run:
    # would be), their crops, and their paths.
    photos_pruned: int = 0
    crops_pruned: int = 0
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data
