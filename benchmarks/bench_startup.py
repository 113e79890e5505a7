"""Start-up: `ingest --help`, and the search UI from process start to a served page and to the
first text query answered through its HTTP API (gradio_client, as a user's script would call
it), with the full-size models of bench_ingest already on disk and cached as the CLI caches them
(random ViT-B/32 CLIP, YOLOv8n with the 601-class head, ONNX exports under DATA_DIR/models).
The query is sent as soon as the page is served: the models load in the background meanwhile,
so the query waits for them.

    python -m benchmarks.bench_startup [--photos 120] [--runs 2]
"""

from __future__ import annotations

import argparse
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


def ui_start(env: dict) -> tuple[float, float]:
    """Seconds from starting `search-ui` to its page served, and to the first text query answered."""
    import httpx
    from gradio_client import Client

    port = _free_port()
    env = {**env, "UI_PORT": str(port)}

    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the UI
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "search_ui"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        served = None
        while time.perf_counter() - started < 300:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"search-ui exited: {log.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    served = time.perf_counter() - started
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict("white leather sneaker", [], "", False, 0.0, 10, False, api_name="/search_text")
        answered = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    return served, answered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=120, help="the bench_ingest catalogue to index a factory of")
    parser.add_argument("--runs", type=int, default=2, help="UI starts per precision")
    args = parser.parse_args()
    paths = prepare(args.photos)
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    help_runs = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ingest", "--help"], capture_output=True, check=True)
        help_runs.append(time.perf_counter() - started)
    rows = [["ingest --help (median of 5)", f"{statistics.median(help_runs):.2f}"]]

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DATA_DIR": tmp, "CLIP_MODEL": paths["clip"], "DETECTOR_MODEL": paths["yolo"],
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False", "YOLO_CONFIG_DIR": str(CACHE / "yolo-config")}
        # Index a factory first: this also caches the int8 image tower and the detector's ONNX
        # export under DATA_DIR/models, as a first `ingest add` does for a user.
        first = sorted(Path(paths["photos"]).iterdir())[0]
        subprocess.run([sys.executable, "-m", "ingest", "add", str(first)], env=env, capture_output=True, check=True)
        # ... and a first text search caches the text tower's export (an ingest never makes it).
        subprocess.run([sys.executable, "-m", "ingest", "search", "--text", "warm-up", "--top-k", "1"], env=env,
                       capture_output=True, check=True)
        for precision in ("auto", "fp32"):
            env["EMBED_PRECISION"] = precision
            runs = [ui_start(env) for _ in range(args.runs)]
            rows.append([f"search-ui, EMBED_PRECISION={precision}: page served",
                         " / ".join(f"{served:.1f}" for served, _ in runs)])
            rows.append([f"search-ui, EMBED_PRECISION={precision}: first text query answered (target <= 5)",
                         " / ".join(f"{answered:.1f}" for _, answered in runs)])
    print(table(["start-up", "seconds (each run)"], rows))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
