"""`ingest tune` -> PROJECTION_HEAD -> `ingest reproject`: photo search goes through the head,
text search stays on raw CLIP, adds and removes keep both collections in step."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from core.quality.tune import ProjectionHead
from core.settings import Settings
from core.store.edge import EdgeStore
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


def _ok(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_tune_reproject_and_search_through_the_head(cli_env, tmp_path, monkeypatch):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=8, variants_per_product=2)
    for factory in ("factory_a", "factory_b"):
        _ok("add", str(catalogue.factory_dir(factory)))
    tuned = _ok("tune", "--dim", "8", "--epochs", "3", "-o", str(tmp_path / "head.npz"))
    assert tuned["head"] == str(tmp_path / "head.npz") and tuned["val_products"] == 3
    assert 0.0 <= tuned["val_mAP_raw"] <= 1.0 and 0.0 <= tuned["val_mAP_head"] <= 1.0
    head = ProjectionHead.load(tmp_path / "head.npz")
    assert (head.info.base_model, head.info.dim_in, head.info.dim_out) == ("tiny-clip", 16, 8)

    monkeypatch.setenv("PROJECTION_HEAD", str(tmp_path / "head.npz"))
    assert _ok("reproject")["projected"] == 48
    photo = catalogue.photos[3]
    hits = _ok("search", "--image", str(photo.path), "--top-k", "3")["hits"]
    assert hits[0]["payload"]["photo_path"] == str(photo.path) and hits[0]["score"] > 0.999
    assert len(_ok("search", "--text", "boot", "--top-k", "5")["hits"]) == 5  # raw CLIP still answers text

    extra = tmp_path / "factory_a2" / "N1.jpg"
    extra.parent.mkdir()
    Image.new("RGB", (90, 60), (30, 30, 200)).save(extra)
    _ok("add", str(extra.parent))
    settings = Settings()
    head_store = EdgeStore(settings.embedded_store_dir, f"shoes-head-{head.info.head_id}")
    try:
        assert head_store.count() == 49 and head_store.info().dimension == 8
    finally:
        head_store.close()
    _ok("remove", "--factory", "factory_b", "--yes")
    head_store = EdgeStore(settings.embedded_store_dir, f"shoes-head-{head.info.head_id}")
    try:
        assert head_store.count() == 25 and "factory_b" not in head_store.facet("factory")
    finally:
        head_store.close()


def test_head_problems_are_one_line(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECTION_HEAD", str(tmp_path / "missing.npz"))
    result = runner.invoke(app, ["reproject"])
    assert result.exit_code == 1 and "PROJECTION_HEAD" in result.stderr and "does not exist" in result.stderr
    monkeypatch.delenv("PROJECTION_HEAD")
    assert "Set PROJECTION_HEAD" in runner.invoke(app, ["reproject"]).stderr
    assert runner.invoke(app, ["tune"]).exit_code == 1  # empty index
    assert runner.invoke(app, ["tune", "--loss", "contrastive"]).exit_code == 2

    import numpy as np

    from core.quality.tune import HeadInfo

    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=2, variants_per_product=1)
    _ok("add", str(catalogue.factory_dir("factory_a")))
    foreign = ProjectionHead(np.eye(8, 16, dtype=np.float32), HeadInfo("another-clip", 16, 8, "abc", "mnr", 1, 1, 4, 1))
    foreign.save(tmp_path / "foreign.npz")
    monkeypatch.setenv("PROJECTION_HEAD", str(tmp_path / "foreign.npz"))
    result = runner.invoke(app, ["search", "--image", str(catalogue.photos[0].path)])
    assert result.exit_code == 1 and "was trained on 'another-clip'" in result.stderr
