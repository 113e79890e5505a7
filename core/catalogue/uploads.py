"""Photos uploaded through the UI: checked names, safe zip extraction, staging under
DATA_DIR/uploads/FACTORY, then one ingest run over exactly what the upload holds.

Layout. A zip is read the way `ingest add FOLDER` reads a folder (core.catalogue.folders): a photo in a
subfolder belongs to the product named by its first folder, a loose photo to the product named
by its file stem. A zip whose photos all lie under one top folder (`zip -r acme.zip acme/`) is
that folder zipped, so the top folder is unwrapped whatever its name (also when it is named like
the factory): `acme/P1/a.jpg` is product P1, `acme/SKU9.jpg` is product SKU9. Only one level is
unwrapped. Files land at DATA_DIR/uploads/FACTORY/<path after unwrapping>, so a re-upload finds
them where the first upload put them and there is never an uploads/acme/acme tree.

Names already taken. The same bytes at the same name: nothing is written. Different bytes at a
taken name: both are kept, the new photo beside the old one as NAME-<12 hex of its sha256>.EXT
(same folder, so the same product), and the report says so. Both rules make re-uploading the
same files (or a zip that holds one name twice) idempotent: nothing new is written the second
time. Files are compared by sha256, streamed.

Safety. Every name from an upload is checked: NUL bytes and control characters, absolute, drive
(`C:\\`) and network (`\\\\server\\share`, `//x`) paths, `..` (backslashes count as separators),
parts over 255 bytes, symlink and device entries (from the zip's external attributes) are
refused, each with one line naming the entry. Every path written is then proven inside the
factory folder after resolving links (Path.resolve + is_relative_to), and the factory folder
inside DATA_DIR/uploads. Members are streamed in 1 MiB chunks through a byte cap: the declared
size is checked against the zip's unpack limit first, and the bytes actually read are capped at
that declared size and at the limit, whatever the header says. Each photo goes to a temp file
first and takes its name with a hard link, which never overwrites.

No Gradio here: the UI's handler formats the report.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from core.catalogue.folders import path_text
from core.domain.types import IngestReport, PhotoSource
from core.errors import ShoeSearchError
from core.vision.images import PHOTO_EXTENSIONS, file_sha256

if TYPE_CHECKING:
    from core.pipeline.ingest import IngestService

MIB = 1024 * 1024
MAX_NAME_BYTES = 255  # one file or folder name (ext4, APFS, NTFS)
MAX_PATH_BYTES = 1024  # a whole path inside a zip
MAX_ENTRIES = 10_000  # entries per zip (the central directory is held in memory while reading)
UNPACK_FACTOR = 4  # a zip may unpack to this many times the upload size limit
CHUNK_BYTES = MIB
HASH_SUFFIX_CHARS = 12

FACTORY_HINT = "Name the factory these photos come from (letters, digits, - and _; no slashes)"

_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_METHODS = {0: "stored", 1: "shrink", 6: "implode", 8: "deflate", 9: "deflate64", 12: "bzip2",
                14: "lzma", 93: "zstandard", 95: "xz", 98: "ppmd", 99: "AES encryption"}
_ZIP_ENCRYPTED = 0x1


def _readable_methods() -> frozenset[int]:
    methods = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    try:
        import bz2  # noqa: F401

        methods.add(zipfile.ZIP_BZIP2)
    except ImportError:
        pass
    try:
        import lzma  # noqa: F401

        methods.add(zipfile.ZIP_LZMA)
    except ImportError:
        pass
    return frozenset(methods)


READABLE_METHODS = _readable_methods()

try:
    from lzma import LZMAError as _LZMAError
except ImportError:  # pragma: no cover - Python built without lzma
    class _LZMAError(Exception):
        pass

# What reading a damaged member can raise, by decompressor.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, _LZMAError, EOFError, OSError, ValueError, RuntimeError,
                NotImplementedError, struct.error)


class UploadRefused(ShoeSearchError):
    """The whole upload cannot be taken (factory name, factory folder); the message says why."""


class TooLarge(Exception):
    """A stream held more bytes than its cap."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"more than {cap:,} bytes")
        self.cap = cap


class DamagedData(Exception):
    """A member's bytes could not be read (CRC mismatch, corrupt stream, truncated zip)."""


class _Refused(Exception):
    """One entry is refused; the message is the reason shown beside its name."""


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one zip may make us read and write."""

    max_unpacked_bytes: int = UNPACK_FACTOR * 50 * MIB  # all photos of one zip (and one loose photo)
    max_entries: int = MAX_ENTRIES

    @classmethod
    def for_upload_mb(cls, upload_mb: int) -> UploadLimits:
        """Limits for an upload size limit of `upload_mb` MB (UI_MAX_UPLOAD_MB)."""
        return cls(max_unpacked_bytes=UNPACK_FACTOR * int(upload_mb) * MIB)


@dataclass(frozen=True)
class Refusal:
    """An uploaded file or zip entry that was not taken: its name as uploaded and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class StagedPhoto:
    """One photo of the upload, lying under DATA_DIR/uploads/FACTORY."""

    path: Path  # absolute path (DATA_DIR/uploads/FACTORY/...), as stored in the payload
    product_id: str
    name: str  # as uploaded: "SKU9.jpg" or "acme.zip: acme/P1/a.jpg"
    written: bool  # False: the same bytes already lay at `path`
    kept_beside: str | None = None  # a different photo held the wanted name: this one lies beside it


@dataclass
class UploadedFile:
    """What one uploaded file (a photo or a zip) held."""

    name: str
    photos: int = 0
    products: set[str] = field(default_factory=set)
    unwrapped: str | None = None  # the single top folder of a zip, unwrapped


@dataclass
class StagedUpload:
    """The photos of one upload, on disk under `folder` and ready to ingest, and what was refused."""

    factory: str
    folder: Path  # DATA_DIR/uploads/FACTORY (absolute)
    photos: list[StagedPhoto] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # entries that are not photos, hidden or system files
    files: list[UploadedFile] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # folders this upload made, parents first

    @property
    def products(self) -> list[str]:
        return sorted({p.product_id for p in self.photos})

    @property
    def written(self) -> int:
        return sum(p.written for p in self.photos)

    def photo_sources(self) -> list[PhotoSource]:
        return [PhotoSource(p.path, self.factory, p.product_id) for p in self.photos]

    def remove(self, photos: Iterable[StagedPhoto]) -> list[StagedPhoto]:
        """Delete these photos' files, then the folders this upload made that are left empty.

        Returns the photos whose files were deleted.
        """
        removed = []
        for photo in photos:
            try:
                photo.path.unlink()
                removed.append(photo)
            except FileNotFoundError:
                pass
        self.prune()
        return removed

    def prune(self) -> None:
        """Remove the folders this upload created that hold nothing (deepest first)."""
        for folder in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                continue  # not empty, or already gone
            self.created.remove(folder)


@dataclass
class UploadReport:
    """What one upload did: the staging, the ingest run, the photos removed again."""

    staged: StagedUpload
    ingest: IngestReport | None  # None: the upload held no photo to index
    removed: list[StagedPhoto] = field(default_factory=list)  # failed to index: deleted from uploads/


# ---------------------------------------------------------------------------------------- names


def check_factory_name(name: str | None) -> str:
    """The factory name, stripped, if it can name a folder under DATA_DIR/uploads.

    Raises UploadRefused for an empty name, a NUL or control character, a slash or backslash,
    a leading dot (`.`, `..`, hidden), or over 255 bytes of UTF-8.
    """
    name = (name or "").strip()
    if not name:
        raise UploadRefused(f"{FACTORY_HINT}.")
    size = len(name.encode("utf-8", "surrogatepass"))
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        reason = "it holds a NUL or control character"
    elif "/" in name or "\\" in name:
        reason = "it holds a slash"
    elif name.startswith("."):
        reason = "it starts with a dot"
    elif size > MAX_NAME_BYTES:
        reason = f"it is {size} bytes long, over {MAX_NAME_BYTES}"
    else:
        return name
    raise UploadRefused(f"{FACTORY_HINT}: {reason}.")


def _check_parts(parts: Sequence[str]) -> None:
    for part in parts:
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            raise _Refused("a control character in its name")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise _Refused(f"a name in its path is over {MAX_NAME_BYTES} bytes")
    if len("/".join(parts).encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise _Refused(f"its path is over {MAX_PATH_BYTES} bytes")


def member_parts(info: zipfile.ZipInfo) -> tuple[tuple[str, ...], bool]:
    """The relative path of a zip entry as name parts, and whether the entry is a folder.

    Backslashes count as separators (zips made on Windows), `.` and empty parts are dropped.
    Raises _Refused, with the reason, for: a NUL byte (zipfile itself would cut the name there),
    a symbolic link or device entry, an absolute, drive or network path, `..`, an empty name,
    control characters, over-long parts or paths.
    """
    raw = info.orig_filename
    if "\0" in raw:
        raise _Refused("a NUL byte in its name")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise _Refused("a symbolic link (links are never extracted)")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _Refused("not a regular file (a device, pipe or socket entry)")
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        raise _Refused("an absolute or network path")
    if _DRIVE.match(name):
        raise _Refused("a Windows drive path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused("its path climbs out of the folder (`..`)")
    if not parts:
        raise _Refused("an empty name")
    _check_parts(parts)
    return parts, name.endswith("/") or kind == stat.S_IFDIR


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def display_name(name: str) -> str:
    """A name as the report shows it: unprintable characters escaped, very long names cut."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path_text(name))
    if len(text) <= 120:
        return text
    return f"{text[:100]}… ({len(name.encode('utf-8', 'surrogatepass'))} bytes)"


def _mb(size: int) -> str:
    return f"{size / MIB:,.1f} MB"


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, once every link in it is resolved, lies strictly inside `root` (resolved)."""
    resolved = path.resolve()
    return resolved != root and resolved.is_relative_to(root)


# ---------------------------------------------------------------------------------------- copying


def copy_capped(src: BinaryIO, dst: BinaryIO, cap: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, str]:
    """Copy `src` to `dst` in chunks, hashing on the way; returns (bytes copied, sha256 hex).

    Raises TooLarge as soon as `src` holds more than `cap` bytes (at most `cap` + 1 bytes are
    read), and DamagedData when reading `src` fails (bad CRC, corrupt or truncated stream).
    Memory: one chunk, whatever the size of `src`.
    """
    digest = hashlib.sha256()
    total = 0
    while True:
        try:
            chunk = src.read(min(chunk_bytes, cap - total + 1))
        except _READ_ERRORS as exc:
            raise DamagedData(_damage(exc)) from exc
        if not chunk:
            return total, digest.hexdigest()
        total += len(chunk)
        if total > cap:
            raise TooLarge(cap)
        digest.update(chunk)
        dst.write(chunk)


def _damage(exc: BaseException) -> str:
    text = str(exc)
    if "CRC" in text:
        return "damaged data (CRC check failed)"
    if isinstance(exc, RuntimeError) and "encrypted" in text:
        return "encrypted (password-protected): zip it again without a password"
    return f"damaged data ({type(exc).__name__}: {text})" if text else f"damaged data ({type(exc).__name__})"


def _same_bytes(path: Path, sha256: str) -> bool:
    return path.is_file() and not path.is_symlink() and file_sha256(path) == sha256


def _link_no_clobber(tmp: Path, dest: Path) -> None:
    """Give `tmp` the name `dest`, never replacing a file that has it."""
    try:
        os.link(tmp, dest)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: the name was free a moment ago (uploads run one at a time).
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest)) from exc
        os.rename(tmp, dest)


# ---------------------------------------------------------------------------------------- staging


class _Stager:
    """Writes the photos of one upload under the factory folder; fills a StagedUpload."""

    def __init__(self, staged: StagedUpload, real: Path, limits: UploadLimits) -> None:
        self.staged = staged
        self.real = real  # the factory folder, resolved: every write is proven inside it
        self.limits = limits
        self._incoming: Path | None = None

    def refuse(self, name: str, reason: str) -> None:
        self.staged.refused.append(Refusal(name, reason))

    # -------------------------------------------------------------- folders

    def _make_folder(self, folder: Path) -> None:
        """Create `folder` (resolved path under self.real) and the missing folders above it."""
        missing = []
        probe = folder
        while not os.path.lexists(probe):
            missing.append(probe)
            if probe == self.real:
                break
            probe = probe.parent
        if missing and missing[-1] == self.real:
            self.real.parent.mkdir(parents=True, exist_ok=True)
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise _Refused(f"cannot write: {exc.strerror or exc}") from exc
            self.staged.created.append(path)
        if folder != self.real and not _inside(folder, self.real):
            raise _Refused("its path leads outside the upload folder (through a link)")
        if not folder.is_dir():
            raise _Refused(f"cannot write: {folder.name} is a file, not a folder")

    def incoming(self) -> Path:
        """A private hidden folder for temp files (ingest and discovery skip hidden folders)."""
        if self._incoming is None:
            self._make_folder(self.real)
            self._incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.real))
        return self._incoming

    def close(self) -> None:
        if self._incoming is not None:
            shutil.rmtree(self._incoming, ignore_errors=True)  # our own temp files only
            self._incoming = None
        self.staged.prune()

    # -------------------------------------------------------------- one photo

    def place(self, src: BinaryIO, rel: Sequence[str], product: str, name: str, cap: int,
              over_cap: str) -> StagedPhoto | None:
        """Stream one photo to FACTORY/rel (or beside it); None, with a refusal, when it cannot."""
        dest = self.real.joinpath(*rel)
        try:
            if not _inside(dest, self.real):
                raise _Refused("its path leads outside the upload folder (through a link)")
            fd, tmp_name = tempfile.mkstemp(suffix=".part", dir=self.incoming())
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out:
                    _, sha256 = copy_capped(src, out, cap)
                os.chmod(tmp, 0o644)
                self._make_folder(dest.parent)
                final, written, beside = self._claim(tmp, dest, sha256)
            finally:
                tmp.unlink(missing_ok=True)
        except _Refused as exc:
            self.refuse(name, str(exc))
            return None
        except TooLarge:
            self.refuse(name, over_cap)
            return None
        except DamagedData as exc:
            self.refuse(name, str(exc))
            return None
        except OSError as exc:  # writing: disk full, read-only folder, a file in the way
            self.refuse(name, f"cannot write: {exc.strerror or exc}")
            return None
        logical = self.staged.folder.joinpath(*final.relative_to(self.real).parts)
        photo = StagedPhoto(logical, product, name, written, beside)
        self.staged.photos.append(photo)
        return photo

    def _claim(self, tmp: Path, dest: Path, sha256: str) -> tuple[Path, bool, str | None]:
        """Put `tmp` at `dest`, or beside it when other bytes hold that name: (path, written, beside)."""
        beside_name = f"{dest.stem}-{sha256[:HASH_SUFFIX_CHARS]}{dest.suffix}"
        for candidate, beside in ((dest, None), (dest.with_name(beside_name), dest.name)):
            if not _inside(candidate, self.real):
                raise _Refused("its path leads outside the upload folder (through a link)")
            if not os.path.lexists(candidate):
                _link_no_clobber(tmp, candidate)
                return candidate, True, beside
            if _same_bytes(candidate, sha256):
                return candidate, False, beside
        raise _Refused(f"other photos already hold both {dest.name} and {beside_name}")

    # -------------------------------------------------------------- uploaded files

    def add_photo_file(self, source: Path) -> None:
        name = path_text(source.name)
        summary = UploadedFile(name)
        self.staged.files.append(summary)
        try:
            _check_parts([source.name])
        except _Refused as exc:
            self.refuse(display_name(name), str(exc))
            return
        if _hidden([source.name]):
            self.staged.ignored.append(display_name(name))
            return
        try:
            src = open(source, "rb")
        except OSError as exc:
            self.refuse(display_name(name), f"cannot read: {exc.strerror or exc}")
            return
        cap = self.limits.max_unpacked_bytes
        with src:
            photo = self.place(src, [source.name], path_text(source.stem), display_name(name), cap,
                               f"larger than {_mb(cap)}")
        if photo is not None:
            summary.photos += 1
            summary.products.add(photo.product_id)

    def add_zip(self, archive: Path) -> None:
        name = display_name(archive.name)
        summary = UploadedFile(name)
        self.staged.files.append(summary)
        limit = self.limits.max_entries
        declared = declared_entry_count(archive)
        if declared is not None and declared > limit:
            self.refuse(name, f"holds {declared:,} entries, more than {limit:,} per zip: split it into smaller zips")
            return
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, EOFError, ValueError, struct.error):
            self.refuse(name, "not a zip file, or a damaged one (its table of contents cannot be read)")
            return
        except NotImplementedError as exc:
            self.refuse(name, f"uses a zip feature that cannot be read here ({exc})")
            return
        except UnicodeDecodeError:
            self.refuse(name, "its file names are marked as UTF-8 but are not")
            return
        except OSError as exc:
            self.refuse(name, f"cannot read: {exc.strerror or exc}")
            return
        with zf:
            infos = zf.infolist()
            if len(infos) > limit:
                self.refuse(name, f"holds {len(infos):,} entries, more than {limit:,} per zip: split it into smaller zips")
                return
            self._extract(zf, infos, name, summary)

    def _extract(self, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], name: str, summary: UploadedFile) -> None:
        files: list[tuple[zipfile.ZipInfo, tuple[str, ...], str]] = []
        folders: set[tuple[str, ...]] = set()  # every folder an entry names or lies in
        for info in infos:
            label = f"{name}: {display_name(info.orig_filename)}"
            try:
                parts, is_folder = member_parts(info)
            except _Refused as exc:
                self.refuse(label, str(exc))
                continue
            folders.update(parts[:k] for k in range(1, len(parts)))
            if is_folder:
                folders.add(parts)
            else:
                files.append((info, parts, label))
        photos = []
        for info, parts, label in files:
            if parts in folders:
                self.refuse(label, "both a file and a folder in this zip: the file is skipped, the folder is read")
            elif _hidden(parts) or PurePosixPath(parts[-1]).suffix.lower() not in PHOTO_EXTENSIONS:
                self.staged.ignored.append(label)
            else:
                photos.append((info, parts, label))
        tops = {parts[0] for _, parts, _ in photos}
        unwrap = len(tops) == 1 and all(len(parts) > 1 for _, parts, _ in photos)
        if unwrap:
            summary.unwrapped = display_name(next(iter(tops)))
        limit = self.limits.max_unpacked_bytes
        left = limit
        for info, parts, label in photos:
            rel = parts[1:] if unwrap else parts
            product = rel[0] if len(rel) > 1 else PurePosixPath(rel[0]).stem
            if info.flag_bits & _ZIP_ENCRYPTED or info.compress_type == 99:
                self.refuse(label, "encrypted (password-protected): zip it again without a password")
                continue
            if info.compress_type not in READABLE_METHODS:
                method = _ZIP_METHODS.get(info.compress_type, "unknown")
                self.refuse(label, f"compressed with method {info.compress_type} ({method}), which cannot be read "
                                   "here: zip it again with the usual deflate")
                continue
            if info.file_size > left:
                self.refuse(label, f"unpacks to {_mb(info.file_size)}, more than the {_mb(left)} left of the "
                                   f"{_mb(limit)} one zip may unpack to (zip bomb?)")
                continue
            left -= info.file_size  # what it may write at most: the cap below holds it to this
            try:
                src = zf.open(info)
            except _READ_ERRORS as exc:
                self.refuse(label, _damage(exc))
                continue
            with src:
                photo = self.place(src, rel, product, label, info.file_size,
                                   "holds more bytes than its header declares (zip bomb?)")
            if photo is not None:
                summary.photos += 1
                summary.products.add(photo.product_id)


def declared_entry_count(archive: Path) -> int | None:
    """The entry count a zip's end-of-central-directory record declares (zip64 too), read
    before zipfile parses the whole central directory into memory; None when not found."""
    try:
        with open(archive, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - (22 + 65535)))
            tail = handle.read()
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < 22:
                return None
            (count,) = struct.unpack_from("<H", tail, at + 10)
            if count != 0xFFFF or at < 20 or tail[at - 20:at - 16] != b"PK\x06\x07":
                return count
            (offset,) = struct.unpack_from("<Q", tail, at - 20 + 8)
            handle.seek(offset)
            record = handle.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                return struct.unpack_from("<Q", record, 32)[0]
            return count
    except (OSError, ValueError, struct.error):
        return None


def factory_folder(uploads_dir: Path, factory: str) -> tuple[Path, Path]:
    """(DATA_DIR/uploads/FACTORY as given, absolute; the same resolved), proven to be a direct
    child of the resolved uploads folder. Raises UploadRefused for a bad name or a linked folder."""
    factory = check_factory_name(factory)
    uploads_real = Path(uploads_dir).resolve()
    candidate = uploads_real / factory
    real = candidate.resolve()
    if real != candidate or real.parent != uploads_real:
        raise UploadRefused(f"The upload folder for factory {factory!r} is a link ({candidate} -> {real}); "
                            "uploads are only written inside DATA_DIR/uploads.")
    return Path(uploads_dir).absolute() / factory, real


def stage_upload(files: Sequence[Path | str], factory: str, uploads_dir: Path,
                 limits: UploadLimits = UploadLimits()) -> StagedUpload:
    """Write the photos of `files` (photos, or zips of photos) under uploads_dir/FACTORY.

    Returns the StagedUpload: every photo with its path and product id (in upload order), and
    every file or entry refused or ignored, by name. Nothing is written outside the factory
    folder; folders made for nothing are removed again. Raises UploadRefused for a factory name
    or folder that cannot be used.
    """
    folder, real = factory_folder(Path(uploads_dir), factory)
    staged = StagedUpload(check_factory_name(factory), folder)
    stager = _Stager(staged, real, limits)
    try:
        for file in files:
            source = Path(file)
            suffix = source.suffix.lower()
            if suffix == ".zip":
                stager.add_zip(source)
            elif suffix in PHOTO_EXTENSIONS:
                stager.add_photo_file(source)
            else:
                staged.files.append(UploadedFile(display_name(source.name)))
                stager.refuse(display_name(source.name), "not a photo or .zip")
    finally:
        stager.close()
    return staged


def add_upload(files: Sequence[Path | str], factory: str, uploads_dir: Path, ingest: IngestService, *,
               limits: UploadLimits = UploadLimits(), lock: AbstractContextManager | None = None,
               progress: Callable[[int, int], None] | None = None) -> UploadReport:
    """Stage an upload (see stage_upload), ingest its photos, and delete the ones that failed.

    Only this upload's photos are ingested (with the product ids staging gave them). Photos that
    fail to decode are deleted from the uploads folder. If the ingest run stops with an error
    (ShoeSearchError, re-raised), the files this upload wrote that were not yet ingested are
    deleted. `lock` is held around the ingest run; `progress(done, total)` follows it.
    """
    staged = stage_upload(files, factory, uploads_dir, limits)
    if not staged.photos:
        return UploadReport(staged, None)
    sources = staged.photo_sources()
    done = 0

    def on_progress(count: int, _path: str) -> None:
        nonlocal done
        done = count
        if progress:
            progress(count, len(sources))

    with lock if lock is not None else nullcontext():
        try:
            report = ingest.add(sources, staged.factory, progress=on_progress)
        except ShoeSearchError:
            staged.remove(p for p in staged.photos[done:] if p.written)
            raise
    failed = {f.path for f in report.photos_failed}
    removed = staged.remove(p for p in staged.photos if path_text(p.path) in failed)
    return UploadReport(staged, report, removed)
