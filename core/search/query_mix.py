"""Photo + words: one query vector from a photo (or a stored crop) and text modifiers.

"Like this, but red; not suede" is a weighted sum of unit vectors in CLIP's shared space:

    q = normalize( w_photo * unit(photo) + sum_i w * unit(text_i) - sum_j w * unit(not_j) )

where `unit(v) = v / |v|`, `w_photo` is 1 and `w` is the words' weight (the same for every
modifier unless a term carries its own). Each part is unit length before weighting, so a weight
says how hard that part pulls, whatever the model's vector norms. The result ranks crops by
cos(crop, photo) + w * sum_i cos(crop, text_i) - w * sum_j cos(crop, not_j) (the normalization
changes the scores, not the order). This module is the only place the formula lives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ShoeSearchError

DEFAULT_WORDS_WEIGHT = 1.0
MAX_WORDS_WEIGHT = 5.0
MAX_TERMS = 16
_SPLIT = re.compile(r"[,;\n]")


@dataclass(frozen=True)
class Term:
    """One text modifier: positive weight pulls results towards it, negative pushes them away."""

    text: str
    weight: float


def split_words(text: str | Sequence[str] | None) -> list[str]:
    """'red, high heel; patent' -> ['red', 'high heel', 'patent'] (commas, semicolons and new
    lines separate modifiers; a list is split item by item; blanks are dropped)."""
    if not text:
        return []
    items = [text] if isinstance(text, str) else list(text)
    return [part.strip() for item in items for part in _SPLIT.split(str(item)) if part.strip()]


def terms(add: str | Sequence[str] | None = None, avoid: str | Sequence[str] | None = None,
          weight: float = DEFAULT_WORDS_WEIGHT) -> list[Term]:
    """The modifiers of a query: each word in `add` at +weight, each in `avoid` at -weight."""
    weight = float(weight)
    if not 0.0 <= weight <= MAX_WORDS_WEIGHT:
        raise ShoeSearchError(f"The words' weight must lie between 0 and {MAX_WORDS_WEIGHT:g} (got {weight:g}).")
    found = [Term(t, weight) for t in split_words(add)] + [Term(t, -weight) for t in split_words(avoid)]
    if len(found) > MAX_TERMS:
        raise ShoeSearchError(f"At most {MAX_TERMS} words to add or avoid per search (got {len(found)}).")
    return found


def _unit(vector) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def mix(photo, term_vectors: Sequence, term_weights: Sequence[float], photo_weight: float = 1.0) -> np.ndarray:
    """The query vector (unit length): `photo` (None: words only) and the terms' vectors, weighted
    as the module docstring says. Raises ShoeSearchError when the parts cancel out."""
    if len(term_vectors) != len(term_weights):
        raise ValueError("one weight per term vector")
    parts = [] if photo is None else [photo_weight * _unit(photo)]
    parts += [w * _unit(v) for v, w in zip(term_vectors, term_weights)]
    if not parts:
        raise ShoeSearchError("Nothing to search with: give a photo or words.")
    total = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise ShoeSearchError("The words cancel the query out (the same words added and avoided?): change them.")
    return (total / norm).astype(np.float32)

