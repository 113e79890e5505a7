"""Helpers shared by tests (and benchmarks): import them from here, not from another test module."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def brute_force_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """The N x N baseline (what the older scripts did): every pair, full matrix in memory."""
    sims = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(rows.tolist(), cols.tolist()))


def run_cli(*args: Any):
    """`ingest ARGS...` through Typer's CliRunner (arguments may be paths or numbers)."""
    from typer.testing import CliRunner

    from ingest.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_json(result) -> Any:
    """The --json object of a command that succeeded."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
