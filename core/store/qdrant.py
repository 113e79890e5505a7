"""QdrantClientStore: qdrant-client against a Qdrant server or cluster (QDRANT_URL), or its local mode.

Failures are told apart by qdrant-client's, httpx's and grpc's own exception types: a write that
failed for a transient reason (no answer, a timeout, 408/429/5xx, gRPC UNAVAILABLE) is retried
with backoff, anything else is raised at once; connecting tells a refused API key (401/403)
from an unreachable server, each in one line. `ServerCollectionConfig` carries the QDRANT_*
layout (shards, replicas, tenant index, quantization) and search settings. Whether the client
runs in local mode (no concurrent writes during reads there) is known from how it was made.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.domain.types import Hit
from core.errors import StoreUnavailable
from core.store.base import (
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
    check_model,
)


TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # timeout, busy, overloaded, restarting


def _grpc_status(exc: BaseException):
    """The status code of a gRPC call that failed (a client with prefer_grpc), else None."""
    import grpc

    code = getattr(exc, "code", None) if isinstance(exc, grpc.RpcError) else None
    return code() if callable(code) else None


def _is_transient(exc: BaseException) -> bool:
    """Errors worth a retry: the connection failed or timed out, or the server was busy.

    qdrant-client raises UnexpectedResponse for an answer with an error status, and
    ResponseHandlingException around what went wrong before an answer (httpx's transport
    errors) or while reading it (a malformed answer: not transient); gRPC raises RpcError."""
    import grpc
    import httpx
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in TRANSIENT_STATUS
    if isinstance(exc, ResourceExhaustedResponse):  # 429 with Retry-After
        return True
    if isinstance(exc, ResponseHandlingException):
        return _is_transient(exc.source)
    status = _grpc_status(exc)
    if status is not None:
        return status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def _is_refused_key(exc: BaseException) -> bool:
    """The server answered that the API key is missing or wrong (HTTP 401/403, gRPC UNAUTHENTICATED)."""
    import grpc
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (401, 403)
    return _grpc_status(exc) in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _is_missing_collection(exc: BaseException, local: bool) -> bool:
    """The collection is gone: a server answers 404 (gRPC NOT_FOUND); local mode raises ValueError."""
    import grpc
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    if _grpc_status(exc) == grpc.StatusCode.NOT_FOUND:
        return True
    return local and isinstance(exc, ValueError) and "not found" in str(exc).lower()


def _error_text(exc: BaseException) -> str:
    """The error in one line: a server's status and its own error text, else the error's words."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    text = str(exc)
    if isinstance(exc, UnexpectedResponse):  # its str() adds the raw body on further lines
        try:
            detail = exc.structured()["status"]["error"]
        except Exception:
            detail = ""
        text = f"{exc.status_code} {exc.reason_phrase} {detail}"
    return " ".join(text.split())


def is_local_client(client) -> bool:
    """Whether a QdrantClient runs in local mode (":memory:" or a path), from its public init_options."""
    options = client.init_options
    return options.get("location") == ":memory:" or options.get("path") is not None


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

    def __init__(self, client, collection: str, location: str, config: ServerCollectionConfig | None = None,
                 local: bool | None = None) -> None:
        """`local`: the client runs qdrant-client's local mode (None: read from the client's init_options)."""
        self.client = client
        self.collection = collection
        self.location = location
        self.config = config or ServerCollectionConfig()
        # Known once the collection exists (its model and size never change): a search then costs
        # one request, not three. Forgotten if the collection vanishes (see `_read`).
        self._info: CollectionInfo | None = None
        self.local = is_local_client(client) if local is None else local
        # qdrant-client's local mode is not safe for writes during reads; a server is.
        self._lock = threading.RLock() if self.local else contextlib.nullcontext()

    @classmethod
    def connect(cls, url: str, api_key: str, collection: str,
                config: ServerCollectionConfig | None = None) -> QdrantClientStore:
        """Connect to a Qdrant server and check that it answers (and accepts the key)."""
        from qdrant_client import QdrantClient

        client = QdrantClient(url=url, api_key=api_key or None, timeout=30)
        try:
            client.get_collections()
        except Exception as exc:
            if _is_refused_key(exc):
                raise StoreUnavailable(
                    f"Qdrant at {url} refused the API key: set QDRANT_API_KEY to the server's key."
                ) from exc
            raise StoreUnavailable(
                f"Cannot reach Qdrant at {url} ({type(exc).__name__}). Start it (docker compose up -d qdrant), "
                f"fix QDRANT_URL, or leave QDRANT_URL empty to use the embedded store."
            ) from exc
        return cls(client, collection, f"Qdrant server {url}", config, local=False)

    servable = False  # a server is reached by every process itself
    holder = None

    def beside(self, collection: str, write: bool = False) -> QdrantClientStore:
        """`collection` through the same client (closing either closes the client)."""
        return QdrantClientStore(self.client, collection, self.location, self.config, local=self.local)

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
            if not _is_missing_collection(exc, self.local):
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
                    raise StoreUnavailable(f"{what} to {self.location} failed after {attempt} tries "
                                           f"({type(exc).__name__}: {_error_text(exc)})") from exc
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
