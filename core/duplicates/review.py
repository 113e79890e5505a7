"""Review decisions: which crops, photos and products a person said are the same shoe, or not.

Decisions are keyed by photo content, never by path, so they survive restarts, re-clustering,
re-ingest and moved or renamed photos:

- ``crop:<photo sha256>:<crop index>``: one crop (what the Duplicates tab decides on);
- ``photo:<photo sha256>``: every crop of a photo (a photo path in an imported CSV);
- ``product:<factory>/<product id>``: a product (links across factories, imported rows).

A decision is ``same`` or ``different`` for an unordered pair of keys; the latest decision on
a pair wins. A crop can also be marked as the preferred representative of its group.

They live in one JSON file beside the cluster sidecar, ``DATA_DIR/clusters/<collection>.decisions.json``.
Every change is a read-modify-write under an exclusive lock (a second process, say the UI and
`ingest review import`, never loses the other's decisions) and is written atomically (a temporary
file, fsync, rename, fsync of the folder), so a crash or `kill -9` leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.domain.types import CropPayload
from core.errors import ShoeSearchError

SAME, DIFFERENT = "same", "different"
DECISIONS = (SAME, DIFFERENT)
FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DecisionsError(ShoeSearchError):
    """The decisions file cannot be read or written, or an import file is malformed."""


# --------------------------------------------------------------------------- keys


def crop_key(photo_sha256: str, crop_index: int | str | None) -> str:
    return f"crop:{photo_sha256}:{int(crop_index or 0)}"


def photo_key(photo_sha256: str) -> str:
    return f"photo:{photo_sha256}"


def product_key(factory: str, product_id: str) -> str:
    return f"product:{factory}/{product_id}"


def key_kind(key: str) -> str:
    return key.split(":", 1)[0]


def payload_keys(payload: Mapping[str, Any]) -> tuple[str | None, str | None, str]:
    """(crop key, photo key, product key) of a crop's payload; crop and photo keys are None
    for a payload without a content hash."""
    crop = CropPayload.from_payload(payload)
    product = product_key(crop.factory, crop.product_id)
    if not crop.photo_sha256:
        return None, None, product
    return crop_key(crop.photo_sha256, crop.crop_index), photo_key(crop.photo_sha256), product


def link_keys(payload: Mapping[str, Any]) -> set[str]:
    """Keys through which `same` decisions reach a crop: its crop and its photo.

    A product link does not glue a product's crops to another's (a front view and a sole view
    of one product are not near-duplicates); it counts when clustering products."""
    crop, photo, _ = payload_keys(payload)
    return {k for k in (crop, photo) if k}


def part_keys(payload: Mapping[str, Any]) -> set[str]:
    """Keys through which `different` decisions reach a crop: crop, photo and product."""
    crop, photo, product = payload_keys(payload)
    return {k for k in (crop, photo, product) if k}


def ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def connected(key_sets: Sequence[set[str]], same: Mapping[str, set[str]]) -> bool:
    """Whether the members (each a set of content keys) are all joined by `same` decisions
    among themselves; members sharing a crop key (byte-identical photos) count as joined."""
    n = len(key_sets)
    if n < 2:
        return True
    from core.duplicates.components import UnionFind

    joined = UnionFind(n)
    owners: dict[str, list[int]] = {}
    for i, keys in enumerate(key_sets):
        for key in keys:
            owners.setdefault(key, []).append(i)
    for key, members in owners.items():
        if key_kind(key) == "crop":
            for other in members[1:]:
                joined.union(other, members[0])
        for partner in same.get(key, ()):
            for i in members:
                for j in owners.get(partner, ()):
                    joined.union(i, j)
    return len({joined.find(i) for i in range(n)}) == 1


# --------------------------------------------------------------------------- records


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Decision:
    """One pair decision. `hints` keeps what each key looked like when decided (photo path,
    factory, product id), for reports when the photo is no longer indexed."""

    a: str
    b: str
    decision: str
    decided_at: str
    source: str = "ui"
    similarity: float | None = None
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "decision": self.decision, "decided_at": self.decided_at,
                "source": self.source, "similarity": self.similarity, "hints": self.hints}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(str(data["a"]), str(data["b"]), str(data["decision"]), str(data.get("decided_at") or ""),
                   str(data.get("source") or ""), data.get("similarity"), dict(data.get("hints") or {}))


@dataclass
class PairInput:
    """A decision to record: two keys, same|different, and what is known about each side."""

    a: str
    b: str
    decision: str
    similarity: float | None = None
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ReviewState:
    """Everything decided so far for one collection."""

    pairs: dict[tuple[str, str], Decision] = field(default_factory=dict)
    representatives: dict[str, dict[str, Any]] = field(default_factory=dict)  # crop key -> {decided_at, hint}

    def same_pairs(self) -> list[tuple[str, str]]:
        return sorted(k for k, d in self.pairs.items() if d.decision == SAME)

    def different_pairs(self) -> list[tuple[str, str]]:
        return sorted(k for k, d in self.pairs.items() if d.decision == DIFFERENT)

    def same_index(self) -> dict[str, set[str]]:
        """key -> keys decided the same shoe as it (both directions)."""
        index: dict[str, set[str]] = {}
        for a, b in self.same_pairs():
            index.setdefault(a, set()).add(b)
            index.setdefault(b, set()).add(a)
        return index

    def product_links(self) -> list[Decision]:
        return [d for (a, b), d in sorted(self.pairs.items())
                if d.decision == SAME and key_kind(a) == "product" and key_kind(b) == "product"]

    def counts(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = {}
        for (a, b), d in self.pairs.items():
            kind = key_kind(a) if key_kind(a) == key_kind(b) else f"{key_kind(a)}-{key_kind(b)}"
            by_kind.setdefault(kind, {SAME: 0, DIFFERENT: 0})[d.decision] += 1
        last = max((d.decided_at for d in self.pairs.values()), default=None)
        last = max([last or "", *(r.get("decided_at", "") for r in self.representatives.values())]) or None
        return {"same": sum(d.decision == SAME for d in self.pairs.values()),
                "different": sum(d.decision == DIFFERENT for d in self.pairs.values()),
                "by_kind": dict(sorted(by_kind.items())), "product_links": len(self.product_links()),
                "representatives": len(self.representatives), "last_decided_at": last}

    def to_json(self, collection: str) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "collection": collection, "saved_at": now(),
                "decisions": [d.to_dict() for _, d in sorted(self.pairs.items())],
                "representatives": [{"key": k, **v} for k, v in sorted(self.representatives.items())]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewState:
        state = cls()
        for row in data.get("decisions", []):
            decision = Decision.from_dict(row)
            state.pairs[ordered(decision.a, decision.b)] = decision
        for row in data.get("representatives", []):
            row = dict(row)
            state.representatives[str(row.pop("key"))] = row
        return state


# --------------------------------------------------------------------------- the file


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one: a temporary
    file beside it, fsync, rename over it, fsync of the folder. Raises OSError (the temporary
    file removed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Decisions:
    """The decisions file of one collection: load it, or change it under a lock."""

    def __init__(self, data_dir: Path, collection: str) -> None:
        self.collection = collection
        self.path = Path(data_dir) / "clusters" / f"{collection}.decisions.json"
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    def load(self) -> ReviewState:
        """The decisions as last saved (empty when none were made). A damaged file is an error,
        never silently replaced: it holds a person's work."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ReviewState()
        except OSError as exc:
            raise DecisionsError(f"cannot read the review decisions {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a version {FORMAT_VERSION} decisions file")
            return ReviewState.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecisionsError(
                f"the review decisions {self.path} are damaged ({exc}): restore it from a backup, or move it "
                f"aside to start over (`ingest review export` before any change keeps what can be read)") from None

    @contextlib.contextmanager
    def change(self) -> Iterator[ReviewState]:
        """Lock, reload, let the caller change the state, save atomically, unlock. Nothing is
        saved if the caller raises."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DecisionsError(f"cannot save review decisions in {self.path.parent}: "
                                 f"{exc.strerror or exc}; nothing was changed") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a killed writer
                with contextlib.suppress(OSError):
                    stale.unlink()
            state = self.load()
            yield state
            self._write(state)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, state: ReviewState) -> None:
        data = json.dumps(state.to_json(self.collection), indent=1, ensure_ascii=False).encode("utf-8")
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            raise DecisionsError(f"cannot save review decisions to {self.path}: {exc.strerror or exc}; "
                                 f"the decisions saved before are kept, this change is not") from None

    # ------------------------------------------------------------------ changes

    def record(self, pairs: Iterable[PairInput], source: str = "ui") -> int:
        """Record pair decisions (a later one on the same pair replaces it); returns how many
        pairs changed. A pair of one key with itself is ignored."""
        pairs = list(pairs)
        for pair in pairs:
            if pair.decision not in DECISIONS:
                raise DecisionsError(f"a decision is same or different, not {pair.decision!r}")
        changed = 0
        when = now()
        with self.change() as state:
            for pair in pairs:
                if pair.a == pair.b:
                    continue
                key = ordered(pair.a, pair.b)
                old = state.pairs.get(key)
                if old is not None and old.decision == pair.decision:
                    continue
                state.pairs[key] = Decision(key[0], key[1], pair.decision, when, source, pair.similarity,
                                            {k: v for k, v in pair.hints.items() if k in key})
                changed += 1
        return changed

    def set_representative(self, key: str, hint: Mapping[str, Any] | None = None,
                           replaces: Iterable[str] = ()) -> None:
        """Prefer crop `key` as its group's representative; the group's other crops (`replaces`)
        stop being preferred."""
        with self.change() as state:
            for other in replaces:
                if other != key:
                    state.representatives.pop(other, None)
            state.representatives[key] = {"decided_at": now(), "hint": dict(hint or {})}

    def merge(self, imported: ReviewState, source: str = "import") -> int:
        """Add imported decisions and representatives; returns how many pairs changed."""
        changed = 0
        with self.change() as state:
            for key, decision in imported.pairs.items():
                old = state.pairs.get(key)
                if old is not None and old.decision == decision.decision:
                    continue
                decision.source = decision.source or source
                decision.decided_at = decision.decided_at or now()
                state.pairs[key] = decision
                changed += 1
            for key, info in imported.representatives.items():
                state.representatives[key] = info
        return changed


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


# --------------------------------------------------------------------------- import and export

CSV_COLUMNS = ("a", "b", "decision", "a_sha256", "a_crop", "b_sha256", "b_crop", "similarity", "decided_at", "source")
REPRESENTATIVE = "representative"  # a CSV/JSON row marking `a` as its group's representative (b empty)


class ContentIndex:
    """What the index knows about photos and products: turns a photo path or a factory/product id
    into a content key, and a key back into a path a person can read."""

    def __init__(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        self.sha_by_path: dict[str, str] = {}
        self.path_by_sha: dict[str, str] = {}
        self.products: set[tuple[str, str]] = set()
        for payload in payloads:
            crop = CropPayload.from_payload(payload)
            if crop.photo_sha256 and crop.photo_path:
                self.sha_by_path[crop.photo_path] = crop.photo_sha256
                self.path_by_sha.setdefault(crop.photo_sha256, crop.photo_path)
            self.products.add((crop.factory, crop.product_id))

    def resolve(self, value: str, sha256: str = "", crop: str = "", base: Path | None = None) -> str | None:
        """The key for one side of a row, or None if nothing matches. `sha256`/`crop` (export
        columns) win over the path; `value` may also be a key itself (crop:..., photo:..., product:...)."""
        value, sha256, crop = value.strip(), sha256.strip().lower(), str(crop).strip()
        if sha256:
            return crop_key(sha256, int(crop)) if crop else photo_key(sha256)
        if _is_key(value):
            return value
        if not value:
            return None
        factory, _, product = value.partition("/")
        if product and (factory, product) in self.products:
            return product_key(factory, product)
        for candidate in _path_candidates(value, base):
            sha = self.sha_by_path.get(candidate)
            if sha is None and os.path.isfile(candidate):
                sha = _file_sha256(candidate)
            if sha:
                return crop_key(sha, int(crop)) if crop else photo_key(sha)
        return None

    def describe(self, key: str, hints: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, str, str]:
        """(what a person reads: a photo path or factory/product id, sha256, crop index) of a key."""
        kind, _, rest = key.partition(":")
        if kind == "product":
            return rest, "", ""
        sha, _, crop = rest.partition(":")
        hint = (hints or {}).get(key, {})
        return self.path_by_sha.get(sha) or str(hint.get("photo_path") or ""), sha, crop


def _is_key(value: str) -> bool:
    kind, _, rest = value.partition(":")
    if kind == "product":
        return "/" in rest
    if kind == "photo":
        return is_sha256(rest)
    if kind == "crop":
        sha, _, crop = rest.partition(":")
        return is_sha256(sha) and crop.isdigit()
    return False


def _path_candidates(value: str, base: Path | None) -> list[str]:
    path = Path(value).expanduser()
    tries = [path] if path.is_absolute() else [p for p in ((base / path) if base else None, Path.cwd() / path) if p]
    out = []
    for candidate in tries:
        for text in (os.path.abspath(candidate), str(candidate.resolve())):
            if text not in out:
                out.append(text)
    return out


def _file_sha256(path: str) -> str | None:
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def export_rows(state: ReviewState, index: ContentIndex) -> list[dict[str, Any]]:
    """Every decision (and representative) as a row of CSV_COLUMNS, plus `a_key`/`b_key`."""
    rows = []
    for (a, b), d in sorted(state.pairs.items()):
        (a_text, a_sha, a_crop), (b_text, b_sha, b_crop) = index.describe(a, d.hints), index.describe(b, d.hints)
        rows.append({"a": a_text, "b": b_text, "decision": d.decision, "a_sha256": a_sha, "a_crop": a_crop,
                     "b_sha256": b_sha, "b_crop": b_crop,
                     "similarity": "" if d.similarity is None else round(float(d.similarity), 6),
                     "decided_at": d.decided_at, "source": d.source, "a_key": a, "b_key": b})
    for key, info in sorted(state.representatives.items()):
        text, sha, crop = index.describe(key, {key: info.get("hint") or {}})
        rows.append({"a": text, "b": "", "decision": REPRESENTATIVE, "a_sha256": sha, "a_crop": crop, "b_sha256": "",
                     "b_crop": "", "similarity": "", "decided_at": info.get("decided_at", ""), "source": "",
                     "a_key": key, "b_key": ""})
    return rows


def write_export(path: Path, rows: Sequence[Mapping[str, Any]], collection: str) -> None:
    """CSV (CSV_COLUMNS) or, for a .json name, {"version", "collection", "decisions": rows}."""
    import csv
    import io

    if path.suffix.lower() == ".json":
        data = json.dumps({"version": FORMAT_VERSION, "collection": collection, "exported_at": now(),
                           "decisions": list(rows)}, indent=1, ensure_ascii=False)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue()
    _write_out(path, data)


def _write_out(path: Path, data: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data.encode("utf-8"))
    except OSError as exc:
        raise DecisionsError(f"cannot write {path}: {exc.strerror or exc}") from None


@dataclass
class ImportResult:
    state: ReviewState
    rows: int
    unmatched: list[str]


def read_import(path: Path, index: ContentIndex, source: str = "import") -> ImportResult:
    """Read a CSV (columns a,b,decision; the export's extra columns are used when present) or
    a JSON export (or a JSON list of such rows). Paths are read relative to the file's folder,
    then the working folder. A malformed row refuses the whole file (DecisionsError naming the
    line); rows whose photos or products are nowhere to be found are listed in `unmatched`."""
    rows = _read_rows(path)
    state = ReviewState()
    unmatched: list[str] = []
    when = now()
    base = path.parent
    for where, row in rows:
        decision = str(row.get("decision") or "").strip().lower()
        a_text, b_text = str(row.get("a") or "").strip(), str(row.get("b") or "").strip()
        if not (a_text or b_text or row.get("a_key") or row.get("a_sha256")):
            continue  # a blank line
        if decision not in (*DECISIONS, REPRESENTATIVE):
            raise DecisionsError(f"{path}: {where}: decision must be same or different, not {decision or 'empty'!r}")
        sides = []
        for side in ("a", "b") if decision != REPRESENTATIVE else ("a",):
            sha, crop = str(row.get(f"{side}_sha256") or ""), str(row.get(f"{side}_crop") or "")
            if sha and not is_sha256(sha.strip().lower()):
                raise DecisionsError(f"{path}: {where}: {side}_sha256 is not a sha256 (64 hex digits): {sha!r}")
            if crop and not crop.strip().isdigit():
                raise DecisionsError(f"{path}: {where}: {side}_crop is not a crop index: {crop!r}")
            text = str(row.get(side) or "")
            key = str(row.get(f"{side}_key") or "")
            resolved = key if _is_key(key) else index.resolve(text, sha, crop, base)
            if resolved is None:
                unmatched.append(f"{where}: {text or '(empty)'}")
                break
            sides.append(resolved)
        else:
            similarity = _float_or_none(row.get("similarity"))
            decided_at = str(row.get("decided_at") or "") or when
            if decision == REPRESENTATIVE:
                if key_kind(sides[0]) != "crop":
                    raise DecisionsError(f"{path}: {where}: a representative is one crop (give a_crop)")
                state.representatives[sides[0]] = {"decided_at": decided_at, "hint": {"photo_path": a_text}}
                continue
            a, b = sides
            if a == b:
                continue
            hints = {k: {"photo_path": t} for k, t in ((a, a_text), (b, b_text)) if key_kind(k) != "product" and t}
            state.pairs[ordered(a, b)] = Decision(*ordered(a, b), decision, decided_at,
                                                  str(row.get("source") or "") or source, similarity, hints)
    return ImportResult(state, len(rows), unmatched)


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _read_rows(path: Path) -> list[tuple[str, Mapping[str, Any]]]:
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DecisionsError(f"{path}: not UTF-8 text: save it as UTF-8 (CSV or JSON)") from None
    except OSError as exc:
        raise DecisionsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DecisionsError(f"{path}: not valid JSON ({exc})") from None
        rows = data.get("decisions") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DecisionsError(f"{path}: expected a list of {{a, b, decision}} objects (or an `ingest review "
                                 f"export` JSON file)")
        return [(f"decision {k}", row) for k, row in enumerate(rows, start=1)]
    reader = csv.DictReader(text.splitlines())
    columns = {c.strip() for c in reader.fieldnames or []}
    if not {"a", "b", "decision"} <= columns:
        raise DecisionsError(f"{path}: line 1: need columns a,b,decision (found {', '.join(sorted(columns)) or 'none'})")
    return [(f"line {line}", {k.strip(): v for k, v in row.items() if k}) for line, row in enumerate(reader, start=2)]


# --------------------------------------------------------------------------- the product mapping


def product_groups(state: ReviewState) -> list[list[str]]:
    """Products linked as the same shoe (transitively), each group sorted, groups by first product."""
    from core.duplicates.components import components

    return sorted(components(((link.a, link.b) for link in state.product_links()), min_size=1))


def product_mapping(state: ReviewState, best_similarity) -> dict[str, Any]:
    """The cross-factory product mapping: groups of linked products, each link with the best
    crop-pair similarity of its two products (`best_similarity(a_key, b_key)`, None when a
    product is no longer indexed) and when it was decided."""
    links = {ordered(d.a, d.b): d for d in state.product_links()}
    out = []
    for number, products in enumerate(product_groups(state), start=1):
        group_links = []
        for (a, b), d in sorted(links.items()):
            if a in products:
                score = best_similarity(a, b)
                group_links.append({"a": a.split(":", 1)[1], "b": b.split(":", 1)[1],
                                    "best_similarity": None if score is None else round(float(score), 6),
                                    "decided_at": d.decided_at, "source": d.source})
        out.append({"group": number, "products": [p.split(":", 1)[1] for p in products],
                    "factories": sorted({p.split(":", 1)[1].split("/", 1)[0] for p in products}),
                    "links": group_links})
    return {"version": FORMAT_VERSION, "exported_at": now(), "groups": out}


def write_product_mapping(path: Path, mapping: Mapping[str, Any]) -> None:
    """JSON for a .json name; otherwise CSV, one link per row: group,a,b,best_similarity,decided_at."""
    import csv
    import io

    if path.suffix.lower() == ".json":
        _write_out(path, json.dumps(mapping, indent=1, ensure_ascii=False))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "a", "b", "best_similarity", "decided_at"])
    for group in mapping["groups"]:
        for link in group["links"]:
            writer.writerow([group["group"], link["a"], link["b"],
                             "" if link["best_similarity"] is None else link["best_similarity"], link["decided_at"]])
    _write_out(path, buffer.getvalue())


def linked_products(state: ReviewState) -> dict[str, list[str]]:
    """'factory/product_id' -> every product of its link group ('factory/product_id', sorted, itself
    included), for the products linked as the same shoe; unlinked products are absent. What
    `ingest eval --links`, `ingest tune --links` and search's collapse of linked products read."""
    out: dict[str, list[str]] = {}
    for group in product_groups(state):
        names = [key.split(":", 1)[1] for key in group]
        for name in names:
            out[name] = names
    return out


def require_product_links(state: ReviewState) -> dict[str, list[str]]:
    """`linked_products`, or a DecisionsError saying how to link products when there are none."""
    links = linked_products(state)
    if not links:
        raise DecisionsError("no products are linked across factories yet: link them in the Duplicates tab (\"Same "
                             "product across factories\") or import rows like factory_a/SKU-1,factory_b/B-77,same "
                             "with `ingest review import`")
    return links
