"""What the UI does, as plain functions: inputs in, display values out.

No Gradio here (the layout adapts events), and no vector-database or model library (the
core services do that). Errors a user can act on come back as a message, never a traceback.
"""

from __future__ import annotations

import threading
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, ImageDraw

from core.catalogue import discover
from core.errors import BadImage, ShoeSearchError
from core.images import PHOTO_EXTENSIONS, load_photo
from core.ingest_service import IngestService
from core.models import Hit
from core.search_service import SearchService, index_stats
from core.settings import Settings
from core.store import Contains, Store

GalleryItem = tuple[str, str]  # (thumbnail file, caption)
# One result set as the UI keeps it between events: plain JSON-able dicts.
HitRecord = dict[str, Any]

OVERFETCH = 8  # one-hit-per-product asks the store for this many times top-k crops


@dataclass
class Duplicates:
    """What a clustering run shows."""

    status: str
    heatmap: Image.Image | None = None
    gallery: list[GalleryItem] = field(default_factory=list)  # one representative per group
    groups: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def group_payload_key(group_id: str) -> str:
    """The payload key holding a group id, from the id's tier prefix (dup-, sim-, idt-)."""
    from core.cluster_service import PAYLOAD_KEY

    prefix = group_id.split("-", 1)[0]
    tier = {"idt": "identical", "dup": "duplicate", "sim": "similar"}.get(prefix, "similar")
    return PAYLOAD_KEY[tier]


def _group_record(group) -> dict[str, Any]:
    from dataclasses import asdict

    return {"id": group.id, "tier": group.tier, "status": group.status, "size": len(group.members),
            "factories": group.factories, "min_similarity": group.min_similarity,
            "members": [asdict(m) for m in group.members]}


def overlap_heatmap(overlap: dict[str, Any], title: str) -> Image.Image | None:
    """A factory x factory heatmap of shared groups, as an image."""
    names, matrix = overlap["factories"], overlap["matrix"]
    if not names:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(10.0, 2.5 + 0.45 * len(names))
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
    return Image.open(buffer).convert("RGB")


@dataclass
class Results:
    """What a search shows: gallery items, the hits behind them, a status line."""

    gallery: list[GalleryItem]
    hits: list[HitRecord]
    status: str


def _record(hit: Hit) -> HitRecord:
    return {"point_id": hit.point_id, "score": round(hit.score, 6), "payload": hit.payload}


def best_per_product(hits: Sequence[Hit], top_k: int) -> list[Hit]:
    """Keep each (factory, product) once, at its best-scoring crop; `hits` is best first."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for hit in hits:
        key = (hit.factory, hit.product_id)
        if key not in seen:
            seen.add(key)
            kept.append(hit)
            if len(kept) == top_k:
                break
    return kept


class Handlers:
    """The UI's behaviour over one store and one set of loaded models (shared by all requests)."""

    def __init__(self, settings: Settings, store: Store, search: SearchService, ingest: IngestService) -> None:
        from core.cluster_service import ClusterService

        self.settings = settings
        self.store = store
        self.search = search
        self.ingest = ingest
        self.clusters = ClusterService(store, settings.data_dir)
        self.data_dir = Path(settings.data_dir).resolve()
        self._ingest_lock = threading.Lock()  # one upload ingest at a time; searches go on

    # ------------------------------------------------------------------ filters and catalogue

    def factory_choices(self) -> list[tuple[str, str]]:
        """(label with crop count, factory name) for the factory filter."""
        counts = self.store.facet("factory")
        return [(f"{name} ({counts[name]})", name) for name in sorted(counts)]

    def catalogue_markdown(self) -> str:
        stats = index_stats(self.store)
        lines = [
            f"**Store:** {stats['location']} (collection `{stats['collection']}`)  ",
            f"**Model:** {stats['model'] or '-'} ({stats['dimension'] or '-'}-d)  ",
            f"**Indexed:** {stats['points']} crops from {stats['photos']} photos",
            "",
            "| factory | photos | crops |",
            "|---|---:|---:|",
        ]
        for name, counts in stats["factories"].items():
            lines.append(f"| {_md_escape(name)} | {counts['photos']} | {counts['crops']} |")
        if not stats["factories"]:
            lines.append("| (empty: add photos below or run `ingest add FOLDER`) | 0 | 0 |")
        return "\n".join(lines)

    def _where(self, factories: Sequence[str] | None, product: str | None, product_exact: bool,
               group: str | None = None):
        where: dict[str, Any] = {}
        if factories:
            where["factory"] = list(factories)
        product = (product or "").strip()
        if product:
            where["product_id"] = [product] if product_exact else Contains(product)
        group = (group or "").strip()
        if group:
            where[group_payload_key(group)] = [group]
        return where or None

    # ------------------------------------------------------------------ searches

    def _results(self, run: Callable[[int], list[Hit]], top_k: int, one_per_product: bool, what: str) -> Results:
        top_k = max(1, min(int(top_k), 200))
        try:
            found = run(min(1000, top_k * OVERFETCH) if one_per_product else top_k)
            hits = best_per_product(found, top_k) if one_per_product else found
        except ShoeSearchError as exc:
            return Results([], [], f"⚠️ {exc}")
        gallery = [(self._thumbnail(h), self._caption(h)) for h in hits]
        status = f"{len(hits)} results for {what}" if hits else f"No results for {what}: loosen the filters or the minimum similarity."
        if getattr(found, "notice", ""):  # a text query longer than the model reads
            status += f"\n\n⚠️ {_md_escape(found.notice)}"
        return Results(gallery, [_record(h) for h in hits], status)

    def search_text(self, text: str, factories: Sequence[str] | None = None, product: str = "",
                    product_exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                    one_per_product: bool = False, group: str = "") -> Results:
        where = self._where(factories, product, product_exact, group)
        return self._results(
            lambda k: self.search.search_text(text, where=where, top_k=k, min_score=_min_score(min_score)),
            top_k, one_per_product, f"“{_md_escape((text or '').strip())}”")

    def _query_crops(self, image: Image.Image | str | Path):
        if isinstance(image, (str, Path)):
            image = load_photo(Path(image), self.settings.max_image_pixels)
        return self.search.query_crops(image.convert("RGB"))

    def detect(self, image: Image.Image | str | None) -> tuple[list[tuple[Image.Image, str]], str]:
        """Shoe regions of a query photo (most confident first, whole photo last)."""
        if image is None:
            return [], ""
        try:
            crops = self._query_crops(image)
        except (BadImage, ShoeSearchError) as exc:
            return [], f"⚠️ That photo cannot be used: {exc}"
        found = len(crops) - 1
        note = (f"{found} shoe(s) detected: pick one below (the first is used by default)." if found
                else "No shoe detected: the whole photo is used.")
        return [(c.image, c.label) for c in crops], note

    def search_image(self, image: Image.Image | str | None, region: int = 0, factories: Sequence[str] | None = None,
                     product: str = "", product_exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                     one_per_product: bool = False, group: str = "") -> Results:
        """Search with region `region` of the photo (0 = best detection, -1 = whole photo)."""
        if image is None:
            return Results([], [], "⚠️ Upload or paste a photo first.")
        try:
            crops = self._query_crops(image)
        except (BadImage, ShoeSearchError) as exc:
            return Results([], [], f"⚠️ That photo cannot be used: {exc}")
        region = int(region) if region is not None else 0
        crop = crops[region] if -len(crops) <= region < len(crops) else crops[0]
        where = self._where(factories, product, product_exact, group)
        return self._results(
            lambda k: self.search.search_image(crop.image, where=where, top_k=k, min_score=_min_score(min_score)),
            top_k, one_per_product, f"the photo ({crop.label})")

    def more_like_this(self, point_id: str | None, factories: Sequence[str] | None = None, product: str = "",
                       product_exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                       one_per_product: bool = False, group: str = "") -> Results:
        if not point_id:
            return Results([], [], "⚠️ Select a result first.")
        where = self._where(factories, product, product_exact, group)
        return self._results(
            lambda k: self.search.more_like_this(point_id, where=where, top_k=k, min_score=_min_score(min_score)),
            top_k, one_per_product, "more like the selected crop")

    # ------------------------------------------------------------------ result detail

    def hit_detail(self, hits: Sequence[HitRecord] | None, index: int | None) -> tuple[Image.Image | None, dict, str]:
        """The selected hit's full photo with its box drawn, its payload, and its point id."""
        if not hits or index is None or not 0 <= int(index) < len(hits):
            return None, {}, ""
        hit = hits[int(index)]
        payload = dict(hit["payload"])
        try:
            photo = load_photo(Path(payload["photo_path"]), self.settings.max_image_pixels)
        except (BadImage, OSError, KeyError):
            photo = None  # the source photo moved or is gone: fall back to the thumbnail
        if photo is None:
            thumb = self._thumbnail_path(payload)
            photo = Image.open(thumb).convert("RGB") if thumb else None
        elif payload.get("box"):
            draw = ImageDraw.Draw(photo)
            width = max(2, round(max(photo.size) / 200))
            draw.rectangle(payload["box"], outline=(255, 30, 30), width=width)
        return photo, {"point_id": hit["point_id"], "score": hit["score"], **payload}, hit["point_id"]

    def _thumbnail_path(self, payload: dict[str, Any]) -> str | None:
        """The crop thumbnail, only if it really lies under DATA_DIR (no path tricks)."""
        rel = payload.get("crop_path")
        if not rel:
            return None
        path = (self.data_dir / rel).resolve()
        if not path.is_relative_to(self.data_dir) or not path.is_file():
            return None
        return str(path)

    def _thumbnail(self, hit: Hit) -> str:
        return self._thumbnail_path(hit.payload) or str(self._missing_thumbnail())

    def _missing_thumbnail(self) -> Path:
        path = self.data_dir / "crops" / "missing.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (220, 220, 220)).save(path)
        return path

    @staticmethod
    def _caption(hit: Hit) -> str:
        return f"{hit.factory} · {hit.product_id} · {hit.score:.3f}"

    # ------------------------------------------------------------------ duplicates

    def find_duplicates(self, duplicate_threshold: float = 0.95, similar_threshold: float = 0.85,
                        scope: str = "all", factories: Sequence[str] | None = None, level: str = "crop",
                        linkage: str = "single", progress: Callable[[float, str], None] | None = None) -> Duplicates:
        """Cluster the index; returns the summary, the factory heatmap, groups and report files."""
        from core.cluster_service import write_reports
        from core.clustering import ClusterSettings

        if scope not in ("all", "cross-factory", "within-factory") or level not in ("crop", "product") \
                or linkage not in ("single", "complete"):
            return Duplicates(f"⚠️ Unknown option: scope {scope!r}, level {level!r}, linkage {linkage!r}.")
        options = ClusterSettings(float(duplicate_threshold), float(similar_threshold), scope, level, linkage)
        try:
            with self._ingest_lock:  # payload writes: one clustering or upload at a time
                result = self.clusters.run(options, factories=list(factories or []), progress=progress)
        except ShoeSearchError as exc:
            return Duplicates(f"⚠️ {exc}")
        out_dir = self.data_dir / "reports" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        files = write_reports(result, out_dir, self.data_dir, ["json", "csv"])
        summary = result.summary()
        lines = [f"**{summary['items']} crops** clustered in {sum(result.timings.values()):.1f}s "
                 f"(scope {scope}, {level} level, {linkage} linkage)", "",
                 "| tier | groups | crops in groups | largest | changes since last run |", "|---|---:|---:|---:|---|"]
        for tier, info in summary["tiers"].items():
            changes = ", ".join(f"{n} {st}" for st, n in sorted(info["status"].items())) or "-"
            lines.append(f"| {tier} | {info['groups']} | {info['items_in_groups']} | {info['largest']} | {changes} |")
        groups = [_group_record(g) for g in result.groups if g.tier != "identical"] + \
                 [_group_record(g) for g in result.groups if g.tier == "identical"]
        gallery = [(self._member_thumbnail(g["members"][0]), f"{g['id']} · {g['size']} · {', '.join(g['factories'])[:40]}")
                   for g in groups]
        tier = "similar" if summary["tiers"]["similar"]["groups"] else "duplicate"
        heatmap = overlap_heatmap(summary["tiers"][tier]["factory_overlap"], f"{tier} groups shared by two factories")
        return Duplicates("\n".join(lines), heatmap, gallery, groups, [str(f) for f in files if f.suffix in {".json", ".csv"}])

    def group_members(self, groups: Sequence[dict[str, Any]] | None, index: int | None) -> tuple[list[GalleryItem], str]:
        """Thumbnails of one group's members (representative first) and its id."""
        if not groups or index is None or not 0 <= int(index) < len(groups):
            return [], ""
        group = groups[int(index)]
        items = [(self._member_thumbnail(m), ("representative · " if k == 0 else f"{m['similarity']:.3f} · ")
                  + f"{m['factory']} · {m['product_id']}") for k, m in enumerate(group["members"])]
        return items, group["id"]

    def _member_thumbnail(self, member: dict[str, Any]) -> str:
        return self._thumbnail_path(member) or str(self._missing_thumbnail())

    # ------------------------------------------------------------------ adding photos

    def add_photos(self, files: Sequence[str] | None, factory: str,
                   progress: Callable[[int, int], None] | None = None) -> str:
        """Copy uploaded photos (or zips of photos) under DATA_DIR/uploads/FACTORY and ingest them."""
        factory = (factory or "").strip()
        if not factory or factory in {".", ".."} or "/" in factory or "\\" in factory:
            return "⚠️ Name the factory these photos come from (letters, digits, - and _; no slashes)."
        if not files:
            return "⚠️ Choose photos (or a .zip of photos) to upload."
        target = self.settings.uploads_dir / factory
        rejected: list[str] = []
        for name in files:
            source = Path(name)
            if source.suffix.lower() == ".zip":
                rejected += _extract_photos(source, target, self.settings.ui_max_upload_mb * 1024 * 1024)
            elif source.suffix.lower() in PHOTO_EXTENSIONS:
                target.mkdir(parents=True, exist_ok=True)
                with open(source, "rb") as src:
                    _save_upload(src, target / source.name)
            else:
                rejected.append(f"{source.name}: not a photo or .zip")
        sources = list(discover(target, factory=factory))
        with self._ingest_lock:
            try:
                report = self.ingest.add(sources, factory,
                                         progress=(lambda done, _: progress(done, len(sources))) if progress else None)
            except ShoeSearchError as exc:
                return f"⚠️ {exc}"
        lines = [
            f"**{_md_escape(factory)}:** {report.photos_added} photos added ({report.crops_added} crops), "
            f"{report.photos_unchanged} already indexed, {len(report.photos_failed)} failed "
            f"in {report.seconds:.1f}s."
        ]
        lines += [f"- skipped {_md_escape(Path(f.path).name)}: {_md_escape(f.error)}" for f in report.photos_failed]
        lines += [f"- skipped {_md_escape(r)}" for r in rejected]
        return "\n".join(lines)


def _min_score(value: float | None) -> float | None:
    return float(value) if value else None


def _md_escape(text: str) -> str:
    """Show user-supplied text literally in Markdown (no HTML, no formatting)."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_{}[]()#+!|~":
        out = out.replace(char, "\\" + char)
    return out


def _save_upload(src, dest: Path) -> None:
    """Write an uploaded file to `dest`; a different file of that name keeps its place."""
    data = src.read()
    if dest.exists():
        if dest.read_bytes() == data:
            return  # the same photo uploaded again
        dest = dest.with_name(f"{dest.stem}-{uuid.uuid4().hex[:8]}{dest.suffix}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def _extract_photos(archive: Path, target: Path, max_bytes: int) -> list[str]:
    """Extract the photos of a zip under `target`, refusing unsafe member names and zip bombs."""
    rejected = []
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > max_bytes:
                return [f"{archive.name}: unpacks to more than {max_bytes // (1024 * 1024)} MB"]
            for member in members:
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                if not parts or parts[0] == "/" or ".." in parts or any(p.startswith(".") for p in parts):
                    rejected.append(f"{member.filename}: unsafe or hidden path in zip")
                    continue
                if PurePosixPath(member.filename).suffix.lower() not in PHOTO_EXTENSIONS:
                    continue
                with zf.open(member) as src:
                    _save_upload(src, target.joinpath(*parts))
    except zipfile.BadZipFile:
        rejected.append(f"{archive.name}: not a valid zip file")
    return rejected
