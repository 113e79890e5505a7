"""Shared by the benchmarks: machine description, synthetic vectors, child-process runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np


def cpu_flags() -> str:
    """The vector instructions that decide model speed (from /proc/cpuinfo), e.g. 'avx2 avx512f avx512_vnni'."""
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
              "amx_int8", "amx_bf16"]
    try:
        with open("/proc/cpuinfo") as handle:
            line = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return "unknown"
    flags = set(line.split(":", 1)[-1].split())
    found = [flag for flag in wanted if flag in flags]
    missing = [flag for flag in ("avx512f", "avx512_vnni", "amx_tile") if flag not in flags]
    return " ".join(found) + (f" (no {', '.join(missing)})" if missing else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        import onnxruntime

        ort = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    return (f"{cpu_model() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, device {device}, python {platform.python_version()}{ort}\n"
            f"cpu flags: {cpu_flags()}")


def clustered_vectors(n: int, dim: int = 512, seed: int = 0, group_size: int = 8,
                      background: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit vectors: (1 - background) of them in tight groups of `group_size` around random
    centres (pairwise cosine ~0.88-0.99), the rest scattered. Returns (vectors, group label or -1)."""
    rng = np.random.default_rng(seed)
    grouped = int(n * (1 - background)) // group_size * group_size
    centres = rng.normal(size=(grouped // group_size, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise_scale = rng.uniform(0.1, 0.35, size=(grouped // group_size, 1)).astype(np.float32)
    members = np.repeat(centres, group_size, axis=0)
    members += np.repeat(noise_scale, group_size, axis=0) * rng.normal(size=members.shape).astype(np.float32) / np.sqrt(dim)
    scattered = rng.normal(size=(n - grouped, dim)).astype(np.float32)
    vectors = np.vstack([members, scattered])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.concatenate([np.repeat(np.arange(grouped // group_size), group_size), -np.ones(n - grouped, int)])
    order = rng.permutation(n)
    return vectors[order], labels[order]


def run_child(module: str, *args: str) -> dict:
    """Run `python -m module args` and parse its last stdout line as JSON (peak RSS stays per case)."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)
