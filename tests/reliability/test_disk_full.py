"""A full disk under DATA_DIR, for real: a small tmpfs and a small loop-mounted ext4.

Qdrant Edge maps its files into memory; a write that meets a full disk kills the process with
SIGBUS (no message, exit 135). The writes stop first, at MIN_FREE_DISK_MB, with one line; what
was reported added is stored; reads go on on the full disk; a rerun after freeing space ends
equal to a clean run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import DiskFull
from core.store.base import StoredPoint
from core.store.edge import EdgeStore
from tools.sample_catalogue import make_catalogue

MARGIN_MB = 20


def _mount(kind: str, mountpoint: Path, image: Path) -> None:
    mountpoint.mkdir(parents=True)
    if kind == "tmpfs":
        command = [["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mountpoint)]]
    else:
        command = [["truncate", "-s", "96M", str(image)], ["mkfs.ext4", "-q", "-m", "0", "-F", str(image)],
                   ["mount", "-o", "loop", str(image), str(mountpoint)]]
    for step in command:
        if shutil.which(step[0]) is None:
            pytest.skip(f"cannot make a small {kind} filesystem: {step[0]} is not installed")
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot make a small {kind} filesystem ({' '.join(step[:3])}...: "
                        f"{result.stderr.strip() or result.returncode}); needs root and mount rights")


@pytest.fixture(params=["tmpfs", "ext4"])
def small_disk(request, tmp_path):
    """A small filesystem of its own (unmounted after the test)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mountpoint = tmp_path / "disk"
    _mount(request.param, mountpoint, tmp_path / "ext4.img")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=False)
    if mountpoint.is_mount():
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(disk: Path, leave_mb: float, name: str) -> Path:
    """A file taking all free space but about `leave_mb` (0: every last block)."""
    path = disk / name
    with open(path, "wb") as handle:
        offset, chunk = 0, 1 << 30
        while chunk >= 4096:  # big chunks first; ext4 also spends blocks on the file's own extents
            want = min(chunk, int((_free_mb(disk) - leave_mb) * 2**20) // 4096 * 4096)
            if want < 4096:
                break
            try:
                os.posix_fallocate(handle.fileno(), offset, want)
                offset += want
            except OSError:
                chunk //= 2
                continue
            chunk = min(chunk, want)
    return path


def _free_mb(disk: Path) -> float:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize / 2**20


def _env(data_dir: Path, clip: Path) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(data_dir), "CLIP_MODEL": str(clip), "DETECTOR_MODEL": "none",
            "BATCH_SIZE": "8", "DEVICE": "cpu", "EMBED_PRECISION": "fp32", "MIN_FREE_DISK_MB": str(MARGIN_MB)}


def _ingest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _snapshot(data_dir: Path) -> dict:
    store = EdgeStore(data_dir / "qdrant-edge", "shoes", min_free_mb=0)
    try:
        points = {p.id: {k: v for k, v in p.payload.items() if k != "ingested_at"} for p in store.scroll()}
    finally:
        store.close()
    thumbnails = sorted(str(p.relative_to(data_dir)) for p in (data_dir / "crops").rglob("*.jpg"))
    journal = data_dir / "journal" / "shoes"
    return {"points": points, "thumbnails": thumbnails,
            "journal": sorted(p.name for p in journal.iterdir()) if journal.exists() else []}


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])  # 135 / -7 would be SIGBUS
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_add_stops_with_one_line_reads_go_on_and_a_rerun_converges(small_disk, tmp_path, tiny_clip_dir):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=40, variants_per_product=3)
    small, big = catalogue.factory_dir("factory_a"), catalogue.factory_dir("factory_b")
    data = small_disk / "data"
    env = _env(data, tiny_clip_dir)
    assert _ingest(env, "add", str(small)).returncode == 0
    assert _ingest(env, "stats").returncode == 0  # (tmpfs allocates the store's sparse files on first open)

    filler = _fill(small_disk, MARGIN_MB + 0.6, "filler")  # room for some of factory_b, not all
    stopped = _ingest(env, "add", str(big))
    line = _one_error_line(stopped)
    assert "MIN_FREE_DISK_MB" in line and "rerun the same command" in line
    added = int(re.search(r"\((\d+) photos were added before it stopped", line).group(1))
    total = sum(1 for photo in catalogue.photos if photo.factory == "factory_b")
    assert 0 < added < total, line

    filler_2 = _fill(small_disk, 0, "filler-2")  # now truly full
    assert _free_mb(small_disk) < 0.1
    stats = _ingest(env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    # Everything reported as added is stored, and readable on the full disk.
    assert json.loads(stats.stdout)["factories"]["factory_b"] == {"crops": added, "photos": added}
    found = _ingest(env, "search", "--text", "red boot", "--top-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["hits"]) == 3
    refused = _one_error_line(_ingest(env, "add", str(big)))
    assert "MIN_FREE_DISK_MB" in refused
    removal = _one_error_line(_ingest(env, "remove", "--factory", "factory_a", "--yes"))
    assert "MIN_FREE_DISK_MB" in removal

    filler.unlink()
    filler_2.unlink()
    rerun = _ingest(env, "add", str(big), "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert (report["photos_unchanged"], report["photos_added"]) == (added, total - added)

    clean = tmp_path / "clean"
    clean_env = _env(clean, tiny_clip_dir)
    for folder in (small, big):
        assert _ingest(clean_env, "add", str(folder)).returncode == 0
    after = _snapshot(data)
    assert after == _snapshot(clean)
    assert after["journal"] == [] and len(after["points"]) == len(catalogue.photos)


def test_a_store_write_below_the_margin_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    """The same check without a mount (any user): the free space is what statvfs says."""
    import core.store.diskspace

    store = EdgeStore(tmp_path / "edge", "shoes", min_free_mb=50)
    try:
        store.ensure_collection("m", 4)
        store.upsert([StoredPoint("00000000-0000-0000-0000-000000000001", {"factory": "a"}, np.ones(4))])
        monkeypatch.setattr(core.store.diskspace, "free_mb", lambda path: 49.5)
        for write in (lambda: store.upsert([StoredPoint("00000000-0000-0000-0000-000000000002", {}, np.ones(4))]),
                      lambda: store.set_payload(["00000000-0000-0000-0000-000000000001"], {"factory": "b"}),
                      lambda: store.delete(["00000000-0000-0000-0000-000000000001"])):
            with pytest.raises(DiskFull, match=r"only 49.5 MB free .* MIN_FREE_DISK_MB \(50 MB\)"):
                write()
        assert [(p.id[-1], p.payload) for p in store.scroll()] == [("1", {"factory": "a"})]
    finally:
        store.close()
