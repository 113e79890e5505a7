"""A read-only DATA_DIR (chmod -R a-w, run as an unprivileged user: root ignores permissions):
stats and searches work, photo searches through the projection head too; every write says so
in one line, exit 1; nothing under DATA_DIR changes; the private copies read meanwhile are gone
after each command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.quality.tune import HeadInfo, ProjectionHead
from core.vision.embedder import model_id_for
from tools.sample_catalogue import make_catalogue

NOBODY = 65534


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []  # permissions already apply
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux setpriv: cannot drop to an unprivileged user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def world(tiny_clip_dir):
    """A folder every user can enter (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="shoe-search-ro-test-"))
    root.chmod(0o755)
    yield root
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
    shutil.rmtree(root, ignore_errors=True)


def test_read_only_data_dir_reads_work_and_writes_say_so(world, tiny_clip_dir):
    prefix = _as_user()
    clip = world / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    catalogue = make_catalogue(world / "shoes", factories=1, products_per_factory=4, variants_per_product=1)
    head = ProjectionHead(np.random.default_rng(2).normal(size=(8, 16)).astype(np.float32),
                          HeadInfo(base_model=model_id_for(str(clip)), dim_in=16, dim_out=8, data_hash="0123456789ab",
                                   loss="mnr", epochs_run=1, best_epoch=1, train_products=1, val_products=1))
    head_path = head.save(world / "head.npz")
    data, scratch = world / "data", world / "tmp"
    scratch.mkdir()
    subprocess.run(["chmod", "-R", "a+rX,a+w", str(scratch)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(world)], check=True)
    env = {**os.environ, "DATA_DIR": str(data), "CLIP_MODEL": str(clip), "DETECTOR_MODEL": "none",
           "DEVICE": "cpu", "EMBED_PRECISION": "fp32", "PROJECTION_HEAD": str(head_path),
           "TMPDIR": str(scratch), "HOME": str(scratch)}

    def ingest(*args: str, user: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*(prefix if user else []), sys.executable, "-m", "ingest", *args], env=env,
                              capture_output=True, text=True, timeout=600, cwd=world)

    assert ingest("add", str(catalogue.factory_dir("factory_a")), user=False).returncode == 0
    assert ingest("cluster", "-o", str(world / "report"), user=False).returncode == 0
    photo = catalogue.photos[0].path
    writable = {
        "stats": json.loads(ingest("stats", "--json", user=False).stdout),
        "text": json.loads(ingest("search", "--text", "boot", "--json", user=False).stdout)["hits"],
        "photo": json.loads(ingest("search", "--image", str(photo), "--json", user=False).stdout)["hits"],
    }
    subprocess.run(["chmod", "-R", "a-w", str(data)], check=True)
    before = _tree_digest(data)

    stats = ingest("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout) == writable["stats"]
    assert writable["stats"]["points"] == len(catalogue.photos)
    text = ingest("search", "--text", "boot", "--json")
    assert text.returncode == 0, text.stderr
    assert json.loads(text.stdout)["hits"] == writable["text"]
    by_photo = ingest("search", "--image", str(photo), "--json")  # through the head's collection
    assert by_photo.returncode == 0, by_photo.stderr
    assert json.loads(by_photo.stdout)["hits"] == writable["photo"]
    assert json.loads(by_photo.stdout)["hits"][0]["payload"]["photo_path"] == str(photo)

    writes = {
        "add": ["add", str(catalogue.factory_dir("factory_a"))],
        "remove": ["remove", "--factory", "factory_a", "--yes"],
        "cluster": ["cluster", "-o", str(scratch / "report")],
        "reproject": ["reproject"],
        "import": ["import", str(world / "points.jsonl.gz")],
    }
    assert ingest("export", str(world / "points.jsonl.gz"), user=False).returncode == 0
    for name, args in writes.items():
        result = ingest(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (name, result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr, (name, result.stderr)
        assert "read-only" in lines[0] and "searches and stats work" in lines[0], (name, lines[0])
    assert _tree_digest(data) == before
    assert [p.name for p in scratch.iterdir() if p.name.startswith("shoe-search-readonly")] == []
    unwritable = ingest("export", str(data / "out.jsonl.gz"))
    assert unwritable.returncode == 1 and unwritable.stderr.strip().splitlines() == [
        f"error: Permission denied: {data / 'out.jsonl.gz.tmp'}. Check its permissions (or choose another place); "
        f"a read-only DATA_DIR can still be searched."]
    # The int8 image tower is cached under DATA_DIR/models: read-only, it is exported to TMPDIR instead.
    env["EMBED_PRECISION"] = "auto"
    int8 = ingest("search", "--image", str(photo), "--json")
    assert int8.returncode == 0, int8.stderr
    assert json.loads(int8.stdout)["hits"][0]["payload"]["photo_path"] == str(photo)
    assert _tree_digest(data) == before
