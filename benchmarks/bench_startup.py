"""Start-up: `ingest --help`, and the search UI from process start to a served page and a first
answered text query, with full-size models already on disk (random ViT-B/32 CLIP, YOLOv8n).

    python -m benchmarks.bench_startup
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_ingest import CACHE, prepare
from benchmarks.common import machine, table


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    paths = prepare(240)
    print(f"machine: {machine()}")
    help_runs = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ingest", "--help"], capture_output=True, check=True)
        help_runs.append(time.perf_counter() - started)
    rows = [["ingest --help (median of 5)", f"{statistics.median(help_runs):.2f}"]]

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = {**os.environ, "DATA_DIR": tmp, "CLIP_MODEL": paths["clip"], "DETECTOR_MODEL": paths["yolo"],
               "UI_PORT": str(port), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False", "YOLO_CONFIG_DIR": str(CACHE / "yolo-config")}
        # Index a few photos first (this also caches the int8 image tower under DATA_DIR/models).
        first = sorted(Path(paths["photos"]).iterdir())[0]
        subprocess.run([sys.executable, "-m", "ingest", "add", str(first)], env=env, capture_output=True, check=True)
        for precision in ("auto", "fp32"):
            env["EMBED_PRECISION"] = precision
            started = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "search_ui"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                served = None
                while time.perf_counter() - started < 300:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                            served = time.perf_counter() - started
                            break
                    except httpx.HTTPError:
                        time.sleep(0.05)
                from gradio_client import Client

                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                client.predict("white leather sneaker", [], "", False, 0.0, 10, False, api_name="/search_text")
                answered = time.perf_counter() - started
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            rows.append([f"search-ui, EMBED_PRECISION={precision}: page served", f"{served:.1f}"])
            rows.append([f"search-ui, EMBED_PRECISION={precision}: first text query answered", f"{answered:.1f}"])
    print(table(["start-up", "seconds"], rows))


if __name__ == "__main__":
    main()
