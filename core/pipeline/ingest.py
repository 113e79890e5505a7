"""Ingest: photos -> hash -> (skip known) -> decode -> detect -> crop -> embed -> upsert.

The service takes its parts as arguments (store, embedder, detector), so tests can pass
tiny real models or a fake detector, and the CLI and the UI share one code path.

Each batch is written in an order where the last step commits it: thumbnails, then the head's
points, then the points (a point present means its thumbnail and head point are there); a
removal deletes head points, then points, then thumbnails. Both steps are recorded first in a
journal (`core.pipeline.journal`): the next `add` or `remove` replays what a killed run left, undoing an
uncommitted batch (its thumbnails and head points) and finishing a removal.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.catalogue.folders import path_text
from core.domain.ids import point_id
from core.domain.types import CropPayload, Detection, FailedPhoto, IngestReport, PhotoSource
from core.duplicates.photo_hash import PAYLOAD_KEY as PHASH_KEY
from core.duplicates.photo_hash import crop_phash
from core.errors import BadImage, DiskFull, ShoeSearchError, StoreUnavailable
from core.pipeline.batches import iter_batches
from core.pipeline.journal import Journal, crash_point
from core.store.base import Store, StoredPoint, check_model
from core.store.diskspace import DEFAULT_MIN_FREE_MB, require_free_space, writing
from core.vision.detector import Detector
from core.vision.embedder import Embedder, text_model_of
from core.vision.crops import model_inputs, prepare_crop
from core.vision.images import PixelBudget, file_sha256, read_photo, save_thumbnail

# Past this many points the embedded store builds its HNSW index after an ingest run.
OPTIMIZE_MIN_POINTS = 20_000
# Bytes a full-size decode may take per pixel, all told (see IngestService.memory_budget).
DECODE_BYTES_PER_PIXEL = 8

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
        return {**self.source.extras, "photo_path": path_text(self.source.path), "product_id": self.source.product_id}


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
        max_aspect_ratio: float | None = 20.0,
        max_file_bytes: int | None = 128_000_000,
        workers: int = 2,
        head_index=None,
        background_remover=None,
        min_free_mb: int = DEFAULT_MIN_FREE_MB,
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
        self.max_aspect_ratio = max_aspect_ratio
        self.max_file_bytes = max_file_bytes
        # Full-size decodes in flight (all workers) hold at most one MAX_IMAGE_PIXELS photo's pixels.
        self.decode_budget = PixelBudget(max_image_pixels)
        self.workers = workers
        self.head_index = head_index  # core.quality.head_index.HeadIndex: projected vectors kept in step
        self.background_remover = background_remover  # core.vision.background: applied before embedding only
        self.min_free_mb = min_free_mb
        self._journal: Journal | None = None
        self._collection_ready = False

    @property
    def journal(self) -> Journal:
        """The write journal of this collection (made when first needed)."""
        if self._journal is None:
            self._journal = Journal(self.data_dir / "journal" / self.store.collection)
        return self._journal

    def memory_budget(self) -> int | None:
        """The most bytes the photos of a run add to the process, above the models' own memory
        (None: MAX_FILE_MB or DECODE_MAX_SIDE is off, so there is no bound):

        - one full-size decode at a time (the pixel budget): MAX_IMAGE_PIXELS x 8 bytes (Pillow's
          4 bytes a pixel, a mode conversion, the reduction's intermediate);
        - the files being read, one per decode worker: workers x MAX_FILE_MB;
        - three batches of reduced photos (one prepared while the next is processed and the one
          before is written), at most DECODE_MAX_SIDE² x 4 bytes each; the batch being processed
          three times over (the photos, their crops, the model's own preprocessing copy), the one
          being written once (its crops: thumbnails and phashes).
        """
        if self.max_file_bytes is None or not self.decode_max_side:
            return None
        photo = min(self.decode_max_side ** 2, self.max_image_pixels) * 4
        return (self.max_image_pixels * DECODE_BYTES_PER_PIXEL + self.workers * self.max_file_bytes
                + (1 + 3 + 1) * self.batch_size * photo)

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
        self.recover()
        seen_keys: set[tuple[str, str]] = set()
        # Stages, each on its own thread(s), bounded to about one batch each: batch N+1 is hashed,
        # looked up and decoded (`ahead`) while the models work on batch N (`models`) and the
        # batch before is written (`writer`: phashes, thumbnails, journal, head and store upserts
        # in the journaled order, one write at a time, in order). When the models run through ONNX
        # Runtime (`_models_concurrent`), a batch goes to them as two halves started one after the
        # other: one half's CPU work (letterboxing, CLIP's preprocessing, NMS, crops) runs while the
        # other's model runs, so the cores stay with the models (see README, Benchmarks).
        try:
            with ThreadPoolExecutor(max_workers=self.workers) as pool, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-ahead") as ahead, \
                    ThreadPoolExecutor(max_workers=2, thread_name_prefix="ingest-models") as models, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
                flow = _Flow(self, report, pool, models, writer, progress)
                try:
                    pending = None
                    for batch in iter_batches(sources, self.batch_size):
                        prepared = ahead.submit(self._prepare, batch, report, seen_keys, pool)
                        if pending is not None:
                            flow.feed(pending[0].result(), pending[1])
                        pending = (prepared, batch)
                    if pending is not None:
                        flow.feed(pending[0].result(), pending[1])
                    flow.finish()
                except BaseException:
                    flow.abandon()  # let the work in flight end; the first error is the one raised
                    raise
        except DiskFull as exc:  # everything counted as added is stored; the rest waits for a rerun
            raise DiskFull(f"{exc} ({report.photos_added} photos were added before it stopped; the rerun "
                           f"adds the rest.)") from None
        if report.crops_added and self.store.count() >= OPTIMIZE_MIN_POINTS:
            self.store.optimize()
        report.seconds = time.perf_counter() - started
        return report

    def _models_concurrent(self) -> bool:
        """May detection and embedding run on two threads at once? Only when both run through
        ONNX Runtime or detection is off, not with torch or a model we do not know. Loads the
        models (their runtimes decide); called when the first
        photos reach them, so a rerun that adds nothing loads nothing. Each model says so itself
        (`concurrent`); one that does not say is taken as no."""
        for model in (self.detector, self.embedder):
            if hasattr(model, "load"):
                model.load()
        return all(getattr(model, "concurrent", False) for model in (self.detector, self.embedder))

    def _prepare(self, batch: Sequence[PhotoSource], report: IngestReport,
                 seen_keys: set[tuple[str, str]], pool: ThreadPoolExecutor) -> list:
        """Hash, skip known photos (updating moved ones), decode the new: [(item, image, original size)].

        The decode reads each new file once more and hashes those very bytes: the stored hash is
        always that of the stored pixels, even when the file was replaced after the first hash.
        """
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
                continue
            if result.sha256 != item.sha256:
                # Replaced between the two reads: these bytes are what gets stored, under their own
                # hash (point ids follow the hash, so storing them twice would only overwrite).
                item = _Hashed(item.source, result.sha256)
            photos.append((item, result.image, result.original_size))
        return photos

    def _store_parts(self, parts: list[_Processed], report: IngestReport, pool: ThreadPoolExecutor) -> None:
        """Phashes, thumbnails and upserts of one processed batch, in the journaled order."""
        photos = [photo for part in parts for photo in part.photos]
        crops = [crop for part in parts for crop in part.crops]
        payloads = [payload for part in parts for payload in part.payloads]
        vectors = np.vstack([part.vectors for part in parts])
        if not self._collection_ready:
            self.store.ensure_collection(self.embedder.model_id, int(vectors.shape[1]), text_model_of(self.embedder))
            self._collection_ready = True
        self._check_space("writing this batch's thumbnails")
        for (_, payload), value in zip(payloads, pool.map(crop_phash, crops)):  # for the clustering's phash tier
            payload[PHASH_KEY] = value
        points = [StoredPoint(pid, payload, vector) for (pid, payload), vector in zip(payloads, vectors)]
        try:
            # A photo edited in place (same path, new bytes): its old crops are stale.
            self._drop_replaced([item for item, _, _ in photos])
            with self._intent("add", points):
                crash_point("add.journaled")
                with writing(self.data_dir, "writing thumbnails"):
                    list(pool.map(lambda pair: save_thumbnail(pair[0], self.data_dir / pair[1][1]["crop_path"],
                                                              self.thumbnail_size), zip(crops, payloads)))
                crash_point("add.after_thumbnails")
                if self.head_index is not None:
                    self.head_index.upsert(points)
                crash_point("add.after_head")
                self.store.upsert(points)  # the commit: a stored point has its thumbnail and head point
                crash_point("add.after_main")
        except StoreUnavailable as exc:  # after the store's own retries: report, never drop silently
            report.photos_failed += [FailedPhoto(path_text(item.source.path), f"not stored: {exc}")
                                     for item, _, _ in photos]
            return
        report.photos_added += len(photos)
        report.crops_added += len(crops)

    def _process_isolated(self, photos: list, report: IngestReport) -> list[_Processed]:
        """`_process` the batch; if that fails, each photo alone, so one bad photo (a model error,
        memory) is reported by itself and never sinks the good photos beside it."""
        try:
            return [self._process(photos)]
        except Exception as exc:
            if _fatal(exc):
                raise
            if len(photos) == 1:
                report.photos_failed.append(FailedPhoto(path_text(photos[0][0].source.path), _reason(exc)))
                return []
        parts = []
        for photo in photos:
            try:
                parts.append(self._process([photo]))
            except Exception as exc:
                if _fatal(exc):
                    raise
                report.photos_failed.append(FailedPhoto(path_text(photo[0].source.path), _reason(exc)))
        return parts

    def _process(self, photos: list) -> _Processed:
        """Detect, crop and embed decoded photos [(item, image, original size)]."""
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
                computed = CropPayload(
                    factory=item.source.factory,
                    product_id=item.source.product_id,
                    photo_path=path_text(item.source.path),
                    photo_sha256=item.sha256,
                    crop_index=index,
                    box=original_box,
                    detector_class=detection.label if detection else None,
                    detector_confidence=round(detection.confidence, 4) if detection else None,
                    width=original_box[2] - original_box[0] if original_box else photo_width,
                    height=original_box[3] - original_box[1] if original_box else photo_height,
                    photo_width=photo_width,
                    photo_height=photo_height,
                    crop_path=self._thumbnail_relpath(pid),
                    model=self.embedder.model_id,
                    background=self.background_remover.name if self.background_remover else None,
                    ingested_at=now,
                )
                payloads.append((pid, computed.to_payload(item.source.extras)))

        # Thumbnails show the crop as photographed; the model sees it without background if asked.
        vectors = self.embedder.embed_images(model_inputs(crops, self.background_remover))
        if len(vectors) != len(crops):
            raise RuntimeError(f"the embedder returned {len(vectors)} vectors for {len(crops)} crops")
        return _Processed(photos, crops, payloads, vectors)

    def _crops(self, img, found: list[Detection]):
        """(crop image, detection or None, box or None) for each shoe; the whole photo if none."""
        if not found:
            yield prepare_crop(img, None, self.crop_margin)[0], None, None
            return
        for detection in found:
            crop, box = prepare_crop(img, detection.box, self.crop_margin)
            yield crop, detection, box

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
            return read_photo(path, self.max_image_pixels, self.decode_max_side, max_aspect_ratio=self.max_aspect_ratio,
                              max_bytes=self.max_file_bytes, budget=self.decode_budget)
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
        self.recover()
        self._delete_points(points)
        return len(points)

    def _delete_points(self, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        with self._intent("remove", points):
            crash_point("remove.journaled")
            self._delete_steps([p.id for p in points], [p.payload.get("crop_path") for p in points])

    def _delete_steps(self, ids: list[str], thumbnails: list[str | None]) -> None:
        """Head points, then points, then thumbnails: a photo search never finds a removed photo,
        and a rerun of `remove` still finds what is left to remove."""
        if self.head_index is not None:
            self.head_index.store.delete(ids)
        crash_point("remove.after_head")
        self.store.delete(ids)
        crash_point("remove.after_main")
        with writing(self.data_dir, "deleting thumbnails"):
            for relpath in thumbnails:
                if relpath:
                    (self.data_dir / relpath).unlink(missing_ok=True)

    # ------------------------------------------------------------------ crash recovery

    def _intent(self, op: str, points: Sequence[StoredPoint]):
        """Record the ids and thumbnails of a multi-step write before it starts (see module doc)."""
        return self.journal.intent(op, ids=[p.id for p in points],
                                   thumbnails=[p.payload.get("crop_path") for p in points])

    def _check_space(self, doing: str) -> None:
        self.store.check_writable(doing)
        if self.head_index is not None:
            self.head_index.store.check_writable(doing)
        require_free_space(self.data_dir, self.min_free_mb, doing)

    def recover(self) -> int:
        """Replay what killed runs left in the journal: a batch of `add` that was not committed
        (its points are absent) loses its thumbnails and head points, a committed one gets any
        missing head point; a `remove` is finished. Returns how many records were replayed."""
        self._check_space("writing to the index")
        replayed = 0
        with writing(self.data_dir, "replaying the journal"):
            for record in self.journal.pending():
                ids, thumbnails = list(record.get("ids", [])), list(record.get("thumbnails", []))
                if record.get("op") == "remove":
                    self._delete_steps(ids, thumbnails)
                elif record.get("op") == "add":
                    stored = self.store.retrieve(ids, with_vectors=self.head_index is not None)
                    present = {p.id for p in stored}
                    absent = [pid for pid in ids if pid not in present]
                    if self.head_index is not None:
                        self.head_index.store.delete(absent)
                        self.head_index.upsert(stored)
                    with writing(self.data_dir, "deleting thumbnails"):
                        for pid, relpath in zip(ids, thumbnails):
                            if relpath and pid not in present:
                                (self.data_dir / relpath).unlink(missing_ok=True)
                replayed += 1
        return replayed


class _Flow:
    """Photos through the models and the writer, in order, with bounded work in flight.

    `feed` hands a decoded batch to the models (whole, or as two halves); at most `in_flight`
    model calls run or wait at once, and the oldest is retired first: its crops go to the writer
    once the previous write has finished. `progress` is called on the calling thread when the
    last part of a batch is stored (or failed), so its count means "stored"."""

    def __init__(self, service: IngestService, report: IngestReport, pool: ThreadPoolExecutor,
                 models: ThreadPoolExecutor, writer: ThreadPoolExecutor, progress: ProgressFn | None) -> None:
        self.service, self.report, self.pool = service, report, pool
        self.models, self.writer, self.progress = models, writer, progress
        self.in_flight = 0  # model calls at once: 2 (halves) or 1, decided when photos first arrive
        self.done = 0
        self._models: deque = deque()  # (future or None, batch tag or None), oldest first
        self._write = None  # (future or None, batch tag or None)

    def feed(self, photos: list, batch: Sequence[PhotoSource]) -> None:
        tag = (len(batch), str(batch[-1].path))
        if photos and not self.in_flight:
            self.in_flight = 2 if self.service._models_concurrent() else 1
        halves = self.in_flight == 2
        size = -(-len(photos) // 2) if halves and len(photos) > 1 else max(len(photos), 1)
        chunks = [photos[start:start + size] for start in range(0, len(photos), size)] or [[]]
        for k, chunk in enumerate(chunks):
            while chunk and len(self._models) >= self.in_flight:
                self._retire()
            future = self.models.submit(self.service._process_isolated, chunk, self.report) if chunk else None
            self._models.append((future, tag if k == len(chunks) - 1 else None))

    def finish(self) -> None:
        while self._models:
            self._retire()
        self._wait_write()

    def abandon(self) -> None:
        """Wait for everything in flight, keeping quiet about its errors."""
        pending = [future for future, _ in self._models] + [self._write[0] if self._write else None]
        self._models.clear()
        self._write = None
        for future in pending:
            if future is not None:
                try:
                    future.result()
                except BaseException:  # noqa: BLE001
                    pass

    def _retire(self) -> None:
        future, tag = self._models.popleft()
        parts = future.result() if future is not None else []
        # The writer keeps the crops, not the decoded photos (memory_budget).
        parts = [_Processed([(item, None, size) for item, _, size in part.photos], part.crops, part.payloads,
                            part.vectors) for part in parts]
        self._wait_write()  # raises what the previous write raised (disk full, a fatal store error)
        write = self.writer.submit(self.service._store_parts, parts, self.report, self.pool) if parts else None
        self._write = (write, tag)
        if write is None:
            self._wait_write()

    def _wait_write(self) -> None:
        if self._write is None:
            return
        future, tag = self._write
        self._write = None
        if future is not None:
            future.result()
        if tag is not None:
            self.done += tag[0]
            if self.progress:
                self.progress(self.done, tag[1])


@dataclass
class _Processed:
    """Photos that went through detection and embedding, with their crops' payloads and vectors."""

    photos: list
    crops: list
    payloads: list[tuple[str, dict[str, Any]]]
    vectors: np.ndarray


def _fatal(exc: BaseException) -> bool:
    """Errors that stop the run rather than one photo: a model or the store is unusable, a
    schema mismatch (each comes with its own one-line message)."""
    return isinstance(exc, ShoeSearchError) and not isinstance(exc, BadImage)


def _reason(exc: BaseException) -> str:
    """One line for the report: why this photo could not be processed."""
    if isinstance(exc, MemoryError):
        return "cannot process: not enough memory for this photo"
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"cannot process: {type(exc).__name__}" + (f": {text}" if text else "")


def _hash_or_error(path: Path) -> str | FailedPhoto:
    try:
        if not path.is_file():  # a FIFO or device named .jpg would block or never end
            reason = "no such file (dangling link?)" if not path.exists() else "not a regular file"
            return FailedPhoto(path_text(path), reason)
        return file_sha256(path)
    except OSError as exc:
        return FailedPhoto(path_text(path), f"cannot read: {exc.strerror or exc}")
