"""Memory per photo is bounded whatever the input: a real `python -m ingest add` under an
address-space limit (prlimit) on a folder of hostile and good photos."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(path: Path, width: int, height: int, value: int) -> None:
    """A real 8-bit RGB PNG written row by row: a 64-megapixel one is a 200 KB file."""
    packer, row = zlib.compressobj(6), b"\x00" + bytes([value]) * (width * 3)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def _run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, int, int, str, str]:
    """(exit code, peak RSS from wait4, peak address space polled from /proc, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read()))
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()
    vm_peak, deadline = 0, time.monotonic() + 600
    while True:
        try:
            with open(f"/proc/{proc.pid}/status") as status_file:
                for line in status_file:
                    if line.startswith("VmPeak:"):
                        vm_peak = max(vm_peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return proc.returncode, usage.ru_maxrss * 1024, vm_peak, out["stdout"].decode(), out["stderr"].decode()


@pytest.mark.skipif(not shutil.which("prlimit") or not Path("/proc/self/status").exists(),
                    reason="needs util-linux prlimit and /proc (Linux)")
def test_ingest_stays_within_its_memory_budget_on_hostile_photos(tmp_path, tiny_clip_dir):
    """Baseline: the same CLI on the good photos alone. Then good + hostile photos under
    `prlimit --as=<baseline peak + budget>`: the good ones (three 64-megapixel PNGs among them)
    are added, the hostile ones reported, exit 1, no traceback, peak RSS within the budget.

    Before: the 11 KB 200000x1 PNG became tens of GB in CLIP's preprocessing (a traceback, the
    whole batch lost) and each 64 MP PNG stayed decoded at full size (+1.7 GB RSS measured).
    """
    good, mixed = tmp_path / "good", tmp_path / "mixed"
    for folder in (good, mixed):
        folder.mkdir()
        for k in range(4):
            Image.new("RGB", (300, 200), (60 * k, 100, 200)).save(folder / f"good{k}.jpg")
    for k in range(3):
        _png(mixed / f"big{k}.png", 8000, 8000, 40 * k)  # 64 MP each, under MAX_IMAGE_PIXELS: indexed
    _png(mixed / "strip.png", 200_000, 1, 90)
    Image.new("RGB", (3000, 2000), (1, 2, 3)).save(mixed / "huge_file.bmp")  # 18 MB, over MAX_FILE_MB=16
    (mixed / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 10**5, 10**5, 8, 2,
                                                                                     0, 0, 0))
                                     + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))
    settings = {"CLIP_MODEL": str(tiny_clip_dir), "DETECTOR_MODEL": "none", "DEVICE": "cpu", "BATCH_SIZE": "4",
                "MAX_FILE_MB": "16"}
    # Fewer malloc arenas: less address space reserved per thread, so the limit measures photos.
    env = {**os.environ, **settings, "MALLOC_ARENA_MAX": "2"}

    from core.app import ingest_service

    budget = ingest_service(Settings(_env_file=None, **{k.lower(): v for k, v in settings.items()}), None).memory_budget()
    assert budget is not None and budget < 1_000_000_000

    code, base_rss, base_vm, out, err = _run_measured(
        [sys.executable, "-m", "ingest", "add", str(good), "--json"], {**env, "DATA_DIR": str(tmp_path / "d1")})
    assert code == 0 and json.loads(out)["photos_added"] == 4, err

    limit = base_vm + budget
    code, rss, _, out, err = _run_measured(
        ["prlimit", f"--as={limit}", sys.executable, "-m", "ingest", "add", str(mixed), "--json"],
        {**env, "DATA_DIR": str(tmp_path / "d2")})
    assert "Traceback" not in err and code == 1, err[-3000:]
    report = json.loads(out)
    failed = {Path(f["path"]).name: f["error"] for f in report["photos_failed"]}
    assert failed == {
        "strip.png": "extreme aspect ratio: 200000x1 (200,000:1) (limit MAX_ASPECT_RATIO=20)",
        "bomb.png": "image too large: 10,000,000,000 pixels (limit MAX_IMAGE_PIXELS=80,000,000)",
        "huge_file.bmp": "file too large: 18.0 MB (limit MAX_FILE_MB=16)",
    }
    assert report["photos_added"] == 7 and report["photos_seen"] == 10
    grown = rss - base_rss
    print(f"baseline RSS {base_rss / 2**20:.0f} MiB, address space {base_vm / 2**20:.0f} MiB; hostile run RSS "
          f"{rss / 2**20:.0f} MiB (+{grown / 2**20:.0f} MiB), budget {budget / 2**20:.0f} MiB")
    assert grown <= budget


def test_an_extreme_crop_embeds_like_its_centre_without_blowing_up(tiny_embedder):
    """CLIP scales a crop's short side to 224 and keeps the centre square: a 100:1 crop embeds
    (almost) exactly as without the cut, and a 200000x1 crop embeds at all."""
    from core.vision.embedder import centre_within_aspect

    strip = Image.new("RGB", (2000, 20), (240, 240, 240))
    strip.paste(Image.new("RGB", (20, 20), (200, 20, 20)), (990, 0))  # something in the centre
    assert centre_within_aspect(strip).size == (60, 20)
    guarded = tiny_embedder.embed_images([strip])[0]
    unguarded = tiny_embedder._model.encode([strip], normalize_embeddings=True, convert_to_numpy=True)[0]
    assert float(np.dot(guarded, unguarded)) > 0.999
    line = Image.new("RGB", (200_000, 1), (90, 90, 250))
    vector = tiny_embedder.embed_images([line])[0]
    assert vector.shape == guarded.shape and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
