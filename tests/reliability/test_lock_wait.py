"""A second writer on the embedded store waits for it (`--wait SECONDS` / STORE_LOCK_WAIT) with a
line on stderr, then goes on when the holder lets go, or stops in one line after the timeout.
The holder is a real second process holding the real store's lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.sample_catalogue import make_catalogue

HOLD = ("import sys; from core.store.edge import EdgeStore; store = EdgeStore(sys.argv[1], 'shoes'); "
        "print('held', flush=True); sys.stdin.readline(); store.close(); print('released', flush=True)")


def _env(data_dir: Path, clip: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(data_dir), "CLIP_MODEL": str(clip), "DETECTOR_MODEL": "none",
            "BATCH_SIZE": "8", "DEVICE": "cpu", **extra}


def _holder(data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir / "qdrant-edge")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(holder: subprocess.Popen) -> None:
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    holder.wait(timeout=60)


def test_writer_waits_for_the_holder_then_proceeds(tmp_path, tiny_clip_dir):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=3, variants_per_product=1)
    data = tmp_path / "data"
    holder = _holder(data)
    try:
        writer = subprocess.Popen([sys.executable, "-m", "ingest", "add", str(catalogue.factory_dir("factory_a")),
                                   "--wait", "120", "--json"], env=_env(data, tiny_clip_dir),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = writer.stderr.readline()  # it says it waits, and for whom
        assert first == f"waiting up to 120s for the embedded store, in use by process {holder.pid} (-c qdrant-edge) ...\n"
        time.sleep(1.0)
        assert writer.poll() is None  # still waiting, not failed
    finally:
        _release(holder)
    out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    report = json.loads(out)
    assert report["photos_added"] == 6 and "error" not in err


def test_writer_gives_up_after_the_timeout_in_one_line(tmp_path, tiny_clip_dir):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=2, variants_per_product=1)
    data = tmp_path / "data"
    holder = _holder(data)
    try:
        started = time.monotonic()
        # The setting, not the option: STORE_LOCK_WAIT applies to every command.
        result = subprocess.run([sys.executable, "-m", "ingest", "add", str(catalogue.factory_dir("factory_a"))],
                                env=_env(data, tiny_clip_dir, STORE_LOCK_WAIT="1.5"), capture_output=True, text=True,
                                timeout=300)
        waited = time.monotonic() - started
        stats = subprocess.run([sys.executable, "-m", "ingest", "stats", "--wait", "0.2"], env=_env(data, tiny_clip_dir),
                               capture_output=True, text=True, timeout=300)
    finally:
        _release(holder)
    assert result.returncode == 1 and waited >= 1.5
    lines = result.stderr.splitlines()
    assert lines[0] == f"waiting up to 1.5s for the embedded store, in use by process {holder.pid} (-c qdrant-edge) ..."
    assert len(lines) == 2 and lines[1].startswith("error: The embedded store ") and "Traceback" not in result.stderr
    assert f"is still in use by process {holder.pid} (-c qdrant-edge) after waiting 1.5s. Wait longer" in lines[1]
    assert stats.returncode == 1 and stats.stderr.splitlines()[1].endswith(
        "after waiting 0.2s. Wait longer (--wait SECONDS or STORE_LOCK_WAIT), stop it, or point the UI/CLI at a "
        "Qdrant server with QDRANT_URL.")  # every command that opens the store takes --wait
