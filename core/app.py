"""The one place where settings become real objects (store, models, services)."""

from __future__ import annotations

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


def ingest_service(settings: Settings, store: Store, head_index=None) -> IngestService:
    return IngestService(
        store,
        build_embedder(settings),
        build_detector(settings),
        settings.data_dir,
        batch_size=settings.batch_size,
        crop_margin=settings.crop_margin,
        thumbnail_size=settings.thumbnail_size,
        max_image_pixels=settings.max_image_pixels,
        decode_max_side=settings.decode_max_side or None,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_file_bytes=int(settings.max_file_mb * 1e6),
        head_index=head_index,
        background_remover=build_remover(settings.background_removal, settings.background_model),
        min_free_mb=settings.min_free_disk_mb,
    )


def product_links(settings: Settings):
    """A reader of the review's products linked across factories ('factory/product' -> its link group),
    from the decisions file beside the index, as it is when called."""
    from core.duplicates.review import Decisions, linked_products

    decisions = Decisions(settings.data_dir, settings.qdrant_collection)
    return lambda: linked_products(decisions.load())


def search_service(settings: Settings, store: Store, head_index=None) -> SearchService:
    return SearchService(store, build_embedder(settings), build_detector(settings), crop_margin=settings.crop_margin,
                         head_index=head_index,
                         background_remover=build_remover(settings.background_removal, settings.background_model),
                         product_links=product_links(settings))
