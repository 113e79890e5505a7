"""The vector store: the only module that imports a vector-database library.

One contract (`Store`), two backends:
- `EdgeStore`: Qdrant's own engine in process (qdrant-edge-py), the embedded default under
  DATA_DIR. Edge has no lock of its own and a second process opening a live shard breaks it,
  so the store holds an exclusive file lock for as long as it is open. Edge maps its files into
  memory: on a full disk a write dies by SIGBUS, so each write first checks MIN_FREE_DISK_MB;
  Edge cannot open read-only files, so a read-only store is read from a private copy.
- `QdrantClientStore`: qdrant-client against a Qdrant server (`QDRANT_URL`), or against
  qdrant-client's local mode (same API, used by the tests).

Edge's HNSW also misses neighbours unfiltered (recall@10 0.66 measured at 100k synthetic
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

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.diskspace import DEFAULT_MIN_FREE_MB, free_mb, is_read_only_error, require_free_space
from core.errors import DiskFull, ReadOnlyData, SchemaMismatch, StoreLocked, StoreUnavailable
from core.models import Hit

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


# --------------------------------------------------------------------------- Edge (embedded)


class _ProcessLock:
    """An exclusive flock on a file that records who holds it.

    The kernel drops a flock when its process dies (even by kill -9), so a crash never
    leaves the store locked. With `wait` > 0 a busy lock is retried for that many seconds
    (`on_wait(holder, wait)` is called once, when waiting starts) before giving up.
    `while_busy()` is called each time the lock is found busy; it may raise to stop trying
    (core/store_host.py raises when the holder serves the store to other processes).
    """

    poll_seconds = 0.1

    def __init__(self, path: Path, what: str, wait: float = 0.0, on_wait=None, while_busy=None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire(what, wait, on_wait, while_busy)
        except BaseException:  # busy past the wait, or Ctrl-C while waiting
            os.close(self._fd)
            self._fd = -1
            raise
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk must not stop reads
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} ({' '.join(Path(a).name for a in sys.argv[:2])})".encode(), 0)

    def _acquire(self, what: str, wait: float, on_wait, while_busy=None) -> None:
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if while_busy is not None:
                while_busy()
            if time.monotonic() >= deadline:
                if wait > 0:
                    raise StoreLocked(
                        f"The embedded store {what} is still in use by process {self._holder()} after waiting "
                        f"{wait:g}s. Wait longer (--wait SECONDS or STORE_LOCK_WAIT), stop it, or point the "
                        f"UI/CLI at a Qdrant server with QDRANT_URL."
                    )
                raise StoreLocked(
                    f"The embedded store {what} is in use by process {self._holder()}. Wait for it to finish "
                    f"(--wait SECONDS or STORE_LOCK_WAIT waits for it), stop it, or point the UI/CLI at a "
                    f"Qdrant server with QDRANT_URL."
                )
            if not told and on_wait is not None:
                on_wait(self._holder(), wait)
                told = True
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _holder(self) -> str:
        return os.pread(self._fd, 512, 0).decode("utf-8", "replace").strip() or "another process"

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class _ReadLock:
    """A shared flock on an existing lock file, for reading a store we cannot write: it waits
    for no one, but a writer (who wants it exclusive) cannot start while we read."""

    def __init__(self, path: Path, what: str) -> None:
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # no lock file in a folder nobody may write: nobody writes there
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            raise StoreLocked(f"The embedded store {what} is in use by process {holder}. Wait for it to "
                              f"finish (or stop it).") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _copy_sparse(source: Path, target: Path) -> None:
    """Copy a folder tree keeping holes as holes (Edge's files are mostly unwritten space)."""
    for root, _, files in os.walk(source):
        folder = target / Path(root).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)  # writable, whatever the source's mode
        for name in files:
            with open(Path(root) / name, "rb") as src, open(folder / name, "wb") as dst:
                size = os.fstat(src.fileno()).st_size
                offset = 0
                while offset < size:
                    try:
                        start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
                    except OSError as exc:
                        if exc.errno == errno.ENXIO:  # only a hole is left
                            break
                        raise
                    end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
                    src.seek(start)
                    dst.seek(start)
                    while start < end:
                        chunk = src.read(min(end - start, 1 << 20))
                        if not chunk:
                            break
                        dst.write(chunk)
                        start += len(chunk)
                    offset = end
                dst.truncate(size)


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
        self.read_only = False
        self._copy: Path | None = None  # the private copy a read-only or full-disk store is read from
        self._lock = threading.RLock()
        self._info: CollectionInfo | None = None  # the record never changes once written
        try:
            self._process_lock = _ProcessLock(self.directory / f"{collection}.lock", str(self.shard_dir),
                                              wait=lock_wait, on_wait=on_wait, while_busy=while_busy)
        except OSError as exc:
            if not is_read_only_error(exc):
                raise
            self.read_only = True
            self._process_lock = _ReadLock(self.directory / f"{collection}.lock", str(self.shard_dir))
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
                _copy_sparse(self.shard_dir, self._copy / self.collection)
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


# --------------------------------------------------------------------------- qdrant-client


def _is_transient(exc: Exception) -> bool:
    """Errors worth a retry: the connection failed, timed out, or the server was busy."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        return status in (408, 429, 500, 502, 503, 504)
    name = type(exc).__name__
    return name in {"ResponseHandlingException", "ConnectError", "ReadTimeout", "WriteTimeout", "ConnectTimeout",
                    "RemoteProtocolError", "TimeoutException", "ConnectionError", "TimeoutError"} \
        or isinstance(exc, (ConnectionError, TimeoutError))


@dataclass(frozen=True)
class ServerCollectionConfig:
    """How a collection is laid out on a Qdrant server or cluster, and how it is searched.

    The defaults send nothing: Qdrant's own defaults, exactly the requests of one server before
    these settings existed. Layout (shards, replicas, write consistency, tenant index,
    quantization, on-disk vectors) applies when the collection is created; the search part
    (read consistency, HNSW ef, rescoring with oversampling) applies to every query and scroll.
    """

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    read_consistency: str = ""  # "", "all", "majority", "quorum" or a number of replicas
    tenant_index: bool = False  # `factory` as a keyword index with is_tenant=true
    quantization: str = "none"  # "none" | "int8" (scalar, kept in RAM)
    vectors_on_disk: bool = False
    rescore: bool = True
    oversampling: float = 2.0
    hnsw_ef: int | None = None

    def create_arguments(self) -> dict[str, Any]:
        """create_collection's keyword arguments beyond the vectors (only those set)."""
        from qdrant_client import models

        arguments: dict[str, Any] = {key: value for key, value in (
            ("shard_number", self.shard_number), ("replication_factor", self.replication_factor),
            ("write_consistency_factor", self.write_consistency_factor)) if value is not None}
        if self.quantization == "int8":
            arguments["quantization_config"] = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True))
        return arguments

    def vector_params(self, dimension: int):
        from qdrant_client import models

        extra = {"on_disk": True} if self.vectors_on_disk else {}
        return models.VectorParams(size=dimension, distance=models.Distance.COSINE, **extra)

    def index_schema(self, key: str):
        """The payload index of `key`: keyword; `factory` as the tenant key when asked."""
        from qdrant_client import models

        if key == "factory" and self.tenant_index:
            return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
        return models.PayloadSchemaType.KEYWORD

    def search_params(self, exact: bool | None):
        """SearchParams for a query (None when nothing is to be said, as before)."""
        from qdrant_client import models

        quantization = None
        if self.quantization == "int8":
            # exact means exact: the original vectors, not their int8 copy.
            quantization = (models.QuantizationSearchParams(ignore=True) if exact else
                            models.QuantizationSearchParams(rescore=self.rescore, oversampling=self.oversampling))
        given = {"exact": exact, "hnsw_ef": None if exact else self.hnsw_ef, "quantization": quantization}
        given = {key: value for key, value in given.items() if value is not None}
        return models.SearchParams(**given) if given else None

    def read_arguments(self) -> dict[str, Any]:
        """`consistency=` for reads (searches, scrolls of clustering/eval/export), only when set."""
        from qdrant_client import models

        if not self.read_consistency:
            return {}
        if self.read_consistency.isdigit():
            return {"consistency": int(self.read_consistency)}
        return {"consistency": models.ReadConsistencyType(self.read_consistency)}


class QdrantClientStore:
    """A collection through qdrant-client: a Qdrant server, or qdrant-client's local mode.

    Writes are retried with exponential backoff on transient errors; a write that still fails
    raises StoreUnavailable (the ingest reports the photos of that batch as failed).
    `config` lays out a new collection and tunes queries on a server or cluster.
    """

    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

    def __init__(self, client, collection: str, location: str, config: ServerCollectionConfig | None = None) -> None:
        self.client = client
        self.collection = collection
        self.location = location
        self.config = config or ServerCollectionConfig()
        # Known once the collection exists (its model and size never change): a search then costs
        # one request, not three. Forgotten if the collection vanishes (see `_read`).
        self._info: CollectionInfo | None = None
        # qdrant-client's local mode is not safe for writes during reads; a server is.
        self._lock = threading.RLock() if client._client.__class__.__name__ == "QdrantLocal" else contextlib.nullcontext()

    @classmethod
    def connect(cls, url: str, api_key: str, collection: str,
                config: ServerCollectionConfig | None = None) -> QdrantClientStore:
        """Connect to a Qdrant server and check that it answers (and accepts the key)."""
        from qdrant_client import QdrantClient

        client = QdrantClient(url=url, api_key=api_key or None, timeout=30)
        try:
            client.get_collections()
        except Exception as exc:
            text = str(exc)
            if "401" in text or "403" in text or "nauthorized" in text or "orbidden" in text:
                raise StoreUnavailable(
                    f"Qdrant at {url} refused the API key: set QDRANT_API_KEY to the server's key."
                ) from exc
            raise StoreUnavailable(
                f"Cannot reach Qdrant at {url} ({type(exc).__name__}). Start it (docker compose up -d qdrant), "
                f"fix QDRANT_URL, or leave QDRANT_URL empty to use the embedded store."
            ) from exc
        return cls(client, collection, f"Qdrant server {url}", config)

    def info(self) -> CollectionInfo | None:
        if self._info is not None:
            return self._info
        with self._lock:
            if not self.client.collection_exists(self.collection):
                return None
            config = self.client.get_collection(self.collection).config
        meta = config.metadata or {}
        vectors = config.params.vectors
        dimension = vectors[VECTOR_NAME].size if isinstance(vectors, dict) and VECTOR_NAME in vectors else 0
        self._info = CollectionInfo(str(meta.get("model", "?")), int(meta.get("dimension", dimension)),
                                    int(meta.get("schema_version", SCHEMA_VERSION)), str(meta.get("text_model", "")))
        return self._info

    def ensure_collection(self, model: str, dimension: int, text_model: str | None = None) -> CollectionInfo:
        from qdrant_client import models

        info = self.info()
        if info is not None:
            check_model(info, self.collection, self.location, model, dimension, text_model)
            return info
        with self._lock:
            self.client.create_collection(
                self.collection,
                vectors_config={VECTOR_NAME: self.config.vector_params(dimension)},
                # "text_model" only when set: a default collection is created with the same request as before
                metadata={"model": model, "dimension": dimension, "schema_version": SCHEMA_VERSION,
                          **({"text_model": text_model} if text_model else {})},
                **self.config.create_arguments(),
            )
            with warnings.catch_warnings():  # local mode says payload indexes do nothing there
                warnings.simplefilter("ignore", UserWarning)
                for key in INDEXED_KEYWORDS:
                    self.client.create_payload_index(self.collection, key, self.config.index_schema(key))
        self._info = CollectionInfo(model, dimension, text_model=text_model or "")
        return self._info

    @staticmethod
    def _filter(where: Where | None):
        from qdrant_client import models

        if not where:
            return None
        return models.Filter(must=_conditions(
            where, lambda v: models.MatchValue(value=v), lambda vs: models.MatchAny(any=vs),
            lambda text: models.MatchSubstring(substring=text),
            lambda key, match: models.FieldCondition(key=key, match=match)))

    def _exists(self) -> bool:
        return self.info() is not None

    def _read(self, read, empty):
        """`read()` if the collection exists, else `empty`; a collection deleted behind our back
        (while its record was cached) also answers `empty`."""
        if not self._exists():
            return empty
        try:
            with self._lock:
                return read()
        except Exception as exc:
            vanished = getattr(exc, "status_code", None) == 404 or (
                isinstance(exc, ValueError) and "not found" in str(exc).lower())
            if not vanished:
                raise
            self._info = None
            return empty

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        structs = [models.PointStruct(id=p.id, vector={VECTOR_NAME: _vector_list(p.vector)}, payload=p.payload)
                   for p in points]
        self._write(lambda: self.client.upsert(self.collection, points=structs, wait=True), f"upsert of {len(points)} points")

    def _write(self, operation, what: str) -> None:
        """Run a write, retrying transient failures with backoff."""
        for attempt, delay in enumerate((*self.retry_delays, None), start=1):
            try:
                with self._lock:
                    operation()
                return
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                if delay is None:
                    raise StoreUnavailable(
                        f"{what} to {self.location} failed after {attempt} tries ({type(exc).__name__}: {exc})"
                    ) from exc
                time.sleep(delay)

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._read(lambda: self.client.retrieve(self.collection, list(ids), with_payload=True,
                                                          with_vectors=with_vectors), [])
        return [_stored_point(r, with_vectors) for r in records]

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            self._write(lambda: self.client.set_payload(self.collection, payload=payload, points=list(ids), wait=True),
                        f"payload update of {len(ids)} points")

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids and self._exists():
            self._write(lambda: self.client.delete(self.collection, models.PointIdsList(points=list(ids)), wait=True),
                        f"delete of {len(ids)} points")

    def query(self, vector, where=None, limit=10, score_threshold=None, exact=None) -> list[Hit]:
        points = self._read(lambda: self.client.query_points(
            self.collection, query=_vector_list(vector), using=VECTOR_NAME,
            query_filter=self._filter(where), limit=limit, with_payload=True,
            score_threshold=score_threshold,
            search_params=self.config.search_params(exact), **self.config.read_arguments(),
        ).points, [])
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def recommend(self, positive, negative=(), where=None, limit=10, score_threshold=None,
                  strategy="average_vector") -> list[Hit]:
        from qdrant_client import models

        _check_recommend(positive, negative, strategy)
        query = models.RecommendQuery(recommend=models.RecommendInput(
            positive=[_vector_list(v) for v in positive], negative=[_vector_list(v) for v in negative],
            strategy=models.RecommendStrategy(strategy)))
        points = self._read(lambda: self.client.query_points(
            self.collection, query=query, using=VECTOR_NAME, query_filter=self._filter(where), limit=limit,
            with_payload=True, score_threshold=score_threshold, search_params=self.config.search_params(None),
            **self.config.read_arguments(),
        ).points, [])
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def scroll(self, where=None, with_vectors=False, batch_size=512) -> Iterator[StoredPoint]:
        offset = None
        while True:
            records, offset = self._read(lambda: self.client.scroll(
                self.collection, scroll_filter=self._filter(where), limit=batch_size,
                offset=offset, with_payload=True, with_vectors=with_vectors, **self.config.read_arguments(),
            ), ([], None))
            for record in records:
                yield _stored_point(record, with_vectors)
            if offset is None:
                return

    def count(self, where=None) -> int:
        return int(self._read(lambda: self.client.count(self.collection, count_filter=self._filter(where),
                                                        exact=True).count, 0))

    def facet(self, key: str, where=None) -> dict[str, int]:
        hits = self._read(lambda: self.client.facet(self.collection, key, facet_filter=self._filter(where),
                                                    limit=100_000, exact=True).hits, [])
        return {str(hit.value): int(hit.count) for hit in hits}

    def optimize(self) -> None:
        """A server builds its indexes by itself."""

    def check_writable(self, doing: str = "writing to the index", extra_mb: float = 0) -> None:
        """A server manages its own disk and answers a refused write with an error."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

