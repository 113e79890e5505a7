"""Which photos a folder holds, and which factory and product each belongs to.

Layout convention (`ingest add shoes/factory_a`):
- factory: the folder's name, unless given explicitly;
- product id: the subfolder directly under the factory folder when photos sit in product
  subfolders (`factory_a/SKU123/front.jpg` -> `SKU123`), else the file stem
  (`factory_a/SKU123.jpg` -> `SKU123`);
- a manifest CSV (`path,product_id[,factory][,extra columns...]`, UTF-8) overrides both for
  the photos it lists (a row's `factory` beats `--factory`, which beats the folder name); its
  paths are relative to the ingested folder (or absolute). Photos it does not list follow
  the layout convention. Extra columns are stored in the payload beside the keys ingest
  computes; a column named like one of those (`box`, `photo_width`, `group_*`...) is refused.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from core.domain.types import PhotoSource, reserved_payload_key
from core.errors import ManifestError, NotAFactoryFolder, UnknownFactory
from core.vision.images import PHOTO_EXTENSIONS, is_photo

# Columns a manifest may have besides extras: they feed the computed payload keys of the same name.
MANIFEST_COLUMNS = ("path", "product_id", "factory")


def path_text(value: str | Path) -> str:
    """Text for a file name or path that is always valid UTF-8.

    Names that are not UTF-8 on disk decode to lone surrogates, which no JSON or vector
    store accepts; their odd bytes are shown as \\xNN escapes instead (stable across runs).
    """
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def iter_photo_files(root: Path) -> Iterator[Path]:
    """Photo files under `root`, recursively, sorted, hidden entries skipped.

    Symlinked folders are not followed (no loops); symlinked files are.
    """
    if root.is_file():
        if is_photo(root):
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_photo(Path(name)):
                yield Path(dirpath) / name


def factory_name(root: Path) -> str:
    """The factory a folder (or a loose photo's folder) stands for by default: its name.

    `.` or `shoes/factory_a/..` name the folder they point at (symlinks are kept as named)."""
    root = Path(root)
    folder = root if root.is_dir() else root.parent
    return path_text(Path(os.path.abspath(folder)).name)


def product_from_layout(root: Path, photo: Path) -> str:
    """Product id by the folder convention (see module docstring)."""
    if root.is_file():
        return path_text(photo.stem)
    rel = photo.relative_to(root)
    return path_text(rel.parts[0] if len(rel.parts) > 1 else photo.stem)


def read_manifest(manifest: Path, root: Path) -> dict[Path, tuple[str, str | None, dict[str, str]]]:
    """Parse a manifest CSV into {absolute photo path: (product_id, factory or None, extras)}.

    Raises ManifestError naming the file and line for: a file that is not UTF-8 text (or is
    binary), a field over the CSV reader's limit, missing `path`/`product_id` columns, a column
    named like a computed payload key or given twice, an empty value, a path that does not
    exist, a path listed twice.
    """
    try:
        handle = open(manifest, "rb")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from exc
    rows: dict[Path, tuple[str, str | None, dict[str, str]]] = {}
    seen_on: dict[Path, int] = {}
    base = root if root.is_dir() else root.parent
    with handle:
        reader = csv.reader(_text_lines(handle, manifest))
        try:
            header = [c.strip() for c in next(reader, [])]
            _check_columns(manifest, header)
            for raw in reader:
                line_no = reader.line_num
                if not raw:
                    continue  # a blank line
                row = {name: value.strip() for name, value in zip(header, raw) if name}
                if not row.get("path"):
                    raise ManifestError(f"{manifest}: line {line_no}: empty path")
                if not row.get("product_id"):
                    raise ManifestError(f"{manifest}: line {line_no}: empty product_id for {row['path']}")
                try:
                    photo = Path(row["path"])
                    photo = (photo if photo.is_absolute() else base / photo).resolve()
                    listed = photo.is_file()
                except (OSError, ValueError):  # a NUL byte, a name too long...
                    listed = False
                if not listed:
                    raise ManifestError(f"{manifest}: line {line_no}: no such photo: {row['path']}")
                if photo in seen_on:
                    raise ManifestError(
                        f"{manifest}: line {line_no}: {row['path']} is listed twice (first on line {seen_on[photo]})"
                    )
                seen_on[photo] = line_no
                extras = {k: v for k, v in row.items() if k not in MANIFEST_COLUMNS}
                rows[photo] = (row["product_id"], row.get("factory") or None, extras)
        except csv.Error as exc:
            line_no = reader.line_num + (0 if reader.line_num else 1)
            raise ManifestError(f"{manifest}: line {line_no}: {_csv_problem(exc)}") from exc
    return rows


# A longer line is no manifest row (each field is at most csv.field_size_limit(), 128 K).
MAX_LINE_BYTES = 4 << 20


def _text_lines(handle, manifest: Path) -> Iterator[str]:
    """The manifest's lines as text, checked one by one, so a problem names its line: bytes that
    are not UTF-8, a NUL byte (a binary file), a line too long to be a row."""
    line_no = 0
    while True:
        try:
            raw = handle.readline(MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise ManifestError(f"{manifest}: line {line_no + 1}: cannot read: {exc.strerror or exc}") from exc
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES:
            raise ManifestError(f"{manifest}: line {line_no}: longer than {MAX_LINE_BYTES >> 20} MB: "
                                f"this is not a CSV manifest")
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{manifest}: line {line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                f"save the manifest as UTF-8 CSV"
            ) from None
        if "\x00" in text:
            raise ManifestError(f"{manifest}: line {line_no}: a NUL byte: this is a binary file, not a CSV manifest")
        yield text


def _check_columns(manifest: Path, header: list[str]) -> None:
    missing = [c for c in ("path", "product_id") if c not in header]
    if missing:
        raise ManifestError(
            f"{manifest}: line 1: missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(c for c in header if c) or 'none'}; need path,product_id[,factory,...])"
        )
    for index, name in enumerate(header):
        if name and name in header[:index]:
            raise ManifestError(f"{manifest}: line 1: column {name!r} appears twice")
        if name not in MANIFEST_COLUMNS and reserved_payload_key(name):
            raise ManifestError(
                f"{manifest}: line 1: column {name!r} is a key ingest computes for every crop "
                f"(it would overwrite it); rename the column"
            )


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if "field larger than field limit" in text:
        return f"a field longer than {csv.field_size_limit():,} characters (an unclosed quote?)"
    return f"not a valid CSV line ({text})"


def discover(root: Path, factory: str | None = None, manifest: Path | None = None) -> Iterator[PhotoSource]:
    """Every photo under `root` (plus manifest-listed photos elsewhere) as a PhotoSource."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    default_factory = path_text(factory) if factory else factory_name(root)
    listed = read_manifest(manifest, root) if manifest else {}
    seen: set[Path] = set()
    for photo in iter_photo_files(root):
        resolved = photo.resolve()
        seen.add(resolved)
        if resolved in listed:
            product_id, row_factory, extras = listed[resolved]
            yield PhotoSource(photo.absolute(), row_factory or default_factory, product_id, extras)
        else:
            yield PhotoSource(photo.absolute(), default_factory, product_from_layout(root, photo))
    for photo, (product_id, row_factory, extras) in listed.items():
        if photo not in seen:
            yield PhotoSource(photo, row_factory or default_factory, product_id, extras)


# --------------------------------------------------------------------------- checks before ingesting


def _photo_types() -> str:
    return ", ".join(sorted(PHOTO_EXTENSIONS))


def _other_files(root: Path, limit: int = 100_000) -> Counter:
    """File types (by extension) under `root` that are not photos, hidden entries skipped."""
    found: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                found[Path(name).suffix.lower() or "(no extension)"] += 1
        if sum(found.values()) >= limit:
            break
    return found


def check_has_photos(root: Path, sources: Sequence[PhotoSource]) -> None:
    """Raise NotAFactoryFolder when `root` gave no photo to ingest: a file that is not a photo,
    an empty folder, or one holding only other files (named by type, so the user sees why)."""
    if sources:
        return
    if root.is_file():
        raise NotAFactoryFolder(
            f"{path_text(root)} is a file, not a photo or a folder of photos: give a factory folder "
            f"(ingest add shoes/factory_a); photos are {_photo_types()}")
    others = _other_files(root)
    if not others:
        raise NotAFactoryFolder(f"{path_text(root)} holds no photos (it is empty): give a folder of photos, "
                                f"e.g. ingest add shoes/factory_a")
    kinds = ", ".join(f"{count} {kind}" for kind, count in others.most_common(4))
    raise NotAFactoryFolder(
        f"{path_text(root)} holds no photos (found {kinds}{', ...' if len(others) > 4 else ''}); "
        f"photos are {_photo_types()}: give a folder of photos, e.g. ingest add shoes/factory_a")


def factory_subfolders(root: Path, sources: Sequence[PhotoSource], known_factories: Collection[str] = (),
                       factory: str | None = None) -> list[str]:
    """Subfolders of `root` that look like factory folders rather than product folders; [] if none.

    `ingest add shoes` on `shoes/<factory>/<product>/photo.jpg` would index one factory `shoes`
    with factory names as product ids. It looks like that when a subfolder is named like a
    factory already indexed (other than `factory`), or when no subfolder holds photos directly
    but their own subfolders do (photos two or more levels below every photo-holding subfolder).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    base = Path(os.path.abspath(root))
    direct: set[str] = set()  # subfolders with photos right inside them (product folders)
    deeper: set[str] = set()  # subfolders whose photos are further down
    for source in sources:
        try:
            parts = Path(os.path.abspath(source.path)).relative_to(base).parts
        except ValueError:  # a manifest row outside the folder
            continue
        if len(parts) == 2:
            direct.add(parts[0])
        elif len(parts) > 2:
            deeper.add(parts[0])
    holding = direct | deeper
    named = sorted(path_text(name) for name in holding if path_text(name) in set(known_factories)
                   and path_text(name) != factory)
    if named:
        return named
    if deeper and not direct:
        return sorted(path_text(name) for name in deeper)
    return []


def check_known_factories(names: Sequence[str] | None, known: Collection[str], location: str = "the index") -> None:
    """Raise UnknownFactory when a factory filter names a factory `known` does not hold.

    The message lists the known factories and suggests close names (other case, typos)."""
    missing = [name for name in dict.fromkeys(names or []) if name not in known]
    if not missing:
        return
    if not known:
        raise UnknownFactory(f"No factory {_quoted(missing)} in {location}: it holds no photos yet "
                             f"(add some with `ingest add FOLDER`).")
    ordered = sorted(known)
    hints = []
    for name in missing:
        close = [k for k in ordered if k.casefold() == name.casefold()]  # only the case differs: that one
        if not close:  # typos: the closest names (those about as close as the best), then longer names
            scores = {k: difflib.SequenceMatcher(None, name.casefold(), k.casefold()).ratio() for k in ordered}
            best = max(scores.values())
            close = sorted((k for k, r in scores.items() if r >= max(0.6, best - 0.05)), key=lambda k: -scores[k])
            close += [k for k in ordered if name.casefold() in k.casefold() and k not in close]
        if close:
            hints.append(f" Did you mean {_either(close[:3])}" + (f" for '{name}'?" if len(missing) > 1 else "?"))
    shown = ", ".join(ordered[:20]) + (f" and {len(ordered) - 20} more (ingest stats)" if len(ordered) > 20 else "")
    noun = "factory" if len(missing) == 1 else "factories"
    raise UnknownFactory(f"No {noun} {_quoted(missing)} in {location}.{''.join(hints)} Known factories: {shown}.")


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _either(names: Sequence[str]) -> str:
    """'a', 'b' or 'c'"""
    return _quoted(names[:-1]) + f" or '{names[-1]}'" if len(names) > 1 else _quoted(names)
