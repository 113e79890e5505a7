"""The one place where settings become real objects (store, models, services), and where they end.

`open_app(settings)` yields an App: each part is built on first use (a command that only reads
the store never loads a model), shared by the parts that need it (the UI's ingest and search use
one embedder), and everything opened is closed on exit, in reverse order. The CLI, the UI and
the tests use it; the builder functions below are what it calls.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from core.pipeline.ingest import IngestService
from core.search.service import SearchService
from core.settings import Settings
from core.store.base import Store
from core.store.host import open_embedded
from core.store.qdrant import QdrantClientStore, ServerCollectionConfig
from core.vision.background import build_remover
from core.vision.detector import Detector, NoDetector, YoloDetector
from core.vision.embedder import ClipEmbedder


def server_collection_config(settings: Settings) -> ServerCollectionConfig:
    """The QDRANT_* layout and search settings of a server collection."""
    return ServerCollectionConfig(
        shard_number=settings.qdrant_shard_number, replication_factor=settings.qdrant_replication_factor,
        write_consistency_factor=settings.qdrant_write_consistency_factor,
        read_consistency=settings.qdrant_read_consistency, tenant_index=settings.qdrant_tenant_index,
        quantization=settings.qdrant_quantization, vectors_on_disk=settings.qdrant_vectors_on_disk,
        rescore=settings.qdrant_rescore, oversampling=settings.qdrant_oversampling, hnsw_ef=settings.qdrant_hnsw_ef)


def open_store(settings: Settings, on_wait=None, write: bool = False) -> Store:
    """The server store when QDRANT_URL is set, else the embedded store (locked) under DATA_DIR.

    An embedded store held by a running search UI is reached through it (core/store/host.py);
    `write`: the caller will write, so it takes the UI's write lease. A store busy otherwise is
    waited for up to STORE_LOCK_WAIT seconds; `on_wait(holder, seconds)` hears when that starts."""
    if settings.qdrant_url:
        return QdrantClientStore.connect(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_collection,
                                         server_collection_config(settings))
    return open_embedded(settings.embedded_store_dir, settings.qdrant_collection, wait=settings.store_lock_wait,
                         min_free_mb=settings.min_free_disk_mb,
                         on_wait=on_wait, write=write)


def open_target_store(settings: Settings, url: str, api_key: str | None = None,
                      collection: str | None = None) -> QdrantClientStore:
    """The server or cluster collection `ingest migrate` copies into (QDRANT_* layout settings apply)."""
    return QdrantClientStore.connect(url, settings.qdrant_api_key if api_key is None else api_key,
                                     collection or settings.qdrant_collection, server_collection_config(settings))


def build_embedder(settings: Settings) -> ClipEmbedder:
    return ClipEmbedder(settings.clip_model, device=settings.device, batch_size=settings.batch_size,
                        precision=settings.embed_precision, cache_dir=settings.models_cache_dir,
                        text_model=settings.text_model, text_precision=settings.text_precision)


def build_detector(settings: Settings) -> Detector:
    if not settings.detection_enabled:
        return NoDetector()
    return YoloDetector(
        settings.detector_model,
        classes=settings.detector_classes,
        confidence=settings.detect_confidence,
        image_size=settings.detect_image_size,
        device=settings.device,
        batch_size=settings.batch_size,
        runtime=settings.detect_runtime,
        precision=settings.detect_precision,
        cache_dir=settings.models_cache_dir,
    )


def open_head_index(settings: Settings, store: Store, write: bool = False):
    """The HeadIndex for PROJECTION_HEAD (None when unset); its collection sits beside `store`'s."""
    if not settings.projection_head:
        return None
    from pathlib import Path

    from core.quality.head_index import HeadIndex, head_collection
    from core.quality.tune import ProjectionHead

    path = Path(settings.projection_head)
    if not path.is_file():
        from core.errors import ShoeSearchError

        raise ShoeSearchError(f"PROJECTION_HEAD {path} does not exist: train one with `ingest tune` or unset it.")
    head = ProjectionHead.load(path)
    name = head_collection(settings.qdrant_collection, head)
    index = HeadIndex(head, store.beside(name, write=write))
    info = store.info()
    if info is not None:
        index.check_base(info.model)
    return index


_BUILD = object()  # a part not given: build it from the settings


def ingest_service(settings: Settings, store: Store, head_index=None, embedder=None, detector=None,
                   background_remover=_BUILD) -> IngestService:
    """An IngestService; parts not given are built from `settings`."""
    return IngestService(
        store,
        build_embedder(settings) if embedder is None else embedder,
        build_detector(settings) if detector is None else detector,
        settings.data_dir,
        batch_size=settings.batch_size,
        crop_margin=settings.crop_margin,
        thumbnail_size=settings.thumbnail_size,
        max_image_pixels=settings.max_image_pixels,
        decode_max_side=settings.decode_max_side or None,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_file_bytes=int(settings.max_file_mb * 1e6),
        head_index=head_index,
        background_remover=build_remover(settings.background_removal, settings.background_model)
        if background_remover is _BUILD else background_remover,
        min_free_mb=settings.min_free_disk_mb,
    )


def decisions(settings: Settings):
    """The review decisions file kept with this index (DATA_DIR, QDRANT_COLLECTION)."""
    from core.duplicates.review import Decisions

    return Decisions(settings.data_dir, settings.qdrant_collection)


def product_links(settings: Settings):
    """A reader of the review's products linked across factories ('factory/product' -> its link group),
    from the decisions file beside the index, as it is when called."""
    from core.duplicates.review import linked_products

    kept = decisions(settings)
    return lambda: linked_products(kept.load())


class App:
    """Every part of the program for one settings object, built on first use, closed by `close()`.

    `write`: commands will write (a running search UI then lends its write lease; reads need
    none). `on_wait(holder, seconds)` hears when the embedded store is busy and waited for.
    Parts passed in (`store=`, `embedder=`, `detector=`, `background_remover=`: tests, a
    ready-made store) are used as they are and are not closed here."""

    def __init__(self, settings: Settings, *, write: bool = False, on_wait: Callable[[str, float], None] | None = None,
                 **given: Any) -> None:
        unknown = set(given) - {"store", "embedder", "detector", "background_remover"}
        if unknown:
            raise TypeError(f"open_app: no part named {', '.join(sorted(unknown))}")
        self.settings = settings
        self.write = write
        self.on_wait = on_wait
        self._given = set(given)
        self._parts: dict[str, Any] = dict(given)
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.RLock()  # the UI's request threads may reach a part first together

    def _part(self, name: str, build: Callable[[], Any], close: Callable[[Any], None] | None = None) -> Any:
        with self._lock:
            if name not in self._parts:
                part = build()
                self._parts[name] = part
                if close is not None and part is not None:
                    self._closers.append(lambda: close(part))
            return self._parts[name]

    @property
    def store(self) -> Store:
        """The configured store (server, embedded, or the embedded one through the UI that holds it)."""
        return self._part("store", lambda: open_store(self.settings, on_wait=self.on_wait, write=self.write),
                          lambda store: store.close())

    @property
    def head_index(self):
        """PROJECTION_HEAD's index beside the store, or None when unset."""
        return self._part("head_index", lambda: open_head_index(self.settings, self.store, self.write),
                          lambda head: head.store.close())

    @property
    def embedder(self) -> ClipEmbedder:
        return self._part("embedder", lambda: build_embedder(self.settings))

    @property
    def detector(self) -> Detector:
        return self._part("detector", lambda: build_detector(self.settings))

    @property
    def background_remover(self):
        return self._part("background_remover", lambda: build_remover(self.settings.background_removal,
                                                                      self.settings.background_model))

    @property
    def ingest(self) -> IngestService:
        return self._part("ingest", lambda: ingest_service(self.settings, self.store, self.head_index, self.embedder,
                                                           self.detector, self.background_remover))

    @property
    def search(self) -> SearchService:
        return self._part("search", lambda: SearchService(
            self.store, self.embedder, self.detector, crop_margin=self.settings.crop_margin,
            head_index=self.head_index, background_remover=self.background_remover,
            product_links=product_links(self.settings)))

    @property
    def clusters(self):
        from core.duplicates.service import ClusterService

        return self._part("clusters", lambda: ClusterService(self.store, self.settings.data_dir,
                                                                 server_index=bool(self.settings.qdrant_url)))

    def models(self) -> list[Any]:
        """The models this app's services run: embedder, detector and background remover (those in use)."""
        return [m for m in (self.embedder, self.detector, self.background_remover) if m is not None]

    def preload(self) -> None:
        """Load every model now, side by side (start-up is mostly loading them), rather than on first use."""
        from concurrent.futures import ThreadPoolExecutor

        loaders = [load for load in (getattr(model, "load", None) for model in self.models()) if load is not None]
        if not loaders:
            return
        with ThreadPoolExecutor(max_workers=len(loaders)) as pool:
            for future in [pool.submit(load) for load in loaders]:
                future.result()

    def close(self) -> None:
        """Close what this app opened, last opened first; every closer runs even if one fails."""
        with self._lock:
            closers, self._closers = self._closers[::-1], []
            self._parts = {k: v for k, v in self._parts.items() if k in self._given}
        errors = []
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - the rest still close; the first error is raised
                errors.append(exc)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def open_app(settings: Settings, *, write: bool = False, on_wait: Callable[[str, float], None] | None = None,
             **given: Any) -> Iterator[App]:
    """An App whose parts are all closed when the block ends (see App)."""
    app = App(settings, write=write, on_wait=on_wait, **given)
    try:
        yield app
    finally:
        app.close()
