"""Reports of a clustering run: JSON and CSV files, folders of thumbnails, contact sheets, and
the factory x factory heatmap of shared groups. `ingest cluster` and the UI's Duplicates tab call
these; nothing here reads the store."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain.options import ReportFormat, Tier, choices
from core.duplicates.groups import Group
from core.errors import ShoeSearchError

if TYPE_CHECKING:
    from PIL import Image

    from core.duplicates.service import ClusterResult

def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


def write_reports(result: ClusterResult, out_dir: Path, data_dir: Path, formats: Sequence[ReportFormat | str] = (ReportFormat.JSON, ReportFormat.CSV),
                  collage_top: int = 20) -> list[Path]:
    """Write the chosen formats under `out_dir`; returns the files and folders written."""
    unknown = set(formats) - set(choices(ReportFormat))
    if unknown:
        raise ShoeSearchError(f"unknown report format(s) {', '.join(sorted(unknown))}; "
                              f"choose from {', '.join(choices(ReportFormat))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    written = []
    groups_json = [_group_dict(g) for g in result.groups]
    if "json" in formats:
        path = out_dir / "groups.json"
        path.write_text(json.dumps(groups_json, indent=1, ensure_ascii=False))
        written.append(path)
    if "csv" in formats:
        path = out_dir / "groups.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["group_id", "tier", "status", "size", "min_similarity", "mean_similarity",
                             "is_representative", "point_id", "factory", "product_id", "photo_path", "box",
                             "similarity_to_representative", "reviewed"])
            for g in result.groups:
                for k, m in enumerate(g.members):
                    writer.writerow([g.id, g.tier, g.status, len(g.members), g.min_similarity, g.mean_similarity,
                                     int(k == 0), m.point_id, m.factory, m.product_id, m.photo_path,
                                     json.dumps(m.box) if m.box else "", m.similarity, int(g.reviewed)])
        written.append(path)
    if "folders" in formats:
        written += _write_folders(result, out_dir, data_dir)
    if "collage" in formats:
        written += _write_collages(result, out_dir, data_dir, collage_top)
    result.timings["write"] = time.perf_counter() - started
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(result.summary(), indent=2, ensure_ascii=False))
    return [summary, *written]


def _group_dict(g: Group) -> dict[str, Any]:
    return {"id": g.id, "tier": g.tier, "status": g.status, "reviewed": g.reviewed, "previous_ids": g.previous_ids,
            "size": len(g.members),
            "min_similarity": g.min_similarity, "mean_similarity": g.mean_similarity,
            "representative": asdict(g.representative), "members": [asdict(m) for m in g.members],
            "member_points": g.member_points}


def _member_file_name(m) -> str:
    return f"{_safe(m.factory)}_{_safe(m.product_id)}_{_safe(Path(m.photo_path).stem)}_{m.point_id[:8]}.jpg"


def _write_folders(result: ClusterResult, out_dir: Path, data_dir: Path) -> list[Path]:
    """DIR/<tier>_groups/group_<id>/rep_<name> and sim_0.972_<name> (thumbnail copies),
    plus DIR/unique/unique.csv listing ungrouped crops."""
    written = []
    for tier in Tier:
        root = out_dir / f"{tier}_groups"
        if root.exists():
            shutil.rmtree(root)
        for g in result.by_tier(tier):
            folder = root / f"group_{g.id}"
            folder.mkdir(parents=True, exist_ok=True)
            for k, m in enumerate(g.members):
                name = _member_file_name(m)
                target = folder / (f"rep_{name}" if k == 0 else f"sim_{m.similarity:.3f}_{name}")
                source = data_dir / m.crop_path if m.crop_path else None
                if source and source.is_file():
                    shutil.copyfile(source, target)
        if root.exists():
            written.append(root)
    unique_dir = out_dir / "unique"
    unique_dir.mkdir(parents=True, exist_ok=True)
    path = unique_dir / "unique.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["point_id", "factory", "product_id", "photo_path"])
        writer.writeheader()
        writer.writerows(result.ungrouped)
    return written + [path]


def _write_collages(result: ClusterResult, out_dir: Path, data_dir: Path, top: int) -> list[Path]:
    """One contact sheet per group (DIR/collages/<id>.jpg) and an overview of the largest."""
    from PIL import Image, ImageDraw

    folder = out_dir / "collages"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cell, pad, caption = 160, 6, 30

    def thumb(member) -> Image.Image:
        source = data_dir / member.crop_path if member.crop_path else None
        tile = Image.new("RGB", (cell, cell), (235, 235, 235))
        if source and source.is_file():
            with Image.open(source) as img:
                img = img.convert("RGB")
                img.thumbnail((cell, cell))
                tile.paste(img, ((cell - img.width) // 2, (cell - img.height) // 2))
        return tile

    def sheet(members, title: str, columns: int = 6) -> Image.Image:
        rows = -(-len(members) // columns)
        width = columns * (cell + pad) + pad
        img = Image.new("RGB", (width, 28 + rows * (cell + caption + pad) + pad), "white")
        draw = ImageDraw.Draw(img)
        draw.text((pad, 8), title, fill=(0, 0, 0))
        for k, m in enumerate(members):
            x = pad + (k % columns) * (cell + pad)
            y = 28 + (k // columns) * (cell + caption + pad)
            img.paste(thumb(m), (x, y))
            if k == 0 and title:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(220, 30, 30), width=3)
            draw.text((x, y + cell + 2), f"{m.factory[:22]} {m.product_id[:14]}", fill=(0, 0, 0))
            draw.text((x, y + cell + 15), "representative" if k == 0 else f"sim {m.similarity:.3f}", fill=(90, 90, 90))
        return img

    written = []
    for g in result.groups:
        path = folder / f"{g.tier}_{g.id}.jpg"
        sheet(g.members[:48], f"{g.tier} group {g.id}: {len(g.members)} members, "
                              f"min sim {g.min_similarity:.3f}, factories {', '.join(g.factories)}").save(path, quality=85)
        written.append(path)
    largest = sorted((g for g in result.groups if g.tier != Tier.IDENTICAL), key=lambda g: -len(g.members))[:top]
    if largest:
        overview = sheet([g.representative for g in largest], f"largest {len(largest)} groups (representatives)")
        path = folder / "overview.jpg"
        overview.save(path, quality=85)
        written.append(path)
    return written


def overlap_heatmap(overlap: dict[str, Any], title: str) -> Image.Image | None:
    """A factory x factory heatmap of shared groups, as an image."""
    names, matrix = overlap["factories"], overlap["matrix"]
    if not names:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(10.0, max(4.6, 2.5 + 0.45 * len(names)))  # wide enough for the title beside the colour bar
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    if len(names) <= 20:
        for a in range(len(names)):
            for b in range(len(names)):
                ax.text(b, a, str(matrix[a][b]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[a][b] > max(map(max, matrix)) / 2 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    from PIL import Image

    return Image.open(buffer).convert("RGB")
