"""The option values the CLI, the UI and the services share, each listed once.

Each is a StrEnum: a member is its value ("similar" == Tier.SIMILAR, in f-strings and JSON too),
Typer takes the type as an option's choices, and gr.Radio is built from `choices(Scope)`.
An unknown value raises ValueError (`Tier("nope")`): no silent fallback.
"""

from __future__ import annotations

from enum import StrEnum

from core.domain.types import GROUP_KEY_PREFIX


def choices(kind: type[StrEnum]) -> list[str]:
    """The values of an option type, in declaration order (for gr.Radio and help text)."""
    return [member.value for member in kind]


class Tier(StrEnum):
    """Duplicate tiers, in the order clustering builds them."""

    IDENTICAL = "identical"  # same photo bytes
    PHASH = "phash"  # the same picture re-encoded or resized (perceptual hash)
    DUPLICATE = "duplicate"  # cosine >= the duplicate threshold
    SIMILAR = "similar"  # cosine >= the similar threshold

    @property
    def prefix(self) -> str:
        """The group id prefix: idt-, phs-, dup-, sim-."""
        return _TIER_PREFIX[self]

    @property
    def payload_key(self) -> str:
        """The payload key holding a crop's group id of this tier (group_similar, ...)."""
        return f"{GROUP_KEY_PREFIX}{self.value}"

    @classmethod
    def of_group(cls, group_id: str) -> Tier:
        """The tier of a group id, from its prefix; ValueError for an id of no tier."""
        prefix = str(group_id).split("-", 1)[0]
        for tier, known in _TIER_PREFIX.items():
            if known == prefix:
                return tier
        raise ValueError(f"{group_id!r} is not a duplicate group id (ids start with "
                         f"{', '.join(p + '-' for p in _TIER_PREFIX.values())})")


# The order a reviewer takes the tiers in: byte-identical copies last (nothing to decide).
REVIEW_ORDER = (Tier.DUPLICATE, Tier.SIMILAR, Tier.PHASH, Tier.IDENTICAL)
_TIER_PREFIX = {Tier.IDENTICAL: "idt", Tier.PHASH: "phs", Tier.DUPLICATE: "dup", Tier.SIMILAR: "sim"}


class Scope(StrEnum):
    """Which pairs clustering keeps."""

    ALL = "all"
    CROSS_FACTORY = "cross-factory"
    WITHIN_FACTORY = "within-factory"


class Level(StrEnum):
    """What a clustering node is: one crop, or all crops of a product (scored by its best crop pair)."""

    CROP = "crop"
    PRODUCT = "product"


class Linkage(StrEnum):
    """single: connected components (may chain); complete: every pair in a group clears the threshold."""

    SINGLE = "single"
    COMPLETE = "complete"


class Method(StrEnum):
    """How clustering finds candidate pairs."""

    AUTO = "auto"
    EXACT = "exact"
    KNN = "knn"


class ReportFormat(StrEnum):
    """The files `ingest cluster` can write."""

    JSON = "json"
    CSV = "csv"
    FOLDERS = "folders"
    COLLAGE = "collage"


def parse_formats(text: str) -> list[ReportFormat]:
    """'json,csv' -> [ReportFormat.JSON, ReportFormat.CSV]; ValueError naming the choices otherwise."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or set(names) - set(choices(ReportFormat)):
        raise ValueError(f"choose from {', '.join(choices(ReportFormat))}")
    return [ReportFormat(name) for name in names]


REPRESENTATIVE_RULES = ("medoid", "largest", "confidence")  # or factory:NAME


def check_representative(rule: str) -> str:
    """A group's representative rule: medoid | largest | confidence | factory:NAME (ValueError otherwise)."""
    if rule in REPRESENTATIVE_RULES or rule.startswith("factory:"):
        return rule
    raise ValueError("medoid, largest, confidence or factory:NAME")
