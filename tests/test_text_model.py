"""TEXT_MODEL: a multilingual text encoder paired with the CLIP image model, recorded by the
collection, refused when it does not match. Tested with a tiny text model of the real one's
structure (DistilBERT + mean pooling + dense to the CLIP dimension), built at test time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from core.errors import ModelUnavailable, SchemaMismatch
from core.store.edge import EdgeStore
from core.store.qdrant import QdrantClientStore
from core.vision.embedder import ClipEmbedder
from ingest.cli import app
from tests.tiny_models import build_tiny_multilingual_text_model
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory):
    return build_tiny_multilingual_text_model(tmp_path_factory.mktemp("text") / "tiny-multilingual")


def test_texts_go_through_the_text_model_and_photos_through_clip(tiny_clip_dir, tiny_text_dir, tiny_embedder):
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    paired = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32", text_model=str(tiny_text_dir))
    assert (paired.model_id, paired.text_model_id) == ("tiny-clip", "tiny-multilingual")
    texts = ["zapato rojo de tacón", "красная туфля", "chaussure en cuir blanc"]
    reference = SentenceTransformer(str(tiny_text_dir), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True)
    np.testing.assert_allclose(paired.embed_texts(texts), reference, atol=1e-5)
    assert paired.embed_texts(texts).shape == (3, tiny_embedder.dimension)
    photo = Image.new("RGB", (80, 60), (190, 30, 40))
    np.testing.assert_allclose(paired.embed_images([photo]), tiny_embedder.embed_images([photo]), atol=1e-5)
    assert not np.allclose(paired.embed_texts(["red"]), tiny_embedder.embed_texts(["red"]), atol=1e-3)


def test_a_text_model_of_another_size_is_refused(tiny_clip_dir, tmp_path):
    wrong = build_tiny_multilingual_text_model(tmp_path / "eight-d", dimension=8)
    paired = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32", text_model=str(wrong))
    with pytest.raises(ModelUnavailable, match="gives 8-d vectors, but CLIP_MODEL .* gives 16-d"):
        paired.embed_texts(["boot"])
    missing = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32", text_model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelUnavailable, match="TEXT_MODEL .* could not be loaded"):
        missing.embed_texts(["boot"])


@pytest.mark.parametrize("kind", ["edge", "qdrant-client"])
def test_the_collection_records_the_text_model(kind, tmp_path):
    def open_store():
        if kind == "edge":
            return EdgeStore(tmp_path / "edge", "shoes")
        from qdrant_client import QdrantClient

        return QdrantClientStore(QdrantClient(path=str(tmp_path / "local")), "shoes", "qdrant-client local")

    store = open_store()
    try:
        info = store.ensure_collection("clip-A", 16, "multi-A")
        assert info.text_model == "multi-A"
    finally:
        store.close()
    store = open_store()  # read back from disk
    try:
        assert store.info().text_model == "multi-A"
        assert store.ensure_collection("clip-A", 16, "multi-A").text_model == "multi-A"
        assert store.ensure_collection("clip-A", 16).text_model == "multi-A"  # None: not checked
        with pytest.raises(SchemaMismatch, match="with text model 'multi-A' for text queries, but TEXT_MODEL is 'multi-B'"):
            store.ensure_collection("clip-A", 16, "multi-B")
        with pytest.raises(SchemaMismatch, match="but TEXT_MODEL is empty"):
            store.ensure_collection("clip-A", 16, "")
    finally:
        store.close()


def _run(*args):
    return runner.invoke(app, list(args))


def test_cli_indexes_with_the_text_model_and_refuses_another(cli_env, tiny_text_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TEXT_MODEL", str(tiny_text_dir))
    catalogue = make_catalogue(cli_env / "shoes", factories=1, products_per_factory=3, variants_per_product=1)
    assert _run("add", str(catalogue.factory_dir("factory_a"))).exit_code == 0
    stats = json.loads(_run("stats", "--json").stdout)
    assert stats["text_model"] == "tiny-multilingual"
    assert "text queries by tiny-multilingual" in _run("stats").stdout
    found = _run("search", "--text", "zapato rojo", "--top-k", "3", "--json")
    assert found.exit_code == 0 and len(json.loads(found.stdout)["hits"]) == 3

    monkeypatch.setenv("TEXT_MODEL", "")  # CLIP's own text encoder on a collection paired with another
    refused = _run("search", "--text", "red shoe")
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "pairs its 'tiny-clip' vectors with text model 'tiny-multilingual' for text queries, but TEXT_MODEL is " \
           "empty" in refused.stderr
    assert _run("add", str(catalogue.factory_dir("factory_a"))).exit_code == 1  # ingest checks it too
    monkeypatch.setenv("TEXT_MODEL", str(tmp_path / "other"))  # another text model
    other = _run("search", "--text", "boot")
    assert other.exit_code == 1 and f"but TEXT_MODEL is '{tmp_path / 'other'}'" in other.stderr


def test_ui_start_up_refuses_another_text_model(ui_settings, tiny_text_dir, tiny_clip_dir):
    from core.app import build_embedder, open_app
    from core.catalogue.folders import discover
    from core.pipeline.ingest import IngestService
    from core.store.edge import EdgeStore
    from search_ui.app import create_handlers
    from tests.conftest import BlobDetector

    paired = ui_settings.model_copy(update={"text_model": str(tiny_text_dir)})
    catalogue = make_catalogue(ui_settings.data_dir.parent / "shoes", factories=1, products_per_factory=2,
                               variants_per_product=1)
    store = EdgeStore(paired.embedded_store_dir, paired.qdrant_collection)
    IngestService(store, build_embedder(paired), BlobDetector(), paired.data_dir).add(
        discover(catalogue.factory_dir("factory_a")), "factory_a")
    store.close()
    with pytest.raises(SchemaMismatch, match="TEXT_MODEL is empty"), open_app(ui_settings) as app:
        create_handlers(app, preload=False)
    with open_app(paired) as app:
        handlers = create_handlers(app, preload=False)
        results = handlers.search_text("botte rouge", top_k=2)
        assert len(results.hits) == 2 and results.status.startswith("2 results for “botte rouge”")
        assert "**Model:** tiny-clip (16-d), text queries by tiny-multilingual" in handlers.catalogue_markdown()


def test_export_and_import_keep_the_text_model(tmp_path):
    from core.store.base import StoredPoint
    from core.store.transfer import export_points, import_points

    source = EdgeStore(tmp_path / "a", "shoes")
    target = EdgeStore(tmp_path / "b", "shoes")
    try:
        source.ensure_collection("clip-A", 4, "multi-A")
        source.upsert([StoredPoint("00000000-0000-0000-0000-000000000001", {"factory": "f"}, np.ones(4))])
        assert export_points(source, tmp_path / "points.jsonl.gz") == 1
        assert import_points(target, tmp_path / "points.jsonl.gz") == 1
        assert target.info().text_model == "multi-A"
        other = EdgeStore(tmp_path / "c", "shoes")
        try:
            other.ensure_collection("clip-A", 4, "multi-B")
            with pytest.raises(SchemaMismatch, match="TEXT_MODEL is 'multi-A'"):
                import_points(other, tmp_path / "points.jsonl.gz")
        finally:
            other.close()
    finally:
        source.close()
        target.close()
