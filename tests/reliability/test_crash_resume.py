"""kill -9 in the middle of `ingest add`, a second writer, readers during writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.store.edge import EdgeStore
from tests.conftest import two_shoes_photo
from tools.sample_catalogue import make_catalogue


def _env(data_dir: Path, clip: Path) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(data_dir), "CLIP_MODEL": str(clip), "DETECTOR_MODEL": "none",
            "BATCH_SIZE": "2", "DEVICE": "cpu"}


def _ingest(folder: Path, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ingest", "add", str(folder), "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_thumbnails(data_dir: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = len(list((data_dir / "crops").rglob("*.jpg"))) if (data_dir / "crops").exists() else 0
        if found >= at_least or proc.poll() is not None:
            return found
        time.sleep(0.005)
    raise AssertionError("ingest made no progress")


def _snapshot(data_dir: Path) -> dict[str, dict]:
    store = EdgeStore(data_dir / "qdrant-edge", "shoes")
    try:
        return {p.id: {k: v for k, v in p.payload.items() if k != "ingested_at"} for p in store.scroll()}
    finally:
        store.close()


def test_kill_9_mid_run_then_rerun_equals_a_clean_run(tmp_path, tiny_clip_dir):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=60, variants_per_product=3)
    folder = catalogue.factory_dir("factory_a")
    total = len(catalogue.photos)
    crashed = tmp_path / "crashed"
    proc = _ingest(folder, _env(crashed, tiny_clip_dir))
    _wait_for_thumbnails(crashed, proc, at_least=12)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    survived = _snapshot(crashed)  # the lock died with the process; the data reloads
    stored_before = len(survived)
    assert 0 < stored_before < total

    rerun = subprocess.run([sys.executable, "-m", "ingest", "add", str(folder), "--json"],
                           env=_env(crashed, tiny_clip_dir), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["photos_unchanged"] == stored_before  # nothing stored is embedded again
    assert report["photos_added"] == total - stored_before

    clean = tmp_path / "clean"
    once = subprocess.run([sys.executable, "-m", "ingest", "add", str(folder), "--json"],
                          env=_env(clean, tiny_clip_dir), capture_output=True, text=True, timeout=600)
    assert once.returncode == 0, once.stderr
    assert _snapshot(crashed) == _snapshot(clean)  # same ids, count and payloads


def test_second_writer_gets_a_clear_error_and_damages_nothing(tmp_path, tiny_clip_dir):
    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=40, variants_per_product=3)
    data = tmp_path / "data"
    first = _ingest(catalogue.factory_dir("factory_a"), _env(data, tiny_clip_dir))
    _wait_for_thumbnails(data, first, at_least=2)
    second = subprocess.run([sys.executable, "-m", "ingest", "add", str(catalogue.factory_dir("factory_a"))],
                            env=_env(data, tiny_clip_dir), capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    assert second.returncode == 1
    assert f"in use by process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, err
    assert json.loads(out)["photos_added"] == len(catalogue.photos)
    assert len(_snapshot(data)) == len(catalogue.photos)


def test_searches_while_the_ui_ingests(handlers, tmp_path):
    """In one process (the UI), uploads and searches share the store: searches keep answering."""
    photos = []
    for i in range(24):
        path = two_shoes_photo(tmp_path / "uploads" / f"P{i}.jpg")
        with open(path, "ab") as handle:
            handle.write(bytes([i]))  # distinct bytes, distinct photos
        photos.append(str(path))
    before = handlers.store.count()
    errors: list[str] = []
    answered = []
    stop = threading.Event()

    def search_loop():
        while not stop.is_set():
            result = handlers.search_text("boot", [], top_k=5)
            if result.status.startswith("⚠️") or len(result.hits) != 5:
                errors.append(result.status)
            answered.append(len(result.hits))

    readers = [threading.Thread(target=search_loop) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        report = handlers.add_photos(photos, "factory_live")
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert errors == [] and len(answered) > 3
    assert "24 photos added (48 crops)" in report
    assert handlers.store.count() == before + 48
