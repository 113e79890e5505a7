"""Clustering runs against the store: read vectors, cluster, keep ids stable (reports: core/duplicates/reports.py).

The last run's groups are kept twice: in a sidecar (`DATA_DIR/clusters/<collection>.json`,
group id -> member point ids, used to keep ids stable on the next run, and which groups were
reviewed) and in the points' payload (`group_identical`, `group_phash`, `group_duplicate`,
`group_similar`), so searches can filter by group. Payloads are written first, the sidecar last
(atomically); each run compares every point's payload with the groups it should carry, so group
ids left by a killed run (in payloads, unknown to the sidecar) are cleared by the next run.
Review decisions (core.duplicates.review) sit beside the sidecar and bind every run.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.domain.options import Method, Tier
from core.domain.types import CropPayload
from core.duplicates import ann, photo_hash, review
from core.duplicates.groups import (
    ClusterSettings,
    Constraints,
    Group,
    Items,
    assign_stable_ids,
    calibrate,
    cluster,
    overlap_matrix,
)
from core.errors import EmptyIndex, ShoeSearchError
from core.pipeline.journal import crash_point
from core.store.base import Store

# Above this many crops the exact pair search gives way to candidates from an index (core.duplicates.ann,
# or a server's own through batched queries).
EXACT_MAX_ITEMS = 300_000


@dataclass
class ClusterResult:
    settings: ClusterSettings
    factories_filter: list[str]
    groups: list[Group]
    dissolved: list[str]
    n_items: int
    factories: dict[str, int]  # items per factory
    method: str
    ungrouped: list[dict[str, str]] = field(default_factory=list)  # crops in no duplicate/similar group
    timings: dict[str, float] = field(default_factory=dict)

    def by_tier(self, tier: Tier | str) -> list[Group]:
        return [g for g in self.groups if g.tier == tier]

    def summary(self) -> dict[str, Any]:
        names = sorted(self.factories)
        tiers = {}
        for tier in Tier:
            groups = self.by_tier(tier)
            tiers[tier] = {
                "groups": len(groups),
                "reviewed": sum(g.reviewed for g in groups),
                "items_in_groups": sum(len(g.member_points) for g in groups),
                "largest": max((len(g.members) for g in groups), default=0),
                "status": dict(Counter(g.status for g in groups)),
                "factory_overlap": {"factories": names, "matrix": overlap_matrix(groups, names)},
            }
        grouped = {tier: {m.factory for g in self.by_tier(tier) for m in g.members} for tier in Tier}
        per_factory = {
            name: {"items": count, **{f"in_{tier}_groups": sum(
                sum(1 for m in g.members if m.factory == name) for g in self.by_tier(tier)) for tier in Tier}}
            for name, count in sorted(self.factories.items())
        }
        return {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {**asdict(self.settings), "factories": self.factories_filter, "method": self.method},
            "items": self.n_items,
            "tiers": tiers,
            "factories": per_factory,
            "factories_with_groups": {tier: sorted(f) for tier, f in grouped.items()},
            "dissolved_groups": self.dissolved,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


# The payload keys clustering reads (groups, representatives, review keys, phash, saved group ids):
# at a million crops, whole payloads would cost gigabytes.
CLUSTER_KEYS = ("factory", "product_id", "photo_path", "photo_sha256", "crop_index", "crop_path", "box", "width",
                "height", "detector_confidence", photo_hash.PAYLOAD_KEY, *(tier.payload_key for tier in Tier))
PAGE = 1024  # points per scroll page
QUERY_BATCH = 256  # vectors per batched nearest-neighbour request


def load_items(store: Store, factories: Sequence[str] | None = None, keys: Sequence[str] | None = None,
               with_vectors: bool = True) -> Items:
    """Every crop (optionally of some factories) with its vector and payload, scrolled in pages
    into one preallocated float32 matrix (no per-point copies). `keys`: keep only these payload
    keys (None: all); `with_vectors=False`: a (n, 0) matrix, for callers that need payloads only."""
    where = {"factory": list(factories)} if factories else None
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []
    matrix: np.ndarray | None = None
    capacity = store.count(where) if with_vectors else 0  # the count may move under a live store: grow if so
    for point in store.scroll(where, with_vectors=with_vectors, batch_size=PAGE):
        if with_vectors:
            if matrix is None:
                matrix = np.empty((max(capacity, 1), len(point.vector)), dtype=np.float32)
            elif len(ids) == len(matrix):
                matrix = np.resize(matrix, (len(matrix) * 2, matrix.shape[1]))
            matrix[len(ids)] = point.vector
        ids.append(point.id)
        payloads.append(point.payload if keys is None else {k: point.payload[k] for k in keys if k in point.payload})
    if not ids:
        return Items([], np.zeros((0, 0), dtype=np.float32), [])
    if not with_vectors:
        return Items(ids, np.zeros((len(ids), 0), dtype=np.float32), payloads)
    matrix = matrix[:len(ids)]
    for start in range(0, len(matrix), 65536):  # normalize in place, a block at a time
        block = matrix[start:start + 65536]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return Items(ids, matrix, payloads)


def knn_candidates(store: Store, items: Items, k: int, threshold: float,
                   batch: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs from the store's nearest-neighbour index (a server's HNSW), asked in batches
    of `batch` vectors per request, re-scored exactly."""
    batch = batch or QUERY_BATCH
    index = {pid: i for i, pid in enumerate(items.ids)}
    keys = []
    n = len(items)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        found = store.query_batch(items.vectors[start:stop], limit=k + 1, score_threshold=threshold - 0.02,
                                  exact=False, with_payload=False)
        rows, cols = [], []
        for i, hits in zip(range(start, stop), found):
            for hit in hits:
                j = index.get(hit.point_id)
                if j is not None and j != i:
                    rows.append(min(i, j))
                    cols.append(max(i, j))
        if rows:
            keys.append(np.unique(np.asarray(rows, dtype=np.int64) * n + np.asarray(cols, dtype=np.int64)))
    if not keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    key = np.unique(np.concatenate(keys))
    rows, cols = key // n, key % n
    sims = np.einsum("ij,ij->i", items.vectors[rows], items.vectors[cols])
    keep = sims >= threshold
    return rows[keep], cols[keep], sims[keep].astype(np.float32)


def state_path(data_dir: Path, collection: str) -> Path:
    """The clustering sidecar of `collection`: the last run's group ids, members and reviewed ids."""
    return Path(data_dir) / "clusters" / f"{collection}.json"


@dataclass
class TierProgress:
    """How much of one tier of the last clustering is reviewed."""

    groups: int = 0
    reviewed: int = 0

    @property
    def to_review(self) -> int:
        return self.groups - self.reviewed


@dataclass
class LastClustering:
    """The last saved clustering of a collection, as review progress per tier (tiers in the
    order their groups were saved; none when nothing was clustered yet)."""

    saved_at: str | None = None
    tiers: dict[Tier, TierProgress] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"saved_at": self.saved_at,
                "tiers": {t: {"groups": c.groups, "reviewed": c.reviewed, "to_review": c.to_review}
                          for t, c in self.tiers.items()}}


def last_clustering(data_dir: Path, collection: str) -> LastClustering:
    """Review progress of the last saved clustering (`ingest review status`), read from the
    sidecar; a missing or unparsable sidecar reads as no clustering, a group id of no tier raises
    ShoeSearchError (the file is damaged)."""
    path = state_path(data_dir, collection)
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return LastClustering()
    if not isinstance(saved, dict):
        return LastClustering()
    reviewed = set(saved.get("reviewed", []))
    out = LastClustering(saved.get("saved_at"))
    for group_id in saved.get("groups", {}):
        try:
            tier = Tier.of_group(group_id)
        except ValueError as exc:
            raise ShoeSearchError(f"{path} is damaged: {exc}") from None
        progress = out.tiers.setdefault(tier, TierProgress())
        progress.groups += 1
        progress.reviewed += group_id in reviewed
    return out


class ClusterService:
    """Runs clustering on the store's vectors and remembers the last result."""

    def __init__(self, store: Store, data_dir: Path, server_index: bool = False) -> None:
        """`server_index`: the store is a Qdrant server, whose index answers the nearest-neighbour
        queries of large runs (method "knn"); otherwise large runs use the bucket index (method "ann")."""
        self.store = store
        self.server_index = server_index
        self.data_dir = Path(data_dir)
        self.state_path = state_path(self.data_dir, store.collection)
        self.decisions = review.Decisions(self.data_dir, store.collection)

    def constraints(self) -> Constraints:
        """The review decisions as clustering constraints."""
        state = self.decisions.load()
        return Constraints(tuple(state.same_pairs()), tuple(state.different_pairs()),
                           frozenset(state.representatives))

    def run(self, settings: ClusterSettings, factories: Sequence[str] | None = None, method: Method | str = Method.AUTO,
            knn: int = 32, progress: Callable[[float, str], None] | None = None) -> ClusterResult:
        """Cluster, give groups stable ids, store group ids in payloads and the sidecar."""
        started = time.perf_counter()
        method = Method(method)  # an unknown method fails here, before any work
        self.store.check_writable("saving group ids")  # before the work, not after it
        if progress:
            progress(0.0, "reading vectors")
        constraints = self.constraints()  # a damaged decisions file stops here, before any work
        items = load_items(self.store, factories, keys=CLUSTER_KEYS)
        if len(items) == 0:
            raise EmptyIndex(f"Nothing to cluster in {self.store.location}"
                             + (f" for factories {', '.join(factories)}" if factories else "") + ".")
        if settings.hash_distance is not None:
            self._fill_hashes(items, progress)
        loaded = time.perf_counter()
        if method == Method.AUTO:
            method = Method.EXACT if len(items) <= EXACT_MAX_ITEMS else Method.KNN if self.server_index else Method.ANN
        candidates = None
        low = min(settings.duplicate_threshold, settings.similar_threshold)
        if method == Method.KNN:
            candidates = knn_candidates(self.store, items, knn, low)
        elif method == Method.ANN:
            candidates = ann.bucket_pairs(items.vectors, low, block=settings.block, progress=(
                lambda f: progress(0.05 + 0.4 * f, "pairing (bucket index)")) if progress else None)
        groups = cluster(items, settings, progress=(lambda f: progress(0.05 + 0.8 * f, "comparing")) if progress else None,
                         candidates=candidates, constraints=constraints)
        clustered = time.perf_counter()
        previous = self._previous()
        dissolved = assign_stable_ids(groups, previous)
        if progress:
            progress(0.9, "saving group ids")
        self._save(groups, items, bool(factories))
        crops = [CropPayload.from_payload(p) for p in items.payloads]
        factories_count = Counter(crop.factory for crop in crops)
        grouped = {p for g in groups if g.tier in (Tier.DUPLICATE, Tier.SIMILAR) for p in g.member_points}
        ungrouped = [{"point_id": pid, "factory": crop.factory, "product_id": crop.product_id,
                      "photo_path": crop.photo_path}
                     for pid, crop in zip(items.ids, crops) if pid not in grouped]
        result = ClusterResult(settings, list(factories or []), groups, dissolved, len(items), dict(factories_count),
                               method, ungrouped)
        result.timings = {"read": loaded - started, "cluster": clustered - loaded,
                          "save": time.perf_counter() - clustered}
        if progress:
            progress(1.0, "done")
        return result

    def _fill_hashes(self, items: Items, progress: Callable[[float, str], None] | None = None) -> int:
        """Crops indexed before perceptual hashes were stored get theirs, from their thumbnail, into
        the payload (once). Returns how many were hashed."""
        missing = [i for i, p in enumerate(items.payloads) if not p.get(photo_hash.PAYLOAD_KEY) and p.get("crop_path")]
        for done, i in enumerate(missing, 1):
            path = (self.data_dir / items.payloads[i]["crop_path"]).resolve()
            if not path.is_relative_to(self.data_dir.resolve()):
                continue
            value = photo_hash.file_phash(path)
            if value:
                items.payloads[i][photo_hash.PAYLOAD_KEY] = value
                self.store.set_payload([items.ids[i]], {photo_hash.PAYLOAD_KEY: value})
            if progress and done % 200 == 0:
                progress(0.05 * done / len(missing), "hashing thumbnails")
        return len(missing)

    def _previous(self) -> dict[str, list[str]]:
        if not self.state_path.exists():
            return {}
        try:
            return json.loads(self.state_path.read_text())["groups"]
        except (ValueError, KeyError):
            return {}

    def _save(self, groups: list[Group], items: Items, filtered: bool) -> None:
        """Make every point's group ids in its payload those of `groups` (setting new ones,
        clearing any other: last run's, or a killed run's), then write the sidecar atomically."""
        assigned: dict[str, dict[str, str]] = {}
        for group in groups:
            for point in group.member_points:
                assigned.setdefault(point, {})[Tier(group.tier).payload_key] = group.id
        payloads = dict(zip(items.ids, items.payloads))
        if filtered:  # points of other factories may hold group ids too
            for point in self.store.scroll(batch_size=1024):
                payloads.setdefault(point.id, point.payload)
        for group in groups:
            key = Tier(group.tier).payload_key
            self.store.set_payload([p for p in group.member_points if payloads[p].get(key) != group.id],
                                   {key: group.id})
            crash_point("cluster.after_group")
        for key in (tier.payload_key for tier in Tier):
            stale = [pid for pid, payload in payloads.items()
                     if payload.get(key) is not None and key not in assigned.get(pid, {})]
            self.store.set_payload(stale, {key: None})
        crash_point("cluster.before_sidecar")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            review.atomic_write(self.state_path, json.dumps({
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "groups": {g.id: g.member_points for g in groups},
                "reviewed": sorted(g.id for g in groups if g.reviewed)}).encode())
        except OSError as exc:
            raise ShoeSearchError(f"cannot save the group ids to {self.state_path}: {exc.strerror or exc} (the "
                                  f"groups are in the points' payload; the next run may give new ids)") from None

    def last_groups(self) -> dict[str, list[str]]:
        """The last run's groups: id -> member point ids."""
        return self._previous()

    def last_reviewed(self) -> set[str]:
        """Ids of the last run's groups that were fully reviewed."""
        try:
            return set(json.loads(self.state_path.read_text()).get("reviewed", []))
        except (OSError, ValueError, AttributeError):
            return set()

    # ------------------------------------------------------------------ calibration

    def calibrate(self, labels_csv: Path | None, target_precision: float = 0.95) -> dict[str, Any]:
        """Score labelled pairs (`a,b,same`: photo paths or product ids) with their best crop
        pair and compute precision/recall/F1 per threshold. Without a file the review decisions
        are the labels (`same` / `different` pairs of crops, photos and products)."""
        items = load_items(self.store)
        if len(items) == 0:
            raise EmptyIndex(f"Nothing indexed in {self.store.location} to calibrate on.")
        if labels_csv is None:
            return self._calibrate_on_decisions(items, target_precision)
        by_key: dict[str, list[int]] = {}
        for i, payload in enumerate(items.payloads):
            for key in (payload.get("photo_path"), payload.get("product_id")):
                if key:
                    by_key.setdefault(str(key), []).append(i)
        scores, same, missing = [], [], []
        with open(labels_csv, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"a", "b", "same"} <= {c.strip() for c in reader.fieldnames}:
                raise ShoeSearchError(f"{labels_csv}: line 1: need columns a,b,same")
            for line_no, row in enumerate(reader, start=2):
                a, b = _label_key(row["a"], labels_csv), _label_key(row["b"], labels_csv)
                if a not in by_key or b not in by_key:
                    missing.append(f"line {line_no}: {row['a'] if a not in by_key else row['b']}")
                    continue
                sims = items.vectors[by_key[a]] @ items.vectors[by_key[b]].T
                scores.append(float(sims.max()))
                same.append(str(row["same"]).strip().lower() in {"1", "true", "yes", "same", "y"})
        if not scores:
            raise ShoeSearchError(f"{labels_csv}: no labelled pair matches an indexed photo path or product id")
        result = calibrate(scores, same, target_precision=target_precision)
        result["unmatched"] = missing
        return result


    def _calibrate_on_decisions(self, items: Items, target_precision: float) -> dict[str, Any]:
        state = self.decisions.load()
        if not state.pairs:
            raise ShoeSearchError(
                f"No review decisions yet ({self.decisions.path}): review groups in the UI's Duplicates tab or "
                f"`ingest review import FILE`, or give a labels file: ingest cluster --calibrate LABELS.csv")
        by_key: dict[str, list[int]] = {}
        for i, payload in enumerate(items.payloads):
            for key in review.part_keys(payload):
                by_key.setdefault(key, []).append(i)
        index = review.ContentIndex(items.payloads)
        scores, same, missing = [], [], []
        for (a, b), decision in sorted(state.pairs.items()):
            if a not in by_key or b not in by_key:
                gone = a if a not in by_key else b
                missing.append(f"{decision.decision} pair: {index.describe(gone, decision.hints)[0] or gone} "
                               f"is not indexed")
                continue
            scores.append(float((items.vectors[by_key[a]] @ items.vectors[by_key[b]].T).max()))
            same.append(decision.decision == review.SAME)
        if not scores:
            raise ShoeSearchError(f"None of the {len(state.pairs)} review decisions concerns an indexed photo or product.")
        result = calibrate(scores, same, target_precision=target_precision)
        result["unmatched"] = missing
        result["labels"] = "review decisions"
        return result

    def best_similarity(self, items: Items):
        """A function (key a, key b) -> the best crop-pair cosine between them in `items`, or None."""
        by_key: dict[str, list[int]] = {}
        for i, payload in enumerate(items.payloads):
            for key in review.part_keys(payload):
                by_key.setdefault(key, []).append(i)

        def score(a: str, b: str) -> float | None:
            if a not in by_key or b not in by_key:
                return None
            return float((items.vectors[by_key[a]] @ items.vectors[by_key[b]].T).max())

        return score


def _label_key(value: str, labels_csv: Path) -> str:
    value = value.strip()
    path = Path(value)
    if path.suffix and not path.is_absolute():
        candidate = (labels_csv.parent / path).absolute()
        if candidate.exists():
            return str(candidate)
    return str(path.absolute()) if path.is_absolute() or path.exists() else value
