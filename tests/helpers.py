"""Helpers shared by tests (and benchmarks): import them from here, not from another test module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def brute_force_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """The N x N baseline (what the older scripts did): every pair, full matrix in memory."""
    sims = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(rows.tolist(), cols.tolist()))


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A tiny PNG whose header declares 10^10 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def run_cli(*args: Any):
    """`ingest ARGS...` through Typer's CliRunner (arguments may be paths or numbers)."""
    from typer.testing import CliRunner

    from ingest.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_json(result) -> Any:
    """The --json object of a command that succeeded."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
