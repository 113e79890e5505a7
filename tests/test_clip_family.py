"""Other CLIP-family models (#17 item 5): each published structure, as a tiny model built here.

- sentence-transformers layout (modules.json -> 0_CLIPModel/): the hub's clip-ViT-B-16 and
  clip-ViT-L-14, miniature B/16 (finer patch grid, same dimension as B/32) and L/14 (patch 14,
  wider image tower, larger projection) shapes;
- a plain transformers CLIPModel checkpoint (config.json + processor, no modules.json), as
  patrickjohncyh/fashion-clip is published: the shared tiny-clip (B/32-like) and an L/14-like one,
  from a folder and as an `owner/name` hub id out of the Hugging Face cache;
- refused in one line: an open_clip / trust_remote_code checkpoint (Marqo/marqo-fashionCLIP's
  config.json) and a checkpoint that is no CLIPModel.
Random weights: these check loading, plumbing and the model records, not retrieval quality.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from core.vision.embedder import ClipEmbedder
from ingest.cli import app
from tests.tiny_models import TINY_B16, TINY_L14, build_tiny_clip
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


@pytest.fixture(scope="session")
def family(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("clip-family")
    return {
        "st-b16": build_tiny_clip(root / "tiny-clip-ViT-B-16", layout="sentence-transformers", **TINY_B16),
        "st-l14": build_tiny_clip(root / "tiny-clip-ViT-L-14", layout="sentence-transformers", **TINY_L14),
        "plain-b32": tiny_clip_dir,
        "plain-l14": build_tiny_clip(root / "tiny-fashion-clip-L-14", seed=3, **TINY_L14),
    }


DIMENSIONS = {"st-b16": 16, "st-l14": 24, "plain-b32": 16, "plain-l14": 24}


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_tiny_models_have_the_published_structures(family):
    assert json.loads((family["st-b16"] / "modules.json").read_text())[0]["type"] == \
        "sentence_transformers.models.CLIPModel"
    assert (family["st-l14"] / "0_CLIPModel" / "config.json").is_file()
    for kind in ("plain-b32", "plain-l14"):
        assert not (family[kind] / "modules.json").exists()
        assert json.loads((family[kind] / "config.json").read_text())["architectures"] == ["CLIPModel"]
    b16 = json.loads((family["st-b16"] / "0_CLIPModel" / "config.json").read_text())["vision_config"]
    l14 = json.loads((family["plain-l14"] / "config.json").read_text())["vision_config"]
    assert (b16["patch_size"], l14["patch_size"], l14["hidden_size"]) == (8, 14, 48)


@pytest.mark.parametrize("kind", list(DIMENSIONS))
def test_ingest_text_and_photo_search_with_each_structure(family, kind, cli_env, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_MODEL", str(family[kind]))
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=3, variants_per_product=2)
    added = _json(runner.invoke(app, ["add", str(catalogue.factory_dir("factory_a")), "--json"]))
    assert added["photos_added"] == len(catalogue.photos) == 9
    stats = _json(runner.invoke(app, ["stats", "--json"]))
    assert (stats["model"], stats["dimension"]) == (family[kind].name, DIMENSIONS[kind])
    text = _json(runner.invoke(app, ["search", "--text", "red leather boot", "--top-k", "3", "--json"]))
    assert len(text["hits"]) == 3
    photo = catalogue.photos[0].path
    image = _json(runner.invoke(app, ["search", "--image", str(photo), "--json"]))
    assert image["hits"][0]["payload"]["photo_path"] == str(photo) and image["hits"][0]["score"] > 0.999


def test_another_model_on_the_index_is_refused(family, cli_env, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_MODEL", str(family["st-b16"]))
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=2, variants_per_product=1)
    _json(runner.invoke(app, ["add", str(catalogue.factory_dir("factory_a")), "--json"]))
    # B/32 and B/16 both give 16-d vectors here (512-d both, for real): refused by name.
    monkeypatch.setenv("CLIP_MODEL", str(family["plain-b32"]))
    same_size = runner.invoke(app, ["search", "--text", "boot"])
    assert same_size.exit_code == 1
    assert len(same_size.stderr.strip().splitlines()) == 1
    assert "holds 16-d vectors of model 'tiny-clip-ViT-B-16', but CLIP_MODEL is 'tiny-clip' (16-d)" in same_size.stderr
    monkeypatch.setenv("CLIP_MODEL", str(family["st-l14"]))
    for args in (["search", "--text", "boot"], ["add", str(catalogue.factory_dir("factory_a"))]):
        other = runner.invoke(app, args)
        assert other.exit_code == 1 and len(other.stderr.strip().splitlines()) == 1
        assert ("holds 16-d vectors of model 'tiny-clip-ViT-B-16', but CLIP_MODEL is 'tiny-clip-ViT-L-14'"
                in other.stderr)
    assert _json(runner.invoke(app, ["stats", "--json"]))["photos"] == len(catalogue.photos)


def _cache_as_hub_repo(folder, repo_id, hub):
    """`folder` as the Hugging Face cache holds a downloaded `repo_id` (offline tests read it there)."""
    revision = "0" * 40
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_a_hub_id_of_a_plain_clip_checkpoint_loads_from_the_cache(family, tmp_path, monkeypatch):
    """`owner/name` (e.g. patrickjohncyh/fashion-clip) read from the Hugging Face cache, offline."""
    import huggingface_hub.constants

    _cache_as_hub_repo(family["plain-l14"], "tinyowner/tiny-fashion-clip", tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    embedder = ClipEmbedder("tinyowner/tiny-fashion-clip", device="cpu", precision="fp32")
    assert embedder.model_id == "tinyowner/tiny-fashion-clip" and embedder.dimension == 24
    from_folder = ClipEmbedder(str(family["plain-l14"]), device="cpu", precision="fp32")
    photo = [Image.new("RGB", (80, 60), (200, 30, 30))]
    np.testing.assert_allclose(embedder.embed_images(photo), from_folder.embed_images(photo), atol=1e-6)
    np.testing.assert_allclose(embedder.embed_texts(["red boot"]), from_folder.embed_texts(["red boot"]), atol=1e-6)


@pytest.mark.parametrize("kind", list(DIMENSIONS))
def test_int8_image_tower_for_each_structure(family, kind, tmp_path):
    """EMBED_PRECISION=int8 exports each structure's image tower; auto keeps int8 only where it agrees."""
    photos = [Image.new("RGB", (90, 60), colour) for colour in ("red", "navy", "white")]
    exact = ClipEmbedder(str(family[kind]), device="cpu", precision="fp32").embed_images(photos)
    int8 = ClipEmbedder(str(family[kind]), device="cpu", precision="int8", cache_dir=tmp_path / "models")
    fast = int8.embed_images(photos)
    assert int8.active_precision == "int8" and fast.shape == exact.shape == (3, DIMENSIONS[kind])
    assert (fast * exact).sum(axis=1).min() > 0.98  # the same tower, weights rounded to int8
    auto = ClipEmbedder(str(family[kind]), device="cpu", precision="auto", cache_dir=tmp_path / "models")
    auto.load()
    assert auto.active_precision in ("int8", "fp32")
    if auto.active_precision == "fp32":  # the fallback answers exactly as fp32 does
        np.testing.assert_allclose(auto.embed_images(photos), exact, atol=1e-6)


def _marqo_like(folder):
    """Marqo/marqo-fashionCLIP's published description files (open_clip weights, custom code)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "auto_map": {"AutoConfig": "marqo_fashionCLIP.MarqoFashionCLIPConfig",
                     "AutoModel": "marqo_fashionCLIP.MarqoFashionCLIP",
                     "AutoProcessor": "marqo_fashionCLIP.CLIPProcessor"},
        "open_clip_model_name": "hf-hub:Marqo/marqo-fashionCLIP", "model_type": "clip"}))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 512}}))
    return folder


def test_open_clip_and_custom_code_checkpoints_are_refused_in_one_line(cli_env, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_MODEL", str(_marqo_like(tmp_path / "marqo-fashionCLIP")))
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=1, variants_per_product=1)
    result = runner.invoke(app, ["add", str(catalogue.factory_dir("factory_a"))])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "open_clip / custom-code checkpoint" in lines[0] and "Traceback" not in result.output


def test_hub_ids_refused_from_the_cache_or_missing_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from core.errors import ModelUnavailable

    _cache_as_hub_repo(_marqo_like(tmp_path / "marqo"), "Marqo/marqo-fashionCLIP", tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelUnavailable, match=r"^CLIP model 'Marqo/marqo-fashionCLIP' is an open_clip / custom-code"):
        ClipEmbedder("Marqo/marqo-fashionCLIP", device="cpu").load()
    # Not cached, offline: the hub id is named as a model to fetch, not as a missing folder.
    with pytest.raises(ModelUnavailable, match=r"^CLIP model 'patrickjohncyh/fashion-clip' could not be loaded .*"
                                               r"offline, set CLIP_MODEL to a local folder"):
        ClipEmbedder("patrickjohncyh/fashion-clip", device="cpu").load()


@pytest.mark.parametrize("repo_id,expected", [("Marqo/marqo-fashionCLIP", "refused"),
                                              ("tinyowner/tiny-fashion-clip", 24)])
def test_a_hub_id_online_fetches_config_files_first(family, tmp_path, monkeypatch, repo_id, expected):
    """Online (the hub client stood in for by a recorder): the description files come first; an
    open_clip checkpoint is refused before any weights are fetched; a CLIPModel one fetches the
    rest once, without other frameworks' copies."""
    import huggingface_hub

    from core.errors import ModelUnavailable
    from core.vision import lazy_model

    source = _marqo_like(tmp_path / "marqo") if expected == "refused" else family["plain-l14"]
    calls = []

    def snapshot_download(name, local_files_only=False, allow_patterns=None, ignore_patterns=None, **kwargs):
        calls.append((name, local_files_only, allow_patterns, ignore_patterns))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
        return str(source)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(lazy_model, "hub_reachable", lambda *a, **k: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    embedder = ClipEmbedder(repo_id, device="cpu", precision="fp32")
    if expected == "refused":
        with pytest.raises(ModelUnavailable, match="open_clip / custom-code checkpoint"):
            embedder.load()
        assert [call[2] for call in calls if not call[1]] == [["modules.json", "config.json", "open_clip_config.json"]]
        return
    assert embedder.dimension == expected
    online = [call for call in calls if not call[1]]
    assert online[0][2] == ["modules.json", "config.json", "open_clip_config.json"]
    assert len(online) == 2 and "*.bin" in online[1][3] and "*.msgpack" in online[1][3]


def test_a_missing_folder_under_an_existing_one_is_named_as_a_folder(tmp_path, monkeypatch):
    from core.errors import ModelUnavailable

    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailable, match=r"^CLIP model folder not found: models/fashion-clip\."):
        ClipEmbedder("models/fashion-clip", device="cpu").load()


def test_a_checkpoint_that_is_no_clip_model_is_refused(tmp_path):
    from core.errors import ModelUnavailable

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(ModelUnavailable, match=r"nor a transformers CLIPModel checkpoint \(\['BertModel'\]\)"):
        ClipEmbedder(str(folder), device="cpu").load()


def test_eval_compares_models_of_different_structures_and_sizes(family, cli_env, monkeypatch, tmp_path):
    """`ingest eval --model A --model B`: the way to pick a model on one's own catalogue."""
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=3, variants_per_product=2)
    _json(runner.invoke(app, ["add", str(catalogue.factory_dir("factory_a")), "--json"]))
    before = _json(runner.invoke(app, ["stats", "--json"]))
    models = [str(family["st-b16"]), str(family["plain-l14"])]
    data = _json(runner.invoke(app, ["eval", "--model", models[0], "--model", models[1], "--sample", "6", "--json"]))
    assert data["sample_crops"] == 6 and set(data["models"]) == set(models)
    for name in models:
        overall = data["models"][name]["photo"]["overall"]
        assert 0.0 <= overall["P@1"] <= 1.0 and overall["R@10"] >= overall["R@1"]
    assert _json(runner.invoke(app, ["stats", "--json"])) == before
