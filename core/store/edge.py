"""EdgeStore: Qdrant's own engine in process (qdrant-edge-py), the embedded default under DATA_DIR.

One Edge shard per collection in `DATA_DIR/qdrant-edge/<collection>/`, its model record beside
it in `<collection>.json`. Edge has no lock of its own and a second process opening a live shard
breaks it, so the store holds core/store/lock.py's exclusive lock for as long as it is open
(a search UI holding it serves it to other processes: core/store/host.py). Edge maps its files
into memory, so on a full disk a write would die by SIGBUS: each write first checks
MIN_FREE_DISK_MB (core/store/diskspace.py). Edge cannot open read-only files, so a read-only
store (or one on a disk below the margin) is read from a private sparse copy. Unless told
otherwise (`exact=False`), queries run exact up to EXACT_QUERY_MAX_POINTS, filtered ones always
(Edge's HNSW misses hits).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.domain.types import Hit
from core.errors import DiskFull, ReadOnlyData, StoreUnavailable
from core.store.base import (
    EXACT_QUERY_MAX_POINTS,
    HNSW_EF,
    INDEXED_KEYWORDS,
    SCHEMA_VERSION,
    VECTOR_NAME,
    CollectionInfo,
    StoredPoint,
    Where,
    _check_recommend,
    _conditions,
    _stored_point,
    _vector_list,
    average_vector,
    check_model,
)
from core.store.diskspace import DEFAULT_MIN_FREE_MB, free_mb, is_read_only_error, require_free_space
from core.store.lock import ProcessLock, ReadLock, copy_sparse


class EdgeStore:
    """The embedded store: one Qdrant Edge shard per collection under `directory`.

    Writes stop with DiskFull while the disk has less than `min_free_mb` MB free. Edge writes
    even to open a shard (it replays its log into mapped files), so two cases read a private copy
    in the temporary folder (TMPDIR) and refuse writes: a folder this process cannot write
    (`read_only`; writes raise ReadOnlyData) and a disk below the margin (writes raise DiskFull;
    if the copy finds no room either, the shard is opened in place, which works unless a write
    killed on that full disk left a log to replay).
    """

    def __init__(self, directory: Path, collection: str, min_free_mb: int = DEFAULT_MIN_FREE_MB,
                 lock_wait: float = 0.0, on_wait=None, while_busy=None) -> None:
        """`lock_wait`: seconds to wait for another process's lock on this store (0: fail at once);
        `on_wait(holder, seconds)` is told when that waiting starts (the CLI prints it);
        `while_busy()` is called whenever the lock is found busy and may raise to stop waiting."""
        import qdrant_edge  # noqa: F401  (fail here, clearly, if the package is missing)

        self.collection = collection
        self.directory = Path(directory)
        self.shard_dir = self.directory / collection
        self.meta_path = self.directory / f"{collection}.json"
        self.location = f"embedded store {self.shard_dir}"
        self.min_free_mb = min_free_mb
        self.lock_wait = lock_wait
        self.read_only = False
        self._copy: Path | None = None  # the private copy a read-only or full-disk store is read from
        self._lock = threading.RLock()
        self._info: CollectionInfo | None = None  # the record never changes once written
        try:
            self._process_lock = ProcessLock(self.directory / f"{collection}.lock", str(self.shard_dir),
                                              wait=lock_wait, on_wait=on_wait, while_busy=while_busy)
        except OSError as exc:
            if not is_read_only_error(exc):
                raise
            self.read_only = True
            self._process_lock = ReadLock(self.directory / f"{collection}.lock", str(self.shard_dir))
        self._shard = None
        try:
            if self.meta_path.exists():
                self._shard = self._load(copy=self.read_only or free_mb(self.directory) < min_free_mb)
        except BaseException:
            self._discard_copy()
            self._process_lock.release()
            raise

    def _load(self, copy: bool):
        from qdrant_edge import EdgeShard

        path = self.shard_dir
        if copy:
            try:
                self._copy = Path(tempfile.mkdtemp(prefix=f"shoe-search-readonly-{self.collection}-"))
                copy_sparse(self.shard_dir, self._copy / self.collection)
                path = self._copy / self.collection
            except OSError as exc:
                self._discard_copy()
                if self.read_only:
                    raise StoreUnavailable(
                        f"The {self.location} is read-only, and copying it to the temporary folder to read it "
                        f"failed ({exc.strerror or exc}): make it writable, or set TMPDIR to a folder with room "
                        f"for it.") from exc
        try:
            return EdgeShard.load(str(path))
        except Exception as exc:
            raise StoreUnavailable(f"Cannot open the embedded store {self.shard_dir}: {exc}") from exc

    def _discard_copy(self) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    servable = True  # this process holds it: a search UI serves it to other processes
    holder = None

    def beside(self, collection: str, write: bool = False):
        """`collection` under the same folder, opened as this one was (reached through its holder
        when a search UI serves it)."""
        from core.store.host import open_embedded

        return open_embedded(self.directory, collection, wait=self.lock_wait, write=write,
                             min_free_mb=self.min_free_mb)

    def check_writable(self, doing: str = "writing to the index", extra_mb: float = 0) -> None:
        if self.read_only:
            raise ReadOnlyData(f"The {self.location} is read-only for this user: searches and stats work, "
                               f"{doing} does not. Make DATA_DIR writable to change the index.")
        require_free_space(self.directory, self.min_free_mb, doing, extra_mb)
        if self._copy is not None:  # opened on a full disk, and space was freed since: writes need a reopen
            raise DiskFull(f"The disk of {self.directory} was below MIN_FREE_DISK_MB ({self.min_free_mb} MB) "
                           f"when the index was opened, so it was opened for reading only: stopped before "
                           f"{doing}. Rerun the command.")

    def info(self) -> CollectionInfo | None:
        if self._info is None and self.meta_path.exists():  # read once, not on every query
            meta = json.loads(self.meta_path.read_text())
            self._info = CollectionInfo(meta["model"], int(meta["dimension"]), int(meta.get("schema_version", 1)),
                                        str(meta.get("text_model", "")))
        return self._info

    def ensure_collection(self, model: str, dimension: int, text_model: str | None = None) -> CollectionInfo:
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, PayloadSchemaType, UpdateOperation

        with self._lock:
            info = self.info()
            if info is not None:
                check_model(info, self.collection, self.location, model, dimension, text_model)
                return info
            self.check_writable("creating the collection")
            config = EdgeConfig(vectors={VECTOR_NAME: EdgeVectorParams(size=dimension, distance=Distance.Cosine)})
            if self.shard_dir.exists() and any(self.shard_dir.iterdir()):
                # A shard without its record: left by a run killed between the two writes.
                shard = EdgeShard.load(str(self.shard_dir))
            else:
                shard = EdgeShard.create(str(self.shard_dir), config)
            for key in INDEXED_KEYWORDS:
                shard.update(UpdateOperation.create_field_index(key, PayloadSchemaType.Keyword))
            shard.flush()
            info = CollectionInfo(model, dimension, text_model=text_model or "")
            tmp = self.meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({
                "model": model, "dimension": dimension, "schema_version": SCHEMA_VERSION,
                **({"text_model": info.text_model} if info.text_model else {}),
                "vector": VECTOR_NAME, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }, indent=2))
            tmp.replace(self.meta_path)
            self._shard = shard
            self._info = info
            return info

    def _require(self):
        if self._shard is None:
            raise StoreUnavailable(f"The {self.location} has no collection yet: ingest photos first.")
        return self._shard

    @staticmethod
    def _filter(where: Where | None):
        from qdrant_edge import FieldCondition, Filter, MatchAny, MatchSubstring, MatchValue

        if not where:
            return None
        return Filter(must=_conditions(where, MatchValue, MatchAny, MatchSubstring,
                                       lambda key, match: FieldCondition(key, match=match)))

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        from qdrant_edge import Point, UpdateOperation

        if not points:
            return
        with self._lock:
            self.check_writable(f"storing {len(points)} points")
            self._require().update(UpdateOperation.upsert_points(
                [Point(p.id, {VECTOR_NAME: _vector_list(p.vector)}, p.payload) for p in points]
            ))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids or self._shard is None:
            return []
        with self._lock:
            records = self._shard.retrieve(list(ids), True, with_vectors)
        return [_stored_point(r, with_vectors) for r in records]

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        from qdrant_edge import UpdateOperation

        if ids:
            with self._lock:
                self.check_writable(f"updating {len(ids)} payloads")
                self._require().update(UpdateOperation.set_payload(list(ids), payload))

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if ids and self._shard is not None:
            with self._lock:
                self.check_writable(f"deleting {len(ids)} points")
                self._shard.update(UpdateOperation.delete_points(list(ids)))

    def query(self, vector, where=None, limit=10, score_threshold=None, exact=None) -> list[Hit]:
        from qdrant_edge import Query, QueryRequest, SearchParams

        if self._shard is None:
            return []
        with self._lock:
            # Edge's HNSW misses hits, badly so when filtered (recall ~0.4): exact unless huge.
            if exact is None:
                exact = bool(where) or self._shard.info().points_count <= EXACT_QUERY_MAX_POINTS
            request = QueryRequest(
                limit=limit,
                query=Query.Nearest(_vector_list(vector), using=VECTOR_NAME),
                filter=self._filter(where),
                with_payload=True,
                score_threshold=score_threshold,
                params=SearchParams(exact=True) if exact else SearchParams(hnsw_ef=max(HNSW_EF, 4 * limit)),
            )
            points = self._shard.query(request)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def recommend(self, positive, negative=(), where=None, limit=10, score_threshold=None,
                  strategy="average_vector") -> list[Hit]:
        from qdrant_edge import Query, QueryRequest, RecommendQuery, SearchParams

        _check_recommend(positive, negative, strategy)
        if strategy == "average_vector":  # Edge has no average strategy: the same formula, then nearest
            return self.query(average_vector(positive, negative), where=where, limit=limit,
                              score_threshold=score_threshold)
        if self._shard is None:
            return []
        make = Query.RecommendBestScore if strategy == "best_score" else Query.RecommendSumScores
        examples = RecommendQuery([_vector_list(v) for v in positive], [_vector_list(v) for v in negative])
        with self._lock:
            exact = bool(where) or self._shard.info().points_count <= EXACT_QUERY_MAX_POINTS  # as `query`
            points = self._shard.query(QueryRequest(
                limit=limit, query=make(examples, using=VECTOR_NAME), filter=self._filter(where),
                with_payload=True, score_threshold=score_threshold,
                params=SearchParams(exact=True) if exact else SearchParams(hnsw_ef=max(HNSW_EF, 4 * limit))))
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def scroll(self, where=None, with_vectors=False, batch_size=512) -> Iterator[StoredPoint]:
        from qdrant_edge import ScrollRequest

        if self._shard is None:
            return
        offset = None
        while True:
            with self._lock:
                records, offset = self._shard.scroll(ScrollRequest(
                    offset=offset, limit=batch_size, filter=self._filter(where),
                    with_payload=True, with_vector=with_vectors,
                ))
            for record in records:
                yield _stored_point(record, with_vectors)
            if offset is None:
                return

    def count(self, where=None) -> int:
        from qdrant_edge import CountRequest

        if self._shard is None:
            return 0
        with self._lock:
            return int(self._shard.count(CountRequest(exact=True, filter=self._filter(where))))

    def facet(self, key: str, where=None) -> dict[str, int]:
        from qdrant_edge import FacetRequest

        if self._shard is None:
            return {}
        with self._lock:
            response = self._shard.facet(FacetRequest(key, limit=100_000, exact=True, filter=self._filter(where)))
        # Edge's exact facet keeps values whose points were all deleted, with count 0.
        return {str(hit.value): int(hit.count) for hit in response.hits if hit.count > 0}

    def optimize(self) -> None:
        """Build the HNSW index (unfiltered queries); blocking."""
        if self._shard is not None:
            with self._lock:
                # Optimizing writes a new copy of the segment before it drops the old one.
                size_mb = sum(f.stat().st_blocks * 512 for f in self.shard_dir.rglob("*") if f.is_file()) / 2**20
                self.check_writable("building the search index", extra_mb=size_mb)
                self._shard.optimize()
                self._shard.flush()

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
            self._discard_copy()
            self._process_lock.release()
