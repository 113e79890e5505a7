"""Every `ingest` command and exit code, through Typer's CliRunner, on real files and stores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import two_shoes_photo
from tests.helpers import cli_json as _json
from tests.helpers import run_cli as _run
from tools.sample_catalogue import make_catalogue


@pytest.fixture
def env(cli_env, monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "8")
    return cli_env


@pytest.fixture
def catalogue(env):
    return make_catalogue(env / "shoes", factories=2, products_per_factory=3, variants_per_product=1)


def test_add_reports_json_and_rerun_adds_nothing(catalogue):
    report = _json(_run("add", str(catalogue.factory_dir("factory_a")), "--json"))
    assert set(report) >= {"factory", "photos_seen", "photos_added", "photos_unchanged", "photos_failed",
                           "crops_added", "seconds"}
    assert (report["factory"], report["photos_seen"], report["photos_added"], report["crops_added"]) == ("factory_a", 6, 6, 6)
    again = _json(_run("add", str(catalogue.factory_dir("factory_a")), "--json"))
    assert (again["photos_added"], again["photos_unchanged"], again["crops_added"]) == (0, 6, 0)


def test_add_human_output_and_factory_option(catalogue):
    result = _run("add", str(catalogue.factory_dir("factory_b")), "--factory", "acme")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("acme: 6 photos seen, 6 added (6 crops), 0 unchanged")
    stats = _json(_run("stats", "--json"))
    assert stats["factories"] == {"acme": {"crops": 6, "photos": 6}}


def test_failed_photos_exit_1_but_good_ones_are_stored(env):
    root = env / "factory_x"
    two_shoes_photo(root / "good.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = _run("add", str(root), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["photos_added"] == 1 and [f["path"].rsplit("/", 1)[1] for f in report["photos_failed"]] == ["broken.jpg"]
    assert _json(_run("stats", "--json"))["photos"] == 1


def test_manifest_option(env):
    root = env / "factory_m"
    two_shoes_photo(root / "IMG_1.jpg")
    manifest = env / "m.csv"
    manifest.write_text("path,product_id,colour\nIMG_1.jpg,SKU-1,red\n")
    _json(_run("add", str(root), "--manifest", str(manifest), "--json"))
    hits = _json(_run("search", "--text", "red shoe", "--json"))["hits"]
    assert hits[0]["payload"]["product_id"] == "SKU-1" and hits[0]["payload"]["colour"] == "red"
    manifest.write_text("path,sku\nIMG_1.jpg,SKU-1\n")
    bad = _run("add", str(root), "--manifest", str(manifest))
    assert bad.exit_code == 1 and "line 1: missing column(s) product_id" in bad.stderr


def test_search_by_text_and_image_with_factory_filter(catalogue):
    for factory in ("factory_a", "factory_b"):
        _json(_run("add", str(catalogue.factory_dir(factory)), "--json"))
    text = _json(_run("search", "--text", "black leather boot", "--factory", "factory_b", "--top-k", "4", "--json"))
    assert len(text["hits"]) == 4 and {h["payload"]["factory"] for h in text["hits"]} == {"factory_b"}
    photo = catalogue.photos[0].path
    image = _json(_run("search", "--image", str(photo), "--json"))
    assert image["hits"][0]["payload"]["photo_path"] == str(photo) and image["hits"][0]["score"] > 0.999
    human = _run("search", "--text", "sandal", "--top-k", "2")
    assert human.exit_code == 0 and human.stdout.count("\n") == 2 and "  1. " in human.stdout


def test_search_usage_errors_exit_2(env):
    assert _run("search").exit_code == 2
    assert _run("search", "--text", "a", "--image", "x.jpg").exit_code == 2
    assert _run("add", str(env / "nowhere")).exit_code == 2
    assert _run("remove").exit_code == 2


def test_search_on_empty_index_is_one_line(env):
    result = _run("search", "--text", "boot")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: The index") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_missing_model_is_one_clear_line(catalogue, monkeypatch):
    monkeypatch.setenv("CLIP_MODEL", "clip-ViT-B-32")
    result = _run("add", str(catalogue.factory_dir("factory_a")))
    assert result.exit_code == 1
    assert "CLIP model 'clip-ViT-B-32' could not be loaded" in result.stderr and "CLIP_MODEL" in result.stderr
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1


def test_other_model_on_existing_index_is_refused(catalogue, monkeypatch, tmp_path):
    _json(_run("add", str(catalogue.factory_dir("factory_a")), "--json"))
    other = tmp_path / "other-clip"
    import shutil

    shutil.copytree(__import__("os").environ["CLIP_MODEL"], other)
    monkeypatch.setenv("CLIP_MODEL", str(other))
    result = _run("add", str(catalogue.factory_dir("factory_b")))
    assert result.exit_code == 1 and "model 'tiny-clip'" in result.stderr and "'other-clip'" in result.stderr


def test_store_in_use_is_a_clear_error(catalogue, env):
    from core.store.edge import EdgeStore

    _json(_run("add", str(catalogue.factory_dir("factory_a")), "--json"))
    holder = EdgeStore(env / "data" / "qdrant-edge", "shoes")
    try:
        result = _run("stats")
        assert result.exit_code == 1 and "in use by process" in result.stderr
    finally:
        holder.close()
    assert _run("stats").exit_code == 0


def test_remove_by_path_with_yes(catalogue):
    """(Confirmation and --dry-run: tests/reliability/test_data_safety.py.)"""
    for factory in ("factory_a", "factory_b"):
        _json(_run("add", str(catalogue.factory_dir(factory)), "--json"))
    by_path = _json(_run("remove", "--path", str(catalogue.factory_dir("factory_b") / "B100"), "--yes", "--json"))
    assert (by_path["removed"], by_path["photos"]) == (2, 2)
    human = _run("remove", "--factory", "factory_a", "-y")
    assert human.exit_code == 0 and "removed 6 crops of 6 photos" in human.stdout
    assert _json(_run("stats", "--json"))["factories"] == {"factory_b": {"crops": 4, "photos": 4}}


def test_real_yolo_detector_through_the_cli(catalogue, monkeypatch, tiny_yolo_path):
    monkeypatch.setenv("DETECTOR_MODEL", str(tiny_yolo_path))
    monkeypatch.setenv("DETECT_IMAGE_SIZE", "64")
    report = _json(_run("add", str(catalogue.factory_dir("factory_a")), "--json"))
    assert report["photos_added"] == report["crops_added"] == 6  # random weights: no box, whole photos
    hits = _json(_run("search", "--image", str(catalogue.photos[0].path), "--json"))
    assert hits["query"]["region"] == "whole photo" and hits["hits"][0]["payload"]["box"] is None


def test_help_imports_nothing_heavy():
    """`ingest --help` stays instant because no heavy library is imported for it
    (its time is printed by benchmarks/bench_startup.py, not asserted here)."""
    code = ("import sys; from ingest.cli import app; "
            "print([m for m in ('torch', 'ultralytics', 'sentence_transformers', 'qdrant_client', 'qdrant_edge', "
            "'gradio', 'numpy', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    result = subprocess.run([sys.executable, "-m", "ingest", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "add" in result.stdout and "search" in result.stdout
