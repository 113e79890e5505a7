"""Move a collection to a Qdrant server or cluster without re-embedding.

The points (vectors + payloads, under their deterministic ids), the collection's model record
and the stable group ids (`DATA_DIR/clusters/<collection>.json`) are copied. Resumable: each
batch asks the target which of its points it already holds (with the same payload) and
upserts only the rest, so a rerun after a crash, a kill or a network failure copies what is
missing and converges on the source. A progress marker under `DATA_DIR/migrations/` says how
far the last run got. At the end counts are compared and a sample of vectors is read back
from the target (cosine ~ 1, same payload).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import EmptyIndex, ShoeSearchError
from core.pipeline.batches import iter_batches
from core.store.base import Store

MIN_SAMPLE_COSINE = 0.9999


class MigrationFailed(ShoeSearchError):
    """The target does not hold what the source holds after a migration."""


@dataclass
class MigrationReport:
    source: str
    target: str
    collection: str
    model: str
    source_points: int = 0
    target_points: int = 0
    copied: int = 0            # upserted by this run (missing from the target, or another payload there)
    already_there: int = 0     # found in the target with the same payload (copied by an earlier run)
    batches: int = 0
    sample: int = 0
    min_sample_cosine: float | None = None
    group_ids: str = "none"    # what happened to the clustering sidecar
    resumed: bool = False      # an unfinished marker of an earlier run was found
    seconds: float = 0.0
    marker: str = ""
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        if self.min_sample_cosine is not None:
            data["min_sample_cosine"] = round(self.min_sample_cosine, 6)
        return data


def marker_path(data_dir: Path, source: Store, target_url: str, target_collection: str) -> Path:
    """Where the progress of migrating `source` to that target collection is recorded."""
    key = hashlib.sha256(f"{source.location}\x1f{source.collection}\x1f{target_url}\x1f{target_collection}"
                         .encode()).hexdigest()[:12]
    return Path(data_dir) / "migrations" / f"{source.collection}-to-{target_collection}-{key}.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(path)


def migrate(source: Store, target: Store, data_dir: Path, target_url: str, batch_size: int = 256,
            sample: int = 64, progress: Callable[[int, int], None] | None = None) -> MigrationReport:
    """Copy every point of `source` into `target` (same ids, vectors, payloads) and verify.

    `progress(done, total)` hears after each batch. Raises MigrationFailed (after writing the
    marker) when the counts or the sampled vectors/payloads disagree."""
    started = time.perf_counter()
    info = source.info()
    if info is None or source.count() == 0:
        raise EmptyIndex(f"Nothing to migrate: {source.location} has no points.")
    if source.location == target.location and source.collection == target.collection:
        raise ShoeSearchError(f"The target is the source ({target.location}, collection {target.collection}): "
                              f"give another --to or --collection.")
    marker = marker_path(data_dir, source, target_url, target.collection)
    report = MigrationReport(source.location, target_url, target.collection, info.model, marker=str(marker))
    if marker.exists():
        try:
            report.resumed = not json.loads(marker.read_text()).get("finished", False)
        except ValueError:
            report.resumed = True
    target.ensure_collection(info.model, info.dimension, info.text_model)  # the model record travels with the collection
    total = source.count()
    report.source_points = total
    rng = random.Random(0)
    sampled: list[tuple[str, np.ndarray, dict]] = []
    seen = 0

    def save(finished: bool) -> None:
        _write_json(marker, {"source": source.location, "source_collection": source.collection,
                             "target": target_url, "target_collection": target.collection, "model": info.model,
                             "done": report.copied + report.already_there, "total": total,
                             "copied": report.copied, "already_there": report.already_there,
                             "batches": report.batches, "finished": finished,
                             "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    save(False)
    for batch in iter_batches(source.scroll(with_vectors=True, batch_size=batch_size), batch_size):
        there = {p.id: p.payload for p in target.retrieve([p.id for p in batch])}
        missing = [p for p in batch if there.get(p.id) != p.payload]
        target.upsert(missing)  # idempotent: same ids
        report.copied += len(missing)
        report.already_there += len(batch) - len(missing)
        report.batches += 1
        for point in batch:  # reservoir sample: uniform over the whole collection, bounded memory
            seen += 1
            slot = len(sampled) if len(sampled) < sample else rng.randrange(seen)
            if slot < sample:
                entry = (point.id, point.vector, point.payload)
                if slot == len(sampled):
                    sampled.append(entry)
                else:
                    sampled[slot] = entry
        save(False)
        if progress:
            progress(report.copied + report.already_there, total)

    report.group_ids = _carry_group_ids(Path(data_dir), source.collection, target.collection)
    _verify(source, target, sampled, report)
    report.seconds = time.perf_counter() - started
    save(finished=not report.problems)
    if report.problems:
        raise MigrationFailed(f"Migration to {target_url} (collection {target.collection}) copied "
                              f"{report.copied} points but does not match the source: " + "; ".join(report.problems)
                              + ". Rerun the same command to copy what is missing.")
    return report


def _verify(source: Store, target: Store, sampled: list, report: MigrationReport) -> None:
    """Counts equal, the model recorded, sampled vectors (cosine) and payloads equal."""
    report.source_points = source.count()
    report.target_points = target.count()
    if report.target_points < report.source_points:
        report.problems.append(f"the target holds {report.target_points} points, the source {report.source_points}")
    elif report.target_points > report.source_points:
        report.problems.append(
            f"the target holds {report.target_points - report.source_points} points more than the source "
            f"({report.source_points}): points removed from the source since an earlier run, or another source's "
            f"points; migrate into a new --collection to get an exact copy")
    recorded = target.info()
    if recorded is None or recorded.model != report.model:
        report.problems.append(f"the target collection records model {recorded.model if recorded else None!r}")
    if not sampled:
        return
    found = {p.id: p for p in target.retrieve([pid for pid, _, _ in sampled], with_vectors=True)}
    cosines = []
    for pid, vector, payload in sampled:
        point = found.get(pid)
        if point is None:
            report.problems.append(f"point {pid} is missing from the target")
            continue
        a, b = np.asarray(vector, dtype=np.float64), np.asarray(point.vector, dtype=np.float64)
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
        if point.payload != payload:
            report.problems.append(f"point {pid} has another payload in the target")
    report.sample = len(sampled)
    report.min_sample_cosine = min(cosines) if cosines else None
    if cosines and min(cosines) < MIN_SAMPLE_COSINE:
        report.problems.append(f"a sampled vector differs (cosine {min(cosines):.6f})")


def _carry_group_ids(data_dir: Path, source_collection: str, target_collection: str) -> str:
    """Make the clustering sidecar (stable group ids -> point ids) valid for the target collection.

    The points keep their ids, so the source's sidecar is the target's; with another target
    collection name it is copied under that name (an existing, different one is kept)."""
    source_file = data_dir / "clusters" / f"{source_collection}.json"
    if not source_file.exists():
        return "none (never clustered)"
    target_file = data_dir / "clusters" / f"{target_collection}.json"
    if target_file == source_file:
        return f"kept {source_file} (same collection name)"
    content = source_file.read_text()
    try:
        groups = json.loads(content)["groups"]
    except (ValueError, KeyError):
        return f"not copied: {source_file} is not a clustering record"
    if target_file.exists():
        if target_file.read_text() == content:
            return f"copied to {target_file} ({len(groups)} groups)"
        return f"kept the existing {target_file} (it differs from {source_file.name})"
    target_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = target_file.with_name(target_file.name + ".tmp")
    tmp.write_text(content)
    tmp.replace(target_file)
    return f"copied to {target_file} ({len(groups)} groups)"
