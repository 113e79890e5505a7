"""One crop preparation for the index and for queries (core.vision.crops): the same photo gives the
same crop pixels and the same vector through ingest and through a photo query."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from core.catalogue.folders import discover
from core.pipeline.ingest import IngestService
from core.search.service import SearchService
from core.store.edge import EdgeStore
from core.vision.crops import load_query_photo, prepare_crop
from core.vision.detector import NoDetector
from tests.conftest import BlobDetector, CountingEmbedder

MAX_PIXELS = 80_000_000
DECODE_MAX_SIDE = 1600


class RecordingEmbedder(CountingEmbedder):
    """The real tiny embedder, keeping a copy of the pixels of every image it is handed."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.seen: list[np.ndarray] = []

    def embed_images(self, images):
        self.seen += [np.asarray(img).copy() for img in images]
        return super().embed_images(images)


class BlurBackground:
    """A background treatment that changes pixels (as rembg does), so a path that skipped it, or
    applied it to another crop, would show in the pixels."""

    name = "blur-test"

    def remove(self, images):
        return [img.filter(ImageFilter.GaussianBlur(2)) for img in images]


def shoes_photo(path, size=(3400, 1700)):
    """A large JPEG (decoded at reduced scale by ingest) with two shoes and a very long third one."""
    width, height = size
    img = Image.new("RGB", size, (245, 245, 245))
    rng = np.random.default_rng(3)
    for x, w, h, colour in ((200, 900, 600, (190, 30, 40)), (1500, 700, 650, (40, 70, 170)),
                            (2600, 700, 80, (20, 120, 60))):
        texture = rng.integers(-40, 40, (h, w, 3))
        patch = np.clip(np.array(colour) + texture, 0, 255).astype(np.uint8)
        img.paste(Image.fromarray(patch), (x, (height - h) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90)
    return path


@pytest.mark.parametrize("detector,remover", [(BlobDetector(), None), (BlobDetector(), BlurBackground()),
                                              (NoDetector(), BlurBackground())])
def test_ingest_and_photo_query_prepare_identical_crops_and_vectors(tmp_path, tiny_embedder, detector, remover):
    photo = shoes_photo(tmp_path / "shoes" / "p1" / "photo.jpg")
    store = EdgeStore(tmp_path / "data" / "qdrant-edge", "shoes")
    try:
        indexing = RecordingEmbedder(tiny_embedder)
        IngestService(store, indexing, detector, tmp_path / "data", batch_size=4, background_remover=remover,
                      decode_max_side=DECODE_MAX_SIDE, max_image_pixels=MAX_PIXELS).add(
            discover(tmp_path / "shoes"), "factory_a")
        stored = sorted(store.scroll(with_vectors=True), key=lambda p: p.payload["crop_index"])
        assert len(stored) == len(indexing.seen) == (3 if isinstance(detector, BlobDetector) else 1)

        querying = RecordingEmbedder(tiny_embedder)
        search = SearchService(store, querying, detector, background_remover=remover)
        image = load_query_photo(photo, MAX_PIXELS, DECODE_MAX_SIDE)
        crops = search.query_crops(image)
        regions = crops[:-1] or crops  # the detected shoes, else the whole photo
        assert len(regions) == len(stored)
        for index, (region, point) in enumerate(zip(regions, stored)):
            hits = search.search_image(region.image, top_k=1)
            # The model was handed the very same pixels...
            np.testing.assert_array_equal(querying.seen[index], indexing.seen[index])
            # ...so the query vector is the stored one: the crop finds itself first.
            [query_vector] = tiny_embedder.embed_images([Image.fromarray(querying.seen[index])])
            np.testing.assert_allclose(query_vector, np.asarray(point.vector, dtype=np.float32), atol=1e-6)
            assert hits[0].point_id == point.id and hits[0].score > 0.99999
    finally:
        store.close()


def test_prepare_crop_grows_the_box_clamps_it_and_gives_rgb():
    photo = Image.new("RGBA", (100, 50), (255, 0, 0, 0))
    crop, box = prepare_crop(photo, (10, 10, 30, 40), margin=0.5)
    assert box == (0, 0, 40, 50) and crop.size == (40, 50) and crop.mode == "RGB"
    assert crop.getpixel((0, 0)) == (255, 255, 255)  # transparency on white, as decoding does
    whole, none = prepare_crop(photo, None, margin=0.5)
    assert none is None and whole.size == (100, 50) and whole.mode == "RGB"
