"""Plots of quality results, written as files (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_calibration(result: dict[str, Any], output: Path) -> list[Path]:
    """`ingest cluster --calibrate`'s files under `output`: calibration.json (the result) and
    pr_curve.png (precision against recall, every tenth point labelled with its threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    data = output / "calibration.json"
    data.write_text(json.dumps(result, indent=2))
    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([r["recall"] for r in curve], [r["precision"] for r in curve], marker=".")
    for r in curve[::10]:
        ax.annotate(f"{r['threshold']:.2f}", (r["recall"], r["precision"]), fontsize=7)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{result['pairs']} labelled pairs ({result['positives']} same)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plot = output / "pr_curve.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    return [data, plot]
