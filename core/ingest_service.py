"""Ingest: photos -> hash -> (skip known) -> decode -> detect -> crop -> embed -> upsert.

The service takes its parts as arguments (store, embedder, detector), so tests can pass
tiny real models or a fake detector, and the CLI and the UI share one code path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.batches import iter_batches
from core.catalogue import path_text
from core.detector import Detector
from core.embedder import Embedder, text_model_of
from core.errors import BadImage, StoreUnavailable
from core.ids import point_id
from core.images import expand_box, file_sha256, load_photo_scaled, save_thumbnail
from core.models import Detection, FailedPhoto, IngestReport, PhotoSource
from core.store import Store, StoredPoint, check_model

# Past this many points the embedded store builds its HNSW index after an ingest run.
OPTIMIZE_MIN_POINTS = 20_000

ProgressFn = Callable[[int, str], None]  # (photos done so far, current photo path)


@dataclass
class _Hashed:
    source: PhotoSource
    sha256: str

    @property
    def first_id(self) -> str:
        return point_id(self.source.factory, self.sha256, 0)

    def catalogue_payload(self) -> dict[str, Any]:
        """The payload fields that come from where the file lies, not from its bytes."""
        return {"photo_path": path_text(self.source.path), "product_id": self.source.product_id, **self.source.extras}


class IngestService:
    """Adds photos to the index and removes them. Reruns are cheap and never duplicate."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        detector: Detector,
        data_dir: Path,
        *,
        batch_size: int = 32,
        crop_margin: float = 0.08,
        thumbnail_size: int = 256,
        max_image_pixels: int = 80_000_000,
        decode_max_side: int | None = 1600,
        workers: int = 2,
        head_index=None,
        background_remover=None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.detector = detector
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.crop_margin = crop_margin
        self.thumbnail_size = thumbnail_size
        self.max_image_pixels = max_image_pixels
        self.decode_max_side = decode_max_side
        self.workers = workers
        self.head_index = head_index  # core.head_index.HeadIndex: projected vectors kept in step
        self.background_remover = background_remover  # core.background: applied before embedding only
        self._collection_ready = False

    # ------------------------------------------------------------------ add

    def add(self, sources: Iterable[PhotoSource], factory: str, progress: ProgressFn | None = None) -> IngestReport:
        """Ingest `sources`. Failed photos are reported, never fatal. Returns the report."""
        started = time.perf_counter()
        report = IngestReport(factory=factory)
        info = self.store.info()
        if info is not None:
            # Before any model loads: refuse to mix embedding spaces.
            check_model(info, self.store.collection, self.store.location, self.embedder.model_id, None,
                        text_model_of(self.embedder))
        seen_keys: set[tuple[str, str]] = set()
        done = 0
        # Two stages: while the models work on one batch, the next is hashed, looked up and decoded.
        with ThreadPoolExecutor(max_workers=self.workers) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
            pending = None
            for batch in iter_batches(sources, self.batch_size):
                prepared = ahead.submit(self._prepare, batch, report, seen_keys, pool)
                if pending is not None:
                    done += self._finish(pending, report, pool, progress, done)
                pending = (prepared, batch)
            if pending is not None:
                self._finish(pending, report, pool, progress, done)
        if report.crops_added and self.store.count() >= OPTIMIZE_MIN_POINTS:
            self.store.optimize()
        report.seconds = time.perf_counter() - started
        return report

    def _finish(self, pending, report: IngestReport, pool: ThreadPoolExecutor,
                progress: ProgressFn | None, done: int) -> int:
        prepared, batch = pending
        photos = prepared.result()
        if photos:
            self._store_photos(photos, report, pool)
        if progress:
            progress(done + len(batch), str(batch[-1].path))
        return len(batch)

    def _prepare(self, batch: Sequence[PhotoSource], report: IngestReport,
                 seen_keys: set[tuple[str, str]], pool: ThreadPoolExecutor) -> list:
        """Hash, skip known photos (updating moved ones), decode the new: [(item, image, original size)]."""
        report.photos_seen += len(batch)
        hashed: list[_Hashed] = []
        for source, result in zip(batch, pool.map(_hash_or_error, [s.path for s in batch])):
            if isinstance(result, FailedPhoto):
                report.photos_failed.append(result)
                continue
            key = (source.factory, result)
            if key in seen_keys:
                # The same bytes twice in one factory: the first path seen keeps the point.
                report.photos_unchanged += 1
                continue
            seen_keys.add(key)
            hashed.append(_Hashed(source, result))

        known = {p.id: p for p in self.store.retrieve([h.first_id for h in hashed])}
        new: list[_Hashed] = []
        for item in hashed:
            stored = known.get(item.first_id)
            if stored is None:
                new.append(item)
                continue
            wanted = item.catalogue_payload()
            if all(stored.payload.get(k) == v for k, v in wanted.items()):
                report.photos_unchanged += 1
            else:  # moved, renamed, or re-labelled: same bytes, so same points
                ids = [p.id for p in self.store.scroll(
                    {"factory": [item.source.factory], "photo_sha256": [item.sha256]})]
                self.store.set_payload(ids, wanted)
                report.photos_updated += 1
        decoded = list(pool.map(self._decode_or_error, [h.source.path for h in new]))
        photos = []
        for item, result in zip(new, decoded):
            if isinstance(result, FailedPhoto):
                report.photos_failed.append(result)
            else:
                photos.append((item, *result))
        return photos

    def _store_photos(self, photos: list, report: IngestReport, pool: ThreadPoolExecutor) -> None:
        """Detect, crop, embed, write thumbnails and upsert one prepared batch."""
        detections = self.detector.detect([img for _, img, _ in photos])
        crops, payloads = [], []
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for (item, img, (photo_width, photo_height)), found in zip(photos, detections):
            sx, sy = photo_width / img.width, photo_height / img.height  # decoded at a reduced scale?
            for index, (crop, detection, box) in enumerate(self._crops(img, found)):
                pid = point_id(item.source.factory, item.sha256, index)
                crops.append(crop)
                original_box = [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)] \
                    if box else None
                payloads.append((pid, {
                    "factory": item.source.factory,
                    **item.catalogue_payload(),
                    "photo_sha256": item.sha256,
                    "crop_index": index,
                    "box": original_box,
                    "detector_class": detection.label if detection else None,
                    "detector_confidence": round(detection.confidence, 4) if detection else None,
                    "width": original_box[2] - original_box[0] if original_box else photo_width,
                    "height": original_box[3] - original_box[1] if original_box else photo_height,
                    "photo_width": photo_width,
                    "photo_height": photo_height,
                    "crop_path": self._thumbnail_relpath(pid),
                    "model": self.embedder.model_id,
                    "background": self.background_remover.name if self.background_remover else None,
                    "ingested_at": now,
                }))

        # Thumbnails show the crop as photographed; the model sees it without background if asked.
        to_embed = self.background_remover.remove(crops) if self.background_remover else crops
        vectors = self.embedder.embed_images(to_embed)
        if not self._collection_ready:
            self.store.ensure_collection(self.embedder.model_id, int(vectors.shape[1]), text_model_of(self.embedder))
            self._collection_ready = True
        list(pool.map(lambda pair: save_thumbnail(pair[0], self.data_dir / pair[1][1]["crop_path"],
                                                  self.thumbnail_size), zip(crops, payloads)))
        try:
            # A photo edited in place (same path, new bytes): its old crops are stale.
            self._drop_replaced([item for item, _, _ in photos])
            points = [StoredPoint(pid, payload, vector) for (pid, payload), vector in zip(payloads, vectors)]
            self.store.upsert(points)
            if self.head_index is not None:
                self.head_index.upsert(points)
        except StoreUnavailable as exc:  # after the store's own retries: report, never drop silently
            report.photos_failed += [FailedPhoto(path_text(item.source.path), f"not stored: {exc}")
                                     for item, _, _ in photos]
            return
        report.photos_added += len(photos)
        report.crops_added += len(crops)

    def _crops(self, img, found: list[Detection]):
        """(crop image, detection or None, box or None) for each shoe; the whole photo if none."""
        if not found:
            yield img, None, None
            return
        for detection in found:
            box = expand_box(detection.box, self.crop_margin, img.width, img.height)
            yield img.crop(box), detection, box

    def _drop_replaced(self, items: Sequence[_Hashed]) -> None:
        by_path = {path_text(i.source.path): i for i in items}
        stale = [
            p for p in self.store.scroll({"photo_path": list(by_path)})
            if p.payload.get("factory") == by_path[p.payload["photo_path"]].source.factory
            and p.payload.get("photo_sha256") != by_path[p.payload["photo_path"]].sha256
        ]
        self._delete_points(stale)

    def _decode_or_error(self, path: Path):
        try:
            return load_photo_scaled(path, self.max_image_pixels, self.decode_max_side)
        except BadImage as exc:
            return FailedPhoto(path_text(path), str(exc))

    @staticmethod
    def _thumbnail_relpath(pid: str) -> str:
        return f"crops/{pid[:2]}/{pid}.jpg"

    # ------------------------------------------------------------------ remove

    def find(self, factory: str | None = None, path: Path | None = None) -> list[StoredPoint]:
        """Points of a factory and/or of photos at `path` (a file, or every photo under a folder)."""
        where = {"factory": [factory]} if factory else None
        points = self.store.scroll(where)
        if path is None:
            return list(points)
        target = path_text(Path(path).absolute())
        return [p for p in points
                if p.payload.get("photo_path") == target or p.payload.get("photo_path", "").startswith(target.rstrip("/") + "/")]

    def find_gone(self, factory: str, folder: Path, present: Iterable[Path]) -> list[StoredPoint]:
        """Points of `factory` whose photo lies under `folder` but is gone: not among `present`
        (the photos found there now) and no longer on disk.

        A photo moved or renamed within the folder is not gone: its bytes are among the present
        photos not indexed under their path (before `add` has updated it), so it stays. Photos
        elsewhere (manifest rows outside the folder, other factories) are never candidates.
        """
        prefix = path_text(Path(folder).absolute()).rstrip("/") + "/"
        stored = [p for p in self.store.scroll({"factory": [factory]})
                  if str(p.payload.get("photo_path", "")).startswith(prefix)]
        present = list(present)
        here = {path_text(path) for path in present}
        gone = [p for p in stored if p.payload.get("photo_path") not in here
                and not os.path.lexists(p.payload["photo_path"])]  # a file we did not list is not deleted
        if not gone:
            return []
        indexed_paths = {p.payload.get("photo_path") for p in stored}
        unindexed = [path for path in present if path_text(path) not in indexed_paths]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            moved = {h for h in pool.map(_hash_or_error, unindexed) if isinstance(h, str)}
        return [p for p in gone if p.payload.get("photo_sha256") not in moved]

    def prune(self, report: IngestReport, folder: Path, present: Iterable[Path], dry_run: bool = False) -> None:
        """Delete the points and thumbnails of `report.factory`'s gone photos under `folder` (see
        `find_gone`); with `dry_run` only count them. The counts and paths go into `report`."""
        gone = self.find_gone(report.factory, folder, present)
        report.pruned = sorted({str(p.payload["photo_path"]) for p in gone})
        report.photos_pruned, report.crops_pruned = len(report.pruned), len(gone)
        if not dry_run:
            self._delete_points(gone)

    def remove(self, points: Sequence[StoredPoint]) -> int:
        """Delete `points` (from `find`) and their thumbnails. Returns how many were deleted."""
        self._delete_points(points)
        return len(points)

    def _delete_points(self, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        self.store.delete([p.id for p in points])
        if self.head_index is not None:
            self.head_index.store.delete([p.id for p in points])
        for point in points:
            if point.payload.get("crop_path"):
                (self.data_dir / point.payload["crop_path"]).unlink(missing_ok=True)


def _hash_or_error(path: Path) -> str | FailedPhoto:
    try:
        if not path.is_file():  # a FIFO or device named .jpg would block or never end
            reason = "no such file (dangling link?)" if not path.exists() else "not a regular file"
            return FailedPhoto(path_text(path), reason)
        return file_sha256(path)
    except OSError as exc:
        return FailedPhoto(path_text(path), f"cannot read: {exc.strerror or exc}")
