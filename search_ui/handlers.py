"""What the UI does, as plain functions: inputs in, display values out.

No Gradio here (the layout adapts events), and no vector-database or model library (the
core services do that). Errors a user can act on come back as a message, never a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from core.domain.options import REVIEW_ORDER, Level, Linkage, ReportFormat, Scope, Tier
from core.domain.types import Hit
from core.errors import BadImage, ShoeSearchError
from core.pipeline.ingest import IngestService
from core.search.query_mix import terms
from core.search.service import SearchService, index_stats
from core.settings import Settings
from core.store.base import Contains, Store
from core.vision.crops import load_query_photo
from core.vision.images import PHOTO_EXTENSIONS, load_photo

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
    count: str = ""  # reviewed / to review


@dataclass
class Review:
    """What a review action shows: the groups (state), their gallery, the selected group's members,
    its id, what happened, and the reviewed / to review count."""

    groups: list[dict[str, Any]]
    gallery: list[GalleryItem]
    members: list[GalleryItem]
    group_id: str
    message: str
    count: str


def group_payload_key(group_id: str) -> str:
    """The payload key holding a group id, from the id's tier prefix (dup-, sim-, idt-, phs-);
    ShoeSearchError for an id of no tier."""
    try:
        return Tier.of_group(group_id).payload_key
    except ValueError as exc:
        raise ShoeSearchError(str(exc)) from None


def _group_record(group, level: str = "crop") -> dict[str, Any]:
    from dataclasses import asdict

    return {"id": group.id, "tier": group.tier, "status": group.status, "size": len(group.members),
            "factories": group.factories, "min_similarity": group.min_similarity, "reviewed": group.reviewed,
            "level": level, "members": [asdict(m) for m in group.members]}


TIER_ORDER = {tier: rank for rank, tier in enumerate(REVIEW_ORDER)}


def review_order(group: dict[str, Any]) -> tuple:
    """Groups as a reviewer takes them: to review first, cross-factory before within-factory, the
    duplicate tier, then similar, then perceptual-hash copies, larger first; byte-identical groups last."""
    return (group["tier"] == Tier.IDENTICAL, bool(group.get("reviewed")), len(group["factories"]) < 2,
            TIER_ORDER.get(group["tier"], 3), -group["size"], group["id"])


def review_count(groups: Sequence[dict[str, Any]]) -> str:
    """'**3 of 12 groups reviewed** · 9 to review (4 cross-factory)' (byte-identical groups apart)."""
    judged = [g for g in groups if g["tier"] != Tier.IDENTICAL]
    if not groups:
        return ""
    done = sum(bool(g.get("reviewed")) for g in judged)
    left = [g for g in judged if not g.get("reviewed")]
    cross = sum(len(g["factories"]) > 1 for g in left)
    text = f"**{done} of {len(judged)} groups reviewed** · {len(left)} to review"
    text += f" ({cross} cross-factory)" if left else " · all done"
    identical = len(groups) - len(judged)
    if identical:
        text += f" · {identical} identical-photo group{'s' if identical != 1 else ''} (same bytes: nothing to decide)"
    return text


def _member_key(member: dict[str, Any]) -> str | None:
    from core.duplicates.review import crop_key

    return crop_key(member["photo_sha256"], member.get("crop_index", 0)) if member.get("photo_sha256") else None


def _member_keys(member: dict[str, Any], level: str) -> set[str]:
    from core.duplicates.review import photo_key, product_key

    keys = {k for k in (_member_key(member), photo_key(member["photo_sha256"]) if member.get("photo_sha256") else None)
            if k}
    if level == "product":
        keys.add(product_key(member["factory"], member["product_id"]))
    return keys


def _hint(member: dict[str, Any]) -> dict[str, Any]:
    return {"photo_path": member.get("photo_path"), "factory": member.get("factory"),
            "product_id": member.get("product_id")}


@dataclass
class Results:
    """What a search shows: gallery items, the hits behind them, a status line."""

    gallery: list[GalleryItem]
    hits: list[HitRecord]
    status: str


def _record(hit: Hit) -> HitRecord:
    record = {"point_id": hit.point_id, "score": round(hit.score, 6), "payload": hit.payload}
    if hit.linked:  # linked products collapsed into this result
        record["also_sold_as"] = [p.to_dict() for p in hit.linked]
    return record


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
        from core.duplicates.service import ClusterService

        self.settings = settings
        self.store = store
        self.search = search
        self.ingest = ingest
        self.clusters = ClusterService(store, settings.data_dir, server_index=bool(settings.qdrant_url))
        self.data_dir = Path(settings.data_dir).resolve()
        self._ingest_lock = threading.Lock()  # one upload ingest at a time; searches go on
        # The `ingest` command writing through this UI right now (core/store/host.py), in words, or None.
        self.writer_elsewhere: Callable[[], str | None] = lambda: None

    # ------------------------------------------------------------------ filters and catalogue

    def factory_choices(self) -> list[tuple[str, str]]:
        """(label with crop count, factory name) for the factory filter."""
        counts = self.store.facet("factory")
        return [(f"{name} ({counts[name]})", name) for name in sorted(counts)]

    def catalogue_markdown(self) -> str:
        stats = index_stats(self.store)
        lines = [
            f"**Store:** {stats['location']} (collection `{stats['collection']}`)  ",
            f"**Model:** {stats['model'] or '-'} ({stats['dimension'] or '-'}-d)"
            + (f", text queries by {_md_escape(stats['text_model'])}" if stats.get("text_model") else "") + "  ",
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

    def _results(self, run: Callable[[int], list[Hit]], top_k: int, one_per_product: bool, what: str,
                 where=None, collapse_linked: bool = False) -> Results:
        """Run a search and shape what the page shows. With `one_per_product`, each product once at its
        best crop, captioned with how many other crops of it the index holds within `where`."""
        top_k = max(1, min(int(top_k), 200))
        more: dict[tuple[str, str], int] = {}
        try:
            found = run(min(1000, top_k * OVERFETCH) if one_per_product else top_k)
            hits = best_per_product(found, top_k) if one_per_product else found
            more = self._other_crops(hits, where) if one_per_product else {}
        except ShoeSearchError as exc:
            return Results([], [], f"⚠️ {exc}")
        gallery = [(self._thumbnail(h), self._caption(h, more.get((h.factory, h.product_id), 0))) for h in hits]
        if hits:
            shaped = [label for on, label in ((collapse_linked, "one per linked product"),
                                              (one_per_product, "one per product")) if on]
            status = (f"{len(hits)} results for {what}" + (f" ({', '.join(shaped)})" if shaped else "")
                      + "  \n" + _factory_line(hits))
        else:
            status = f"No results for {what}: loosen the filters or the minimum similarity."
        if getattr(found, "notice", ""):  # a text query longer than the model reads
            status += f"\n\n⚠️ {_md_escape(found.notice)}"
        if collapse_linked and hits and not self.search.product_links():
            status += ("\n\nNo products are linked across factories yet: nothing to collapse (link them in the "
                       "Duplicates tab with *Same product across factories*).")
        return Results(gallery, [_record(h) for h in hits], status)

    def _other_crops(self, hits: Sequence[Hit], where) -> dict[tuple[str, str], int]:
        """(factory, product) -> how many more crops of that product lie within `where` (one facet
        query per factory shown)."""
        products: dict[str, set[str]] = {}
        for hit in hits:
            products.setdefault(hit.factory, set()).add(hit.product_id)
        counts: dict[tuple[str, str], int] = {}
        for factory, ids in products.items():
            scope = {**(where or {}), "factory": [factory], "product_id": sorted(ids)}
            for product, count in self.store.facet("product_id", where=scope).items():
                counts[(factory, product)] = max(0, count - 1)
        return counts

    def search_text(self, text: str, factories: Sequence[str] | None = None, product: str = "",
                    product_exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                    one_per_product: bool = False, group: str = "", collapse_linked: bool = False) -> Results:
        try:
            where = self._where(factories, product, product_exact, group)
        except ShoeSearchError as exc:  # a group id of no tier
            return Results([], [], f"⚠️ {exc}")
        return self._results(
            lambda k: self.search.search_text(text, where=where, top_k=k, min_score=_min_score(min_score),
                                              collapse_linked=bool(collapse_linked)),
            top_k, one_per_product, f"“{_md_escape((text or '').strip())}”", where, bool(collapse_linked))

    def _query_crops(self, image: Image.Image | str | Path):
        if isinstance(image, (str, Path)):
            image = load_query_photo(Path(image), self.settings.max_image_pixels, self.settings.decode_max_side)
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
        note = (f"{found} shoe(s) detected: the first is searched; click another to search with it." if found
                else "No shoe detected: the whole photo is searched.")
        return [(c.image, _region_label(k, crops)) for k, c in enumerate(crops)], note

    def search_image(self, image: Image.Image | str | None, region: int = 0, factories: Sequence[str] | None = None,
                     product: str = "", product_exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                     one_per_product: bool = False, group: str = "", text: str = "", text_weight: float = 1.0,
                     not_text: str = "", image_url: str = "", collapse_linked: bool = False) -> Results:
        """Search with region `region` of the photo (0 = best detection, -1 = whole photo), plus the
        words in `text` and minus those in `not_text` (comma-separated) at `text_weight`. Without a
        photo, the one at `image_url` is fetched."""
        if image is None and (image_url or "").strip():
            try:
                image = self.fetch_url_photo(image_url)
            except ShoeSearchError as exc:
                return Results([], [], f"⚠️ {exc}")
        if image is None:
            return Results([], [], "⚠️ Upload or paste a photo first.")
        try:
            words = terms(text, not_text, text_weight)
            crops = self._query_crops(image)
        except BadImage as exc:
            return Results([], [], f"⚠️ That photo cannot be used: {exc}")
        except ShoeSearchError as exc:
            return Results([], [], f"⚠️ {exc}")
        region = int(region) if region is not None else 0
        index = region % len(crops) if -len(crops) <= region < len(crops) else 0
        crop = crops[index]
        try:
            where = self._where(factories, product, product_exact, group)
        except ShoeSearchError as exc:  # a group id of no tier
            return Results([], [], f"⚠️ {exc}")
        return self._results(
            lambda k: self.search.search_image(crop.image, where=where, top_k=k, min_score=_min_score(min_score),
                                               words=words, collapse_linked=bool(collapse_linked)),
            top_k, one_per_product, f"the photo ({_region_label(index, crops)}){_words_label(words)}", where,
            bool(collapse_linked))

    def fetch_url_photo(self, url: str) -> Image.Image:
        """The photo at an http(s) URL, within the IMAGE_URL* limits (ShoeSearchError otherwise)."""
        from core.search.image_urls import UrlLimits, fetch_photo

        return fetch_photo(url, UrlLimits.from_settings(self.settings), self.settings.max_image_pixels,
                           self.settings.decode_max_side)

    def fetch_url(self, url: str) -> tuple[Image.Image | None, list[tuple[Image.Image, str]], str]:
        """For the page: the photo at `url` (to show in the photo box), its detected shoes and a note."""
        try:
            photo = self.fetch_url_photo(url)
        except ShoeSearchError as exc:
            return None, [], f"⚠️ {exc}"
        regions, note = self.detect(photo)
        return photo, regions, note

    def more_like_this(self, point_id: str | None, factories: Sequence[str] | None = None, product: str = "",
                       product_exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                       one_per_product: bool = False, group: str = "", text: str = "", text_weight: float = 1.0,
                       not_text: str = "", collapse_linked: bool = False) -> Results:
        if not point_id:
            return Results([], [], "⚠️ Select a result first.")
        try:
            words = terms(text, not_text, text_weight)
        except ShoeSearchError as exc:
            return Results([], [], f"⚠️ {exc}")
        try:
            where = self._where(factories, product, product_exact, group)
        except ShoeSearchError as exc:  # a group id of no tier
            return Results([], [], f"⚠️ {exc}")
        return self._results(
            lambda k: self.search.more_like_this(point_id, where=where, top_k=k, min_score=_min_score(min_score),
                                                 words=words, collapse_linked=bool(collapse_linked)),
            top_k, one_per_product, f"more like the selected crop (the crop itself left out){_words_label(words)}",
            where, bool(collapse_linked))

    def refine(self, liked: Sequence[str] | None, disliked: Sequence[str] | None,
               factories: Sequence[str] | None = None, product: str = "", product_exact: bool = False,
               min_score: float = 0.0, top_k: int = 24, one_per_product: bool = False, group: str = "",
               collapse_linked: bool = False) -> Results:
        """Crops like the liked ones and unlike the disliked ones (point ids), within the filters."""
        liked, disliked = list(liked or []), list(disliked or [])
        try:
            where = self._where(factories, product, product_exact, group)
        except ShoeSearchError as exc:  # a group id of no tier
            return Results([], [], f"⚠️ {exc}")
        what = f"{len(liked)} liked and {len(disliked)} disliked crops (those left out)"
        return self._results(
            lambda k: self.search.refine(liked, disliked, where=where, top_k=k, min_score=_min_score(min_score),
                                         collapse_linked=bool(collapse_linked)),
            top_k, one_per_product, what, where, bool(collapse_linked))

    def crop_as_query(self, point_id: str | None, hits: Sequence[HitRecord] | None) -> tuple[str | None, str]:
        """The selected result as the photo query: its thumbnail (to show in the photo box) and a note."""
        hit = next((h for h in hits or [] if point_id and h["point_id"] == point_id), None)
        if hit is None:
            return None, "⚠️ Click a result first, then search with it."
        payload = hit["payload"]
        return self._thumbnail(Hit(hit["point_id"], hit["score"], payload)), (
            f"Searching with the indexed crop {_md_escape(payload.get('factory', ''))} · "
            f"{_md_escape(payload.get('product_id', ''))} (its stored vector, itself left out): add words below "
            f"and search again; upload a photo to search with that instead.")

    @staticmethod
    def mark(liked: Sequence[str] | None, disliked: Sequence[str] | None, labels: dict[str, str] | None,
             point_id: str | None, hits: Sequence[HitRecord] | None, like: bool
             ) -> tuple[list[str], list[str], dict[str, str], str]:
        """Add the selected crop to the liked (or disliked) list, taking it off the other one.
        Returns both lists, the labels of every crop marked so far, and a note."""
        liked, disliked, labels = list(liked or []), list(disliked or []), dict(labels or {})
        if not point_id:
            return liked, disliked, labels, "⚠️ Click a result first, then 👍 or 👎."
        hit = next((h for h in hits or [] if h["point_id"] == point_id), None)
        if hit is not None:
            labels[point_id] = f"{hit['payload'].get('factory', '')} · {hit['payload'].get('product_id', '')}"
        labels.setdefault(point_id, point_id[:8])
        add, other = (liked, disliked) if like else (disliked, liked)
        if point_id in other:
            other.remove(point_id)
        if point_id not in add:
            add.append(point_id)
        return liked, disliked, labels, (f"{'👍 liked' if like else '👎 disliked'} {labels[point_id]}: "
                                         f"Refine searches with {len(liked)} liked and {len(disliked)} disliked.")

    def search_group(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None) -> Results:
        """Every crop of one duplicate group, the representative first, then by similarity to it."""
        group = next((g for g in groups or [] if g["id"] == group_id), None)
        if group is None:
            return Results([], [], "⚠️ Pick a group first (Duplicates tab: run, then click a group).")
        representative = group["members"][0]["point_id"]
        where = {group_payload_key(group["id"]): [group["id"]]}
        return self._results(
            lambda k: self.search.more_like_this(representative, where=where, top_k=k, include_self=True),
            max(group["size"], 1), False, f"duplicate group {_md_escape(group['id'])}", where)

    # ------------------------------------------------------------------ result detail

    def hit_detail(self, hits: Sequence[HitRecord] | None, index: int | None) -> tuple[Image.Image | None, str, str]:
        """The selected hit's full photo with its box drawn, a readable card, and its point id."""
        if not hits or index is None or not 0 <= int(index) < len(hits):
            return None, "", ""
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
        try:
            file_bytes = Path(payload["photo_path"]).stat().st_size
        except (OSError, KeyError):
            file_bytes = None
        return photo, detail_card(hit, file_bytes), hit["point_id"]

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
    def _caption(hit: Hit, more: int = 0) -> str:
        """'factory · product · 0.912', ' · +3 more crops' when grouped by product, and
        ' · also sold as factory_b/B-77' when linked products were collapsed into it."""
        caption = f"{hit.factory} · {hit.product_id} · {hit.score:.3f}"
        if more:
            caption += f" · +{more} more crop{'s' if more > 1 else ''}"
        if hit.linked:
            caption += " · also sold as " + ", ".join(p.name for p in hit.linked)
        return caption

    # ------------------------------------------------------------------ duplicates

    def find_duplicates(self, duplicate_threshold: float = 0.95, similar_threshold: float = 0.85,
                        scope: str = "all", factories: Sequence[str] | None = None, level: str = "crop",
                        linkage: str = "single", progress: Callable[[float, str], None] | None = None) -> Duplicates:
        """Cluster the index; returns the summary, the factory heatmap, groups and report files."""
        from core.duplicates.groups import ClusterSettings
        from core.duplicates.reports import overlap_heatmap, write_reports

        try:
            scope, level, linkage = Scope(scope), Level(level), Linkage(linkage)
        except ValueError:
            return Duplicates(f"⚠️ Unknown option: scope {scope!r}, level {level!r}, linkage {linkage!r}.")
        options = ClusterSettings(float(duplicate_threshold), float(similar_threshold), scope, level, linkage)
        if busy := self._busy():
            return Duplicates(busy)
        try:
            with self._ingest_lock:  # payload writes: one clustering or upload at a time
                result = self.clusters.run(options, factories=list(factories or []), progress=progress)
        except ShoeSearchError as exc:
            return Duplicates(f"⚠️ {exc}")
        out_dir = self.data_dir / "reports" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        files = write_reports(result, out_dir, self.data_dir, [ReportFormat.JSON, ReportFormat.CSV])
        summary = result.summary()
        lines = [f"**{summary['items']} crops** clustered in {sum(result.timings.values()):.1f}s "
                 f"(scope {scope}, {level} level, {linkage} linkage)", "",
                 "| tier | groups | crops in groups | largest | changes since last run |", "|---|---:|---:|---:|---|"]
        for tier, info in summary["tiers"].items():
            changes = ", ".join(f"{n} {st}" for st, n in sorted(info["status"].items())) or "-"
            lines.append(f"| {tier} | {info['groups']} | {info['items_in_groups']} | {info['largest']} | {changes} |")
        groups = sorted((_group_record(g, level) for g in result.groups), key=review_order)
        tier = Tier.SIMILAR if summary["tiers"][Tier.SIMILAR]["groups"] else Tier.DUPLICATE
        heatmap = overlap_heatmap(summary["tiers"][tier]["factory_overlap"],
                                  f"{tier.capitalize()} groups per factory pair")
        return Duplicates("\n".join(lines), heatmap, self.group_gallery(groups), groups,
                          [str(f) for f in files if f.suffix in {".json", ".csv"}], review_count(groups))

    def group_gallery(self, groups: Sequence[dict[str, Any]]) -> list[GalleryItem]:
        return [(self._member_thumbnail(g["members"][0]), _group_caption(g)) for g in groups]

    def group_members(self, groups: Sequence[dict[str, Any]] | None, index: int | None) -> tuple[list[GalleryItem], str]:
        """Thumbnails of one group's members (representative first) and its id."""
        if not groups or index is None or not 0 <= int(index) < len(groups):
            return [], ""
        group = groups[int(index)]
        items = [(self._member_thumbnail(m), f"{m['factory']} · {m['product_id']} · "
                  + ("representative" if k == 0 else f"{m['similarity']:.3f}")) for k, m in enumerate(group["members"])]
        return items, group["id"]

    def _member_thumbnail(self, member: dict[str, Any]) -> str:
        return self._thumbnail_path(member) or str(self._missing_thumbnail())

    # ------------------------------------------------------------------ review

    def _review(self, groups: list[dict[str, Any]], group_id: str, message: str) -> Review:
        group = next((g for g in groups if g["id"] == group_id), None)
        members = self.group_members([group], 0)[0] if group else []
        return Review(groups, self.group_gallery(groups), members, group["id"] if group else "", message,
                      review_count(groups))

    def _refresh_reviewed(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Mark the groups whose members are now all joined by `same` decisions, and order them."""
        from core.duplicates.review import connected

        same = self.clusters.decisions.load().same_index()
        for group in groups:
            if group["tier"] != Tier.IDENTICAL:
                group["reviewed"] = bool(group.get("reviewed")) or connected(
                    [_member_keys(m, group.get("level", "crop")) for m in group["members"]], same)
        return sorted(groups, key=review_order)

    def _pick(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None):
        groups = [dict(g, members=list(g["members"])) for g in groups or []]  # never change the caller's state
        return groups, next((g for g in groups if g["id"] == group_id), None)

    def next_group(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None = None) -> Review:
        """The next group to review after `group_id` (in review order, wrapping round)."""
        groups, _ = self._pick(groups, group_id)
        if not groups:
            return self._review([], "", "⚠️ Find duplicates first.")
        ids = [g["id"] for g in groups]
        start = ids.index(group_id) + 1 if group_id in ids else 0
        for group in groups[start:] + groups[:start]:
            if group["tier"] != Tier.IDENTICAL and not group.get("reviewed") and group["id"] != group_id:
                return self._review(groups, group["id"], f"Group {_md_escape(group['id'])}: {group['size']} crops, "
                                                         f"{_md_escape(', '.join(group['factories']))}.")
        return self._review(groups, group_id or "", "Every group is reviewed.")

    def confirm_group(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None) -> Review:
        """"Same shoe": every member is the representative's shoe; then the next group to review."""
        from core.duplicates.review import SAME, PairInput

        groups, group = self._pick(groups, group_id)
        if group is None:
            return self._review(groups, "", "⚠️ Pick a group first (click one, or Next group).")
        members = group["members"]
        rep = _member_key(members[0])
        pairs = [PairInput(rep, _member_key(m), SAME, m["similarity"], {rep: _hint(members[0]), _member_key(m): _hint(m)})
                 for m in members[1:]]
        try:
            self.clusters.decisions.record(pairs)
        except ShoeSearchError as exc:
            return self._review(groups, group["id"], f"⚠️ {exc}")
        groups = self._refresh_reviewed(groups)
        following = self.next_group(groups, group["id"])
        done = f"✓ {_md_escape(group['id'])}: {len(members)} crops confirmed as the same shoe."
        return Review(following.groups, following.gallery, following.members, following.group_id,
                      f"{done} {('Next: ' + following.message) if following.group_id != group['id'] else following.message}",
                      following.count)

    def reject_member(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None,
                      member: int | None) -> Review:
        """"Not the same": the selected member is not the representative's shoe. It leaves the
        group here, and clustering never groups the two again."""
        from core.duplicates.review import DIFFERENT, PairInput

        groups, group = self._pick(groups, group_id)
        if group is None:
            return self._review(groups, "", "⚠️ Pick a group first (click one, or Next group).")
        if member is None or not 0 <= int(member) < len(group["members"]):
            return self._review(groups, group["id"], "⚠️ Click the member that is not the same shoe first.")
        member = int(member)
        if member == 0:
            return self._review(groups, group["id"], "⚠️ That is the representative: click another member, or make "
                                                     "another member the representative first.")
        rep, gone = group["members"][0], group["members"][member]
        try:
            self.clusters.decisions.record([PairInput(_member_key(rep), _member_key(gone), DIFFERENT, gone["similarity"],
                                                      {_member_key(rep): _hint(rep), _member_key(gone): _hint(gone)})])
        except ShoeSearchError as exc:
            return self._review(groups, group["id"], f"⚠️ {exc}")
        group["members"].pop(member)
        group["size"] = len(group["members"])
        group["factories"] = sorted({m["factory"] for m in group["members"]})
        what = f"✗ {_md_escape(gone['factory'])} · {_md_escape(gone['product_id'])} is not the same shoe: it is " \
               f"never grouped with this representative again (Find duplicates regroups)."
        if group["size"] < 2:
            groups = [g for g in groups if g["id"] != group["id"]]
            following = self.next_group(self._refresh_reviewed(groups), None)
            return Review(following.groups, following.gallery, following.members, following.group_id,
                          f"{what} Nothing is left of {_md_escape(group['id'])}. {following.message}", following.count)
        return self._review(self._refresh_reviewed(groups), group["id"], what)

    def make_representative(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None,
                            member: int | None) -> Review:
        """The selected member leads its group, here and in every later clustering."""
        groups, group = self._pick(groups, group_id)
        if group is None:
            return self._review(groups, "", "⚠️ Pick a group first (click one, or Next group).")
        if member is None or not 0 <= int(member) < len(group["members"]):
            return self._review(groups, group["id"], "⚠️ Click the member to make representative first.")
        chosen = group["members"][int(member)]
        try:
            self.clusters.decisions.set_representative(_member_key(chosen), _hint(chosen),
                                                       replaces=[_member_key(m) for m in group["members"]])
        except ShoeSearchError as exc:
            return self._review(groups, group["id"], f"⚠️ {exc}")
        similarity = self._similarities(chosen["point_id"], [m["point_id"] for m in group["members"]])
        members = [dict(m, similarity=round(similarity.get(m["point_id"], m["similarity"]), 6)) for m in group["members"]]
        members.sort(key=lambda m: (m["point_id"] != chosen["point_id"], -m["similarity"]))
        members[0]["similarity"] = 1.0
        group["members"] = members
        return self._review(groups, group["id"], f"★ {_md_escape(chosen['factory'])} · "
                                                 f"{_md_escape(chosen['product_id'])} now represents the group.")

    def link_products(self, groups: Sequence[dict[str, Any]] | None, group_id: str | None) -> Review:
        """"Same product across factories": the members' products in different factories are one
        shoe (factory_a/SKU-1 ≡ factory_b/B-77); the group counts as confirmed too."""
        from core.duplicates.review import SAME, PairInput, product_key

        groups, group = self._pick(groups, group_id)
        if group is None:
            return self._review(groups, "", "⚠️ Pick a group first (click one, or Next group).")
        members = group["members"]
        if len({m["factory"] for m in members}) < 2:
            return self._review(groups, group["id"], f"⚠️ Every member is from {_md_escape(members[0]['factory'])}: "
                                                     "nothing to link across factories (Same shoe confirms the group).")
        best: dict[tuple[str, str], float] = {}
        similarity = {}
        for m in members:
            similarity[m["point_id"]] = self._similarities(m["point_id"], [o["point_id"] for o in members])
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a["factory"] != b["factory"]:
                    pair = tuple(sorted((product_key(a["factory"], a["product_id"]),
                                         product_key(b["factory"], b["product_id"]))))
                    best[pair] = max(best.get(pair, -1.0), similarity[a["point_id"]].get(b["point_id"], -1.0))
        rep = _member_key(members[0])
        pairs = [PairInput(a, b, SAME, score if score > -1 else None) for (a, b), score in sorted(best.items())]
        pairs += [PairInput(rep, _member_key(m), SAME, m["similarity"], {rep: _hint(members[0]), _member_key(m): _hint(m)})
                  for m in members[1:]]
        try:
            self.clusters.decisions.record(pairs)
        except ShoeSearchError as exc:
            return self._review(groups, group["id"], f"⚠️ {exc}")
        products = sorted({f"{m['factory']}/{m['product_id']}" for m in members})
        groups = self._refresh_reviewed(groups)
        return self._review(groups, group["id"], f"🔗 Linked {len(products)} products as one shoe: "
                                                 f"{_md_escape(' ≡ '.join(products))} (ingest review export --products).")

    def _similarities(self, point_id: str, others: Sequence[str]) -> dict[str, float]:
        """Cosine of one crop's stored vector with others'."""
        import numpy as np

        points = {p.id: np.asarray(p.vector, dtype=np.float32)
                  for p in self.store.retrieve(list(dict.fromkeys([point_id, *others])), with_vectors=True)}
        if point_id not in points:
            return {}
        base = points[point_id] / max(float(np.linalg.norm(points[point_id])), 1e-12)
        return {pid: float(base @ (v / max(float(np.linalg.norm(v)), 1e-12))) for pid, v in points.items()}

    # ------------------------------------------------------------------ adding photos

    def _busy(self) -> str | None:
        """A message when an `ingest` command writes to the index through this UI (it may run for long)."""
        writer = self.writer_elsewhere()
        return f"⚠️ The index is busy: {writer} is writing to it. Try again when it has finished." if writer else None

    def add_photos(self, files: Sequence[str] | None, factory: str,
                   progress: Callable[[int, int], None] | None = None) -> str:
        """Stage uploaded photos (or zips of photos) under DATA_DIR/uploads/FACTORY and ingest them
        (core.catalogue.uploads does both); returns the report as Markdown."""
        from core.catalogue.uploads import UploadLimits, add_upload, check_factory_name

        try:
            factory = check_factory_name(factory)
        except ShoeSearchError as exc:
            return f"⚠️ {exc}"
        if not files:
            return "⚠️ Choose photos (or a .zip of photos) to upload."
        if busy := self._busy():
            return busy
        try:
            result = add_upload([Path(f) for f in files], factory, self.settings.uploads_dir, self.ingest,
                                limits=UploadLimits.for_upload_mb(self.settings.ui_max_upload_mb),
                                lock=self._ingest_lock, progress=progress)
        except ShoeSearchError as exc:
            return f"⚠️ {exc}"
        return upload_markdown(result)


DETAIL_FIELDS = (  # (label, payload key) shown on a result's card, in this order
    ("Factory", "factory"), ("Product", "product_id"), ("Photo", "photo_path"), ("Photo size", None),
    ("Crop box", "box"), ("Detected as", None), ("Indexed", "ingested_at"), ("Photo sha256", "photo_sha256"),
)
_CARD_HIDDEN = {"factory", "product_id", "photo_path", "photo_width", "photo_height", "box", "detector_class",
                "detector_confidence", "ingested_at", "photo_sha256", "crop_path", "crop_index", "width", "height",
                "model", "background", "crop_phash"}


def detail_card(hit: HitRecord, file_bytes: int | None = None) -> str:
    """A result as a person reads it: a small table, not a JSON dump (values escaped)."""
    payload = hit["payload"]
    values: dict[str, str] = {}
    for label, key in DETAIL_FIELDS:
        if label == "Photo size":
            w, h = payload.get("photo_width"), payload.get("photo_height")
            values[label] = (f"{w} × {h} px" if w and h else "-") + (
                f", {file_bytes / 1024:,.0f} KB on disk" if file_bytes is not None else ", file not found")
        elif label == "Detected as":
            cls, conf = payload.get("detector_class"), payload.get("detector_confidence")
            values[label] = f"{cls} ({conf:.2f})" if cls and conf is not None else "whole photo (no shoe detected)"
        elif key == "box":
            box = payload.get("box")
            values[label] = f"{box[0]}, {box[1]} → {box[2]}, {box[3]}" if box else "whole photo"
        elif key == "ingested_at":
            values[label] = _readable_date(payload.get(key))
        else:
            values[label] = str(payload.get(key) or "-")
    extras = {k: v for k, v in payload.items() if k not in _CARD_HIDDEN and not k.startswith("group_")}
    groups = [f"{v}" for k, v in sorted(payload.items()) if k.startswith("group_") and v]
    lines = [f"### {_md_escape(values['Factory'])} · {_md_escape(values['Product'])}",
             f"**Similarity {float(hit['score']):.3f}**", "", "| Detail | Value |", "|---|---|"]
    lines += [f"| {label} | {_md_escape(values[label])} |" for label, _ in DETAIL_FIELDS[2:]]
    lines += [f"| {_md_escape(k)} | {_md_escape(str(v))} |" for k, v in sorted(extras.items())]
    if groups:
        lines.append(f"| Duplicate groups | {_md_escape(', '.join(groups))} |")
    for linked in hit.get("also_sold_as") or []:  # the same shoe, linked in the review, at other factories
        score = "" if linked.get("score") is None else f" (similarity {float(linked['score']):.3f})"
        lines.append(f"| Also sold as | {_md_escape(linked['factory'] + '/' + linked['product_id'] + score)} |")
    lines.append(f"| Crop id | {_md_escape(hit['point_id'])} |")
    return "\n".join(lines)


def _readable_date(value: Any) -> str:
    if not value:
        return "-"
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _group_caption(group: dict[str, Any]) -> str:
    """'dup-… · 5 crops · factory_a, factory_b' (or '· 4 factories' when the names would not fit)."""
    factories = group["factories"]
    names = ", ".join(factories) if len(factories) <= 2 else f"{len(factories)} factories"
    reviewed = " · reviewed ✓" if group.get("reviewed") and group["tier"] != Tier.IDENTICAL else ""
    return f"{group['id']} · {group['size']} crops · {names}{reviewed}"


def _region_label(index: int, crops: Sequence[Any]) -> str:
    """'shoe 2 of 3 · Footwear 0.91' for a detected shoe, 'whole photo' for the last region."""
    crop = crops[index]
    if crop.detection is None:
        return "whole photo"
    return f"shoe {index + 1} of {len(crops) - 1} · {crop.label}"


def _factory_line(hits: Sequence[Hit]) -> str:
    """'by factory: factory_a 5 · factory_b 3' (most hits first): where this query's results come from."""
    counts: dict[str, int] = {}
    for hit in hits:
        counts[hit.factory] = counts.get(hit.factory, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "by factory: " + " · ".join(f"{_md_escape(name)} {count}" for name, count in ordered)


def _words_label(words: Sequence[Any]) -> str:
    """' + “red” − “suede” (words ×1)' for a status line (escaped); '' without words."""
    if not words:
        return ""
    shown = " ".join(("+ " if w.weight >= 0 else "− ") + f"“{_md_escape(w.text)}”" for w in words)
    return f" {shown} (words ×{abs(words[0].weight):g})"


def _min_score(value: float | None) -> float | None:
    return float(value) if value else None


def _md_escape(text: str) -> str:
    """Show user-supplied text literally in Markdown (no HTML, no formatting)."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_{}[]()#+!|~":
        out = out.replace(char, "\\" + char)
    return out


def upload_markdown(result) -> str:
    """An upload's report (core.catalogue.uploads.UploadReport) as Markdown: what was added, what the
    upload held, and every file or entry refused, skipped or ignored, by name."""
    from core.catalogue.folders import path_text

    staged, report = result.staged, result.ingest
    factory = _md_escape(staged.factory)
    if report is None:
        lines = [f"⚠️ No photos found in the upload: nothing was added to **{factory}** "
                 f"(photos are {' '.join(sorted(PHOTO_EXTENSIONS))} files, loose or in a .zip)."]
    else:
        lines = [f"**{factory}:** {report.photos_added} photos added ({report.crops_added} crops), "
                 f"{report.photos_unchanged} already indexed, {report.photos_updated} re-labelled, "
                 f"{len(report.photos_failed)} failed in {report.seconds:.1f}s."]
        products = staged.products
        shown = ", ".join(_md_escape(p) for p in products[:12]) + (", …" if len(products) > 12 else "")
        lines.append(f"- found {len(staged.photos)} photos of {len(products)} products: {shown}")
        for file in staged.files:
            if file.name.lower().endswith(".zip") and file.photos:
                unwrapped = f", top folder {_md_escape(file.unwrapped)}/ unwrapped" if file.unwrapped else ""
                lines.append(f"- {_md_escape(file.name)}: {file.photos} photos of {len(file.products)} products{unwrapped}")
        lines.append(f"- saved under uploads/{factory}: {staged.written} new files, "
                     f"{len(staged.photos) - staged.written} already there")
    for photo in staged.photos:
        if photo.kept_beside:
            lines.append(f"- kept both: {_md_escape(photo.name)} differs from the photo already saved as "
                         f"{_md_escape(photo.kept_beside)}; saved beside it as {_md_escape(path_text(photo.path.name))}")
    if report is not None:
        names = {path_text(p.path): p.name for p in staged.photos}
        removed = {path_text(p.path) for p in result.removed}
        for failed in report.photos_failed:
            gone = " (removed from uploads)" if failed.path in removed else ""
            lines.append(f"- skipped {_md_escape(names.get(failed.path, Path(failed.path).name))}: "
                         f"{_md_escape(failed.error)}{gone}")
    lines += [f"- refused {_md_escape(r.name)}: {_md_escape(r.reason)}" for r in staged.refused]
    if staged.ignored:
        shown = ", ".join(_md_escape(n) for n in staged.ignored[:10]) + (", …" if len(staged.ignored) > 10 else "")
        count = len(staged.ignored)
        lines.append(f"- ignored {count} {'entry' if count == 1 else 'entries'} that are not photos (or hidden): {shown}")
    return "\n".join(lines)
