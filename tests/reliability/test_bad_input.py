"""A corpus of broken and hostile files: each gets a clear reason, the run goes on, exit 1,
good photos are stored, a rerun duplicates nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from core.catalogue.folders import discover
from core.pipeline.ingest import IngestService
from core.store.edge import EdgeStore
from ingest.cli import app
from tests.helpers import png_bomb

runner = CliRunner()


def build_corpus(root: Path) -> dict[str, str | None]:
    """Write the corpus under root/factory_x; returns {file name: expected reason, None = stored}."""
    root.mkdir(parents=True)
    expected: dict[str, str | None] = {}

    def good(name: str, img: Image.Image, **save) -> None:
        img.save(root / name, **save)
        expected[name] = None

    good("normal.jpg", Image.new("RGB", (120, 90), (200, 30, 30)))
    good("cmyk.jpg", Image.new("CMYK", (60, 40), (0, 200, 200, 0)))
    good("sixteen_bit.png", Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)))
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.info["transparency"] = 0
    good("palette_alpha.png", palette)
    frames = [Image.new("RGB", (40, 30), c) for c in ((10, 10, 200), (200, 200, 10))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    expected["animated.gif"] = None
    frames[0].save(root / "animated.webp", save_all=True, append_images=frames[1:])
    expected["animated.webp"] = None
    good("one_pixel.png", Image.new("RGB", (1, 1), (5, 5, 5)))
    good("wide.png", Image.new("RGB", (2000, 100), (90, 90, 250)))  # 20:1, the MAX_ASPECT_RATIO default
    good("ünïcödé 鞋.jpg", Image.new("RGB", (50, 50), (20, 160, 20)))
    rotated = Image.new("RGB", (80, 40), (250, 250, 250))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(root / "exif_rotated.jpg", exif=exif)
    expected["exif_rotated.jpg"] = None

    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty file (0 bytes)"
    Image.effect_noise((200, 200), 50).convert("RGB").save(root / "truncated.jpg", quality=90)
    (root / "truncated.jpg").write_bytes((root / "truncated.jpg").read_bytes()[:1500])
    expected["truncated.jpg"] = "cannot decode"
    (root / "text.jpg").write_text("this is not a photo")
    expected["text.jpg"] = "not an image Pillow can read"
    # Extreme aspect ratios (was: indexed; CLIP's short-side resize made the 11 KB strip tens of GB).
    Image.new("RGB", (20000, 20), (90, 90, 250)).save(root / "very_wide.png")
    expected["very_wide.png"] = "extreme aspect ratio: 20000x20 (1,000:1) (limit MAX_ASPECT_RATIO=20)"
    Image.new("RGB", (1, 200_000), (90, 90, 250)).save(root / "strip.png")
    expected["strip.png"] = "extreme aspect ratio: 1x200000 (200,000:1) (limit MAX_ASPECT_RATIO=20)"
    png_bomb(root / "bomb.png")
    expected["bomb.png"] = "image too large: 10,000,000,000 pixels (limit MAX_IMAGE_PIXELS=50,000,000)"
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    expected["dangling.jpg"] = "no such file"
    os.mkfifo(root / "pipe.jpg")
    expected["pipe.jpg"] = "not a regular file"
    os.symlink(root, root / "loop")  # a folder symlink loop: not followed
    return expected


def test_every_bad_file_has_its_reason_and_the_run_goes_on(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "50000000")
    root = tmp_path / "factory_x"
    expected = build_corpus(root)
    # A name that is not UTF-8 on disk.
    Image.new("RGB", (30, 30), (1, 2, 3)).save(open(os.fsencode(root) + b"/\xff\xfe-latin.jpg", "wb"), format="JPEG")

    result = runner.invoke(app, ["add", str(root), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    failed = {Path(f["path"]).name: f["error"] for f in report["photos_failed"]}
    for name, reason in expected.items():
        if reason is None:
            assert name not in failed, failed.get(name)
        else:
            assert failed[name].startswith(reason), (name, failed[name])
    stored = sum(reason is None for reason in expected.values()) + 1
    assert report["photos_added"] == stored and report["photos_seen"] == len(expected) + 1

    again = json.loads(runner.invoke(app, ["add", str(root), "--json"]).stdout)
    assert (again["photos_added"], again["photos_unchanged"], len(again["photos_failed"])) == (0, stored, len(failed))
    stats = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert stats["photos"] == stored
    hits = json.loads(runner.invoke(app, ["search", "--text", "x", "--top-k", "100", "--json"]).stdout)["hits"]
    paths = {h["payload"]["photo_path"] for h in hits}
    assert str(root / "\\xff\\xfe-latin.jpg") in paths  # odd bytes shown escaped, still indexed once
    wide = next(h for h in hits if h["payload"]["photo_path"].endswith("wide.png"))
    assert (wide["payload"]["photo_width"], wide["payload"]["photo_height"]) == (2000, 100)
    gif = next(h for h in hits if h["payload"]["photo_path"].endswith("animated.gif"))
    assert gif["payload"]["width"] == 40


def test_crop_boxes_are_on_the_upright_photo(tmp_path, tiny_embedder, blob_detector):
    root = tmp_path / "factory_r"
    root.mkdir()
    img = Image.new("RGB", (200, 100), (245, 245, 245))
    img.paste(Image.new("RGB", (40, 20), (200, 20, 20)), (10, 70))  # near the bottom-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    img.save(root / "rotated.jpg", exif=exif, quality=95)
    store = EdgeStore(tmp_path / "edge", "shoes")
    try:
        IngestService(store, tiny_embedder, blob_detector, tmp_path / "data").add(discover(root), "factory_r")
        [point] = list(store.scroll())
        assert (point.payload["photo_width"], point.payload["photo_height"]) == (100, 200)
        x1, y1, x2, y2 = point.payload["box"]
        # Upright, the shoe is at the top-left, 20 wide and 40 tall (plus the crop margin).
        assert x1 <= 10 and x2 <= 32 and y1 <= 12 and 38 <= y2 - y1 <= 48
    finally:
        store.close()


def test_unreadable_permissions_are_reported(tmp_path, tiny_clip_dir):
    """Root reads any file, so as root the CLI runs without CAP_DAC_OVERRIDE (setpriv)."""
    root = tmp_path / "factory_p"
    root.mkdir()
    Image.new("RGB", (30, 20), (10, 10, 10)).save(root / "ok.jpg")
    Image.new("RGB", (30, 20), (90, 10, 10)).save(root / "locked.jpg")
    (root / "locked.jpg").chmod(0o000)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux setpriv: cannot make a file unreadable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "CLIP_MODEL": str(tiny_clip_dir), "DETECTOR_MODEL": "none"}
    result = subprocess.run([*prefix, sys.executable, "-m", "ingest", "add", str(root), "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    (root / "locked.jpg").chmod(0o644)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["photos_added"] == 1
    assert [(Path(f["path"]).name, f["error"]) for f in report["photos_failed"]] == [
        ("locked.jpg", "cannot read: Permission denied")]


def test_manifest_errors_name_the_line_through_the_cli(cli_env, tmp_path):
    root = tmp_path / "factory_m"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.jpg")
    cases = {
        "path\na.jpg\n": "line 1: missing column(s) product_id",
        "path,product_id\na.jpg,P1\nghost.jpg,P2\n": "line 3: no such photo: ghost.jpg",
        "path,product_id\na.jpg,P1\na.jpg,P1\n": "line 3: a.jpg is listed twice (first on line 2)",
    }
    for text, message in cases.items():
        manifest = tmp_path / "m.csv"
        manifest.write_text(text)
        result = runner.invoke(app, ["add", str(root), "--manifest", str(manifest)])
        assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "data" / "qdrant-edge" / "shoes.json").exists()  # nothing half-written


def test_hostile_manifests_are_one_line_errors_through_the_cli(cli_env, tmp_path):
    """Not UTF-8, a binary file, a field over 128 KB, a column that would inject a fake group:
    exit 1, one line naming the file and line, no traceback, nothing stored."""
    root = tmp_path / "factory_m"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.jpg")
    png = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(png)
    cases = {
        "path,product_id,colour\na.jpg,P1,weiß\n".encode("cp1252"): "line 2: not UTF-8 text (byte 0xdf at column 13)",
        png.read_bytes(): "line 1: not UTF-8 text (byte 0x89 at column 1)",
        f'path,product_id,notes\na.jpg,P1,"{"x" * 140_000}"\n'.encode(): "line 2: a field longer than 131,072 characters",
        b"path,product_id,group_similar\na.jpg,P1,sim-0000fake\n": "line 1: column 'group_similar' is a key ingest "
                                                                    "computes for every crop",
        b"path,product_id,photo_width\na.jpg,P1,99999\n": "line 1: column 'photo_width' is a key ingest computes",
    }
    for content, message in cases.items():
        manifest = tmp_path / "m.csv"
        manifest.write_bytes(content)
        result = runner.invoke(app, ["add", str(root), "--manifest", str(manifest)])
        assert result.exit_code == 1, (message, result.output)
        assert f"{manifest}: {message}" in result.stderr and "Traceback" not in result.output, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "qdrant-edge" / "shoes.json").exists()  # nothing half-written


@pytest.mark.parametrize("length", [300, 100_000])
def test_text_query_longer_than_clip_reads_through_the_cli(cli_env, tmp_path, length):
    """A pasted product description (300 characters) or a whole page (100k): hits, exit 0, and
    one note on stderr saying only the start was searched; `--json` says `truncated`."""
    root = tmp_path / "factory_t"
    root.mkdir()
    for k in range(3):
        Image.new("RGB", (60, 40), (80 * k, 90, 200)).save(root / f"p{k}.jpg")
    assert runner.invoke(app, ["add", str(root)]).exit_code == 0
    words = "white leather high-top sneaker with gum sole, padded collar and waxed laces; "
    text = (words * (length // len(words) + 1))[:length]
    result = runner.invoke(app, ["search", "--text", text, "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and len(result.stdout.splitlines()) == 2
    [note] = result.stderr.splitlines()
    assert note.startswith("note: query truncated: ") and "the CLIP text model reads only the first 77" in note
    as_json = runner.invoke(app, ["search", "--text", text, "--top-k", "2", "--json"])
    report = json.loads(as_json.stdout)
    assert report["query"]["truncated"] is True and len(report["hits"]) == 2
    short = runner.invoke(app, ["search", "--text", "white sneaker", "--top-k", "2", "--json"])
    assert json.loads(short.stdout)["query"]["truncated"] is False and short.stderr == ""
