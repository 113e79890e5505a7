"""The one place where settings become real objects (store, models, services)."""

from __future__ import annotations

from core.background import build_remover
from core.detector import Detector, NoDetector, YoloDetector
from core.embedder import ClipEmbedder
from core.ingest_service import IngestService
from core.search_service import SearchService
from core.settings import Settings
from core.store import EdgeStore, QdrantClientStore, Store


def open_store(settings: Settings, on_wait=None) -> Store:
    """The server store when QDRANT_URL is set, else the embedded store (locked) under DATA_DIR.

    A busy embedded store is waited for up to STORE_LOCK_WAIT seconds; `on_wait(holder, seconds)`
    hears when that starts."""
    if settings.qdrant_url:
        return QdrantClientStore.connect(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_collection)
    return EdgeStore(settings.embedded_store_dir, settings.qdrant_collection,
                     lock_wait=settings.store_lock_wait, on_wait=on_wait)


def build_embedder(settings: Settings) -> ClipEmbedder:
    return ClipEmbedder(settings.clip_model, device=settings.device, batch_size=settings.batch_size,
                        precision=settings.embed_precision, cache_dir=settings.models_cache_dir,
                        text_model=settings.text_model)


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
    )


def open_head_index(settings: Settings, store: Store):
    """The HeadIndex for PROJECTION_HEAD (None when unset); its collection sits beside `store`'s."""
    if not settings.projection_head:
        return None
    from pathlib import Path

    from core.head_index import HeadIndex, head_collection
    from core.tuning import ProjectionHead

    path = Path(settings.projection_head)
    if not path.is_file():
        from core.errors import ShoeSearchError

        raise ShoeSearchError(f"PROJECTION_HEAD {path} does not exist: train one with `ingest tune` or unset it.")
    head = ProjectionHead.load(path)
    name = head_collection(settings.qdrant_collection, head)
    if isinstance(store, QdrantClientStore):
        head_store = QdrantClientStore(store.client, name, store.location)
    else:
        head_store = EdgeStore(settings.embedded_store_dir, name, lock_wait=settings.store_lock_wait)
    index = HeadIndex(head, head_store)
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
        head_index=head_index,
        background_remover=build_remover(settings.background_removal, settings.background_model),
    )


def search_service(settings: Settings, store: Store, head_index=None) -> SearchService:
    return SearchService(store, build_embedder(settings), build_detector(settings), crop_margin=settings.crop_margin,
                         head_index=head_index,
                         background_remover=build_remover(settings.background_removal, settings.background_model))
