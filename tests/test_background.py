"""Background removal: off by default, applied before embedding (thumbnails unchanged), the
same for queries, measured by eval, and one clear error when rembg or its model is missing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from core.catalogue.folders import discover
from core.errors import ModelUnavailable
from core.pipeline.ingest import IngestService
from core.quality.evaluate import compare_models
from core.search.service import SearchService
from core.store.edge import EdgeStore
from core.vision.background import RembgRemover, build_remover, on_white
from core.vision.detector import NoDetector
from ingest.cli import app
from tools.sample_catalogue import make_catalogue


class CornerColourRemover:
    """A real, simple remover for generated photos: pixels of the corner colour become white."""

    name = "corner-colour"

    def remove(self, images):
        out = []
        for img in images:
            arr = np.asarray(img.convert("RGB")).copy()
            background = np.abs(arr.astype(int) - arr[0, 0]).sum(axis=2) < 40
            arr[background] = 255
            out.append(Image.fromarray(arr))
        return out


def test_off_by_default_and_unknown_kinds_are_refused():
    from core.settings import Settings

    assert Settings(_env_file=None).background_removal == "none" and build_remover("none") is None
    with pytest.raises(ModelUnavailable, match="Unknown BACKGROUND_REMOVAL"):
        build_remover("magic")


def test_removal_happens_before_embedding_and_for_queries(tmp_path, tiny_embedder):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=2, variants_per_product=0)
    remover = CornerColourRemover()
    store = EdgeStore(tmp_path / "edge", "shoes")
    try:
        IngestService(store, tiny_embedder, NoDetector(), tmp_path / "data",
                      background_remover=remover).add(discover(catalogue.factory_dir("factory_a")), "factory_a")
        photo = catalogue.photos[0]
        point = next(p for p in store.scroll(with_vectors=True) if p.payload["photo_path"] == str(photo.path))
        original = Image.open(photo.path).convert("RGB")
        np.testing.assert_allclose(point.vector, tiny_embedder.embed_images(remover.remove([original]))[0], atol=1e-5)
        assert not np.allclose(point.vector, tiny_embedder.embed_images([original])[0], atol=1e-3)
        assert point.payload["background"] == "corner-colour"
        thumb = np.asarray(Image.open(tmp_path / "data" / point.payload["crop_path"]))
        assert abs(int(thumb[0, 0, 0]) - int(np.asarray(original)[0, 0, 0])) < 12  # thumbnail as photographed
        hits = SearchService(store, tiny_embedder, background_remover=remover).search_image(original, top_k=1)
        assert hits[0].point_id == point.id and hits[0].score > 0.9999
    finally:
        store.close()


def test_eval_measures_removal_against_none(tmp_path, tiny_embedder):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=4, variants_per_product=2)
    store = EdgeStore(tmp_path / "edge", "shoes")
    try:
        IngestService(store, tiny_embedder, NoDetector(),
                      tmp_path / "data").add(discover(catalogue.factory_dir("factory_a")), "factory_a")
        result = compare_models(store, ["tiny"], lambda name: tiny_embedder, sample=12,
                                removers=[None, CornerColourRemover()])
        assert set(result["models"]) == {"tiny", "tiny + corner-colour"}
        assert result["models"]["tiny"]["photo"]["queries"] == 12
    finally:
        store.close()


@pytest.mark.skipif(importlib.util.find_spec("rembg") is not None, reason="rembg is installed here")
def test_missing_rembg_is_one_clear_line(cli_env, tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailable, match="needs the rembg package: pip install rembg"):
        RembgRemover().load()
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=1, variants_per_product=0)
    monkeypatch.setenv("BACKGROUND_REMOVAL", "rembg")
    result = CliRunner().invoke(app, ["add", str(catalogue.factory_dir("factory_a"))])
    assert result.exit_code == 1 and "BACKGROUND_REMOVAL=rembg needs the rembg package" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.skipif(importlib.util.find_spec("rembg") is None, reason="rembg is not installed (pip install rembg)")
def test_missing_rembg_model_offline_is_one_clear_line(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))  # empty: no model on disk
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=1, variants_per_product=0)
    monkeypatch.setenv("BACKGROUND_REMOVAL", "rembg")
    result = CliRunner().invoke(app, ["add", str(catalogue.factory_dir("factory_a"))])
    assert result.exit_code == 1, result.output
    assert "Background model 'u2net' is not on disk and this machine is offline" in result.stderr
    assert "U2NET_HOME" in result.stderr and "Traceback" not in result.output


def test_on_white_composites_transparency():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    out = on_white(rgba)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)
