"""The Store contract: what the services need from a vector store, and what every backend shares.

Here: the `Store` protocol, its value types (`CollectionInfo`, `StoredPoint`, the `Where` filter
with `Contains`), the collection's constants (vector name, schema version, indexed payload keys,
exact-query limit) and helpers the backends share (`check_model`, `average_vector`, filters as
a backend's conditions, records as StoredPoints). The backends, each a module of this package:
- core/store/edge.py, `EdgeStore`: Qdrant's own engine in process (qdrant-edge-py), the
  embedded default under DATA_DIR; core/store/lock.py keeps a second process out of it and
  core/store/diskspace.py keeps a write off a full disk.
- core/store/qdrant.py, `QdrantClientStore`: qdrant-client against a Qdrant server or cluster
  (`QDRANT_URL`), or qdrant-client's local mode (same API, used by the tests).
- core/store/host.py, `RemoteStore`: an embedded store held by another process (a search UI
  serving it), reached through that process.
core/store/transfer.py and core/store/migrate.py copy points between any two of them.

Backend differences are parts of the contract, not type checks: `servable` (this process holds
the store itself, so a search UI can serve it), `holder` (the process a store is reached
through) and `beside(collection)` (another collection in the same place, reached the same way).

Edge's HNSW misses neighbours even unfiltered (recall@10 0.66 measured at 100k synthetic
512-d points), so queries run exact up to EXACT_QUERY_MAX_POINTS (about 20 ms at 100k on
2 cores) and use HNSW with a large ef only beyond.

A filter (`Where`) is a mapping {payload key: allowed values, or Contains(text)}: a point
matches when every key holds one of its values (or, for Contains, a value with that
substring, case-sensitive). Filtered queries on Edge run exact (its filtered HNSW misses
hits), so filtered results equal a brute-force scan.

Recommend queries (like / dislike examples, given as vectors) follow Qdrant's three strategies:
`best_score` and `sum_scores` run as each backend's own recommend query; `average_vector` is a
nearest query with `average_vector()` (qdrant-client: its own RecommendQuery; Edge has no
average strategy, so the same formula is computed here).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.domain.types import Hit
from core.errors import SchemaMismatch

VECTOR_NAME = "clip"
SCHEMA_VERSION = 1
EXACT_QUERY_MAX_POINTS = 250_000
HNSW_EF = 512
INDEXED_KEYWORDS = ("factory", "product_id", "photo_sha256", "photo_path")
RECOMMEND_STRATEGIES = ("average_vector", "best_score", "sum_scores")


@dataclass(frozen=True)
class Contains:
    """Filter condition: the payload value contains `text` (case-sensitive substring)."""

    text: str


Where = Mapping[str, "Sequence[str | int] | Contains"]


@dataclass(frozen=True)
class CollectionInfo:
    """What the collection records about its vectors."""

    model: str
    dimension: int
    schema_version: int = SCHEMA_VERSION
    text_model: str = ""  # TEXT_MODEL paired with `model` for text queries; "" = CLIP's own text tower


@dataclass
class StoredPoint:
    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


class Store(Protocol):
    """What the services need from a vector store."""

    location: str
    collection: str
    servable: bool  # held by this process itself (embedded): a search UI can serve it to others (host.py)
    holder: str | None  # the process this store is reached through (a search UI serving it); None if none

    def beside(self, collection: str, write: bool = False) -> Store:
        """Another collection in the same place, reached the same way (the projection head's index);
        `write`: the caller will write to it."""
        ...
    def info(self) -> CollectionInfo | None: ...
    def ensure_collection(self, model: str, dimension: int, text_model: str | None = None) -> CollectionInfo:
        """The collection's record, made on first use (with `text_model`, "" when None); an existing
        one must match `model`, `dimension` and (unless None) `text_model`."""
        ...
    def upsert(self, points: Sequence[StoredPoint]) -> None: ...
    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]: ...
    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def query(self, vector: Sequence[float], where: Where | None = None, limit: int = 10,
              score_threshold: float | None = None, exact: bool | None = None) -> list[Hit]:
        """Nearest crops, best first. `exact`: None = the store decides (exact unless huge),
        False = use the approximate index (nearest-neighbour candidates for clustering)."""
        ...
    def recommend(self, positive: Sequence[Sequence[float]], negative: Sequence[Sequence[float]] = (),
                  where: Where | None = None, limit: int = 10, score_threshold: float | None = None,
                  strategy: str = "average_vector") -> list[Hit]:
        """Crops like the `positive` vectors and unlike the `negative` ones, best first, by one of
        RECOMMEND_STRATEGIES (Qdrant's definitions; exact or approximate as `query` decides):
        - average_vector: nearest to `average_vector(positive, negative)`; scores are cosines
        - best_score: best positive cosine p, best negative cosine n (-inf if none); score
          s(p) = 0.5 * (p / (1 + |p|) + 1) when p > n, else -s(n)
        - sum_scores: sum of positive cosines minus sum of negative cosines"""
        ...
    def scroll(self, where: Where | None = None, with_vectors: bool = False,
               batch_size: int = 512) -> Iterator[StoredPoint]: ...
    def count(self, where: Where | None = None) -> int: ...
    def facet(self, key: str, where: Where | None = None) -> dict[str, int]: ...
    def optimize(self) -> None: ...
    def check_writable(self, doing: str = "writing to the index") -> None:
        """Raise ReadOnlyData or DiskFull now if writes would be refused (fail before the work);
        `doing` names the write in the message."""
        ...
    def close(self) -> None: ...


def check_model(info: CollectionInfo, collection: str, location: str, model: str, dimension: int | None,
                text_model: str | None = None) -> None:
    """Raise SchemaMismatch when a collection's vectors come from another model or size, or (when
    `text_model` is given) when it pairs them with another text model."""
    if info.model != model or (dimension is not None and info.dimension != dimension):
        raise SchemaMismatch(
            f"Collection '{collection}' at {location} holds {info.dimension}-d vectors of model "
            f"'{info.model}', but CLIP_MODEL is '{model}'"
            + (f" ({dimension}-d)" if dimension is not None else "")
            + ". Use the same CLIP_MODEL, pick another QDRANT_COLLECTION, or remove the collection to re-index."
        )
    if text_model is not None and info.text_model != text_model:
        recorded = f"text model '{info.text_model}'" if info.text_model else "CLIP's own text encoder"
        wanted = f"'{text_model}'" if text_model else "empty (CLIP's own text encoder)"
        raise SchemaMismatch(
            f"Collection '{collection}' at {location} pairs its '{info.model}' vectors with {recorded} for text "
            f"queries, but TEXT_MODEL is {wanted}. Use the same TEXT_MODEL, or index into another QDRANT_COLLECTION."
        )


def average_vector(positive: Sequence[Sequence[float]], negative: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """Qdrant's `average_vector` recommend query: mean(positive) + (mean(positive) - mean(negative)),
    or mean(positive) when there is no negative."""
    if len(positive) == 0:
        raise ValueError("average_vector needs at least one positive example")
    mean = np.mean(np.asarray(positive, dtype=np.float32), axis=0)
    if len(negative) == 0:
        return mean
    return mean + mean - np.mean(np.asarray(negative, dtype=np.float32), axis=0)


def _check_recommend(positive, negative, strategy: str) -> None:
    if strategy not in RECOMMEND_STRATEGIES:
        raise ValueError(f"unknown recommend strategy {strategy!r}: one of {', '.join(RECOMMEND_STRATEGIES)}")
    if len(positive) == 0 and len(negative) == 0:
        raise ValueError("a recommend query needs at least one example")
    if strategy == "average_vector" and len(positive) == 0:
        raise ValueError("average_vector needs at least one positive example")


def _vector_list(vector: Any) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def _stored_point(record, with_vectors: bool) -> StoredPoint:
    """A backend's record (Edge or qdrant-client: same attributes) as a StoredPoint."""
    vector = None
    if with_vectors and record.vector is not None:
        vector = np.asarray(record.vector[VECTOR_NAME], dtype=np.float32)
    return StoredPoint(str(record.id), dict(record.payload or {}), vector)


def _conditions(where: Where, match_value, match_any, match_substring, field) -> list:
    """`where` as a backend's `must` conditions, built with that backend's constructors."""
    must = []
    for key, values in where.items():
        if isinstance(values, Contains):
            match = match_substring(values.text)
        else:
            values = list(values)
            match = match_value(values[0]) if len(values) == 1 else match_any(values)
        must.append(field(key, match))
    return must
