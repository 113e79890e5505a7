"""core.catalogue.uploads: hostile archives, the usual zip layouts, re-upload idempotence, one clear
message per bad entry, bounded memory. Every archive is built here, names written raw."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from core.catalogue.uploads import (
    TooLarge,
    UploadLimits,
    UploadRefused,
    add_upload,
    check_factory_name,
    copy_capped,
    display_name,
    stage_upload,
)
from core.errors import SchemaMismatch
from core.pipeline.ingest import IngestService
from core.store.edge import EdgeStore
from tests.conftest import BlobDetector, CountingEmbedder

MIB = 1024 * 1024


# --------------------------------------------------------------------------- building archives


def photo_bytes(shade: int, fmt: str = "JPEG", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    img = Image.new("RGB", size, (245, 245, 245))
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), (shade, 40, 200 - shade // 2)), (8, 8))
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def raw_info(name: str, mode: int | None = 0o100644) -> zipfile.ZipInfo:
    """A ZipInfo written with exactly `name` (ZipInfo(name) would cut it at a NUL byte)."""
    info = zipfile.ZipInfo("placeholder", date_time=(2024, 1, 1, 0, 0, 0))
    info.filename = name
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.external_attr = mode << 16
    return info


def make_zip(path: Path, entries, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """`entries`: (name or ZipInfo, bytes) in order; names written raw."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": some tests want that
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in entries:
                info = name if isinstance(name, zipfile.ZipInfo) else raw_info(name)
                if not isinstance(name, zipfile.ZipInfo):
                    info.compress_type = compression
                zf.writestr(info, data)
    return path


def patch_entry(path: Path, name: str, *, flag_bits: int | None = None, method: int | None = None,
                file_size: int | None = None, flip_data_byte: bool = False) -> None:
    """Rewrite header fields of entry `name` in both its local header and its central record."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    local = info.header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    central = data.find(b"PK\x01\x02")
    while struct.unpack_from("<I", data, central + 42)[0] != local:
        central = data.find(b"PK\x01\x02", central + 4)
    for base, flags_at, method_at, size_at in ((local, 6, 8, 22), (central, 8, 10, 24)):
        if flag_bits is not None:
            struct.pack_into("<H", data, base + flags_at, flag_bits)
        if method is not None:
            struct.pack_into("<H", data, base + method_at, method)
        if file_size is not None:
            struct.pack_into("<I", data, base + size_at, file_size)
    if flip_data_byte:
        name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + name_len + extra_len
        data[start + 20] ^= 0xFF
    path.write_bytes(bytes(data))


def tree(root: Path) -> dict[str, tuple]:
    """Every file and link under `root` (links not followed): relative path -> (kind, size, mtime, inode)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            kind = "link" if stat.S_ISLNK(info.st_mode) else "dir" if stat.S_ISDIR(info.st_mode) else "file"
            found[str(path.relative_to(root))] = (kind, info.st_size if kind == "file" else 0,
                                                  info.st_mtime_ns if kind == "file" else 0, info.st_ino)
    return found


def refusals(staged) -> dict[str, str]:
    return {r.name: r.reason for r in staged.refused}


@pytest.fixture
def uploads(tmp_path) -> Path:
    # Deep, so that every `..` trick in the corpus would still land inside tmp_path (and be seen).
    data = tmp_path / "a" / "b" / "c" / "data"
    data.mkdir(parents=True)
    return data / "uploads"


# --------------------------------------------------------------------------- hostile archives


HOSTILE = {  # raw entry name -> what its refusal says
    "/etc/evil.jpg": "absolute or network path",
    "//x/evil.jpg": "absolute or network path",
    "\\\\server\\share\\evil.jpg": "absolute or network path",
    "\\evil.jpg": "absolute or network path",
    "C:\\evil.jpg": "Windows drive path",
    "C:evil.jpg": "Windows drive path",
    "d:/evil.jpg": "Windows drive path",
    "../evil.jpg": "climbs out of the folder",
    "..\\evil.jpg": "climbs out of the folder",
    "P1/../../evil.jpg": "climbs out of the folder",
    "P1\\..\\..\\..\\evil.jpg": "climbs out of the folder",
    "P1/./../../../../evil.jpg": "climbs out of the folder",
    "ok.jpg\x00../../evil.jpg": "NUL byte",
    "P1/\x00.jpg": "NUL byte",
    "P1/bad\nname.jpg": "control character",
    "x" * 300 + ".jpg": "over 255 bytes",
    "P1/" + "é" * 130 + ".jpg": "over 255 bytes",
    ".": "empty name",
}


def test_hostile_archive_writes_nothing_outside_and_names_every_refusal(uploads, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(photo_bytes(1))
    entries = [(name, photo_bytes(i + 10)) for i, name in enumerate(HOSTILE)]
    entries += [
        (raw_info("link.jpg", stat.S_IFLNK | 0o777), b"../../../../outside.jpg"),
        (raw_info("P1/linkdir", stat.S_IFLNK | 0o777), str(tmp_path).encode()),
        (raw_info("dev.jpg", stat.S_IFCHR | 0o644), b""),
        (raw_info("fifo.jpg", stat.S_IFIFO | 0o644), b""),
        ("P1/a.jpg", photo_bytes(100)),
        ("P2\\b.jpg", photo_bytes(120)),  # a zip made on Windows: backslash separators
        ("P1//./c.jpg", photo_bytes(140)),
    ]
    archive = make_zip(tmp_path / "up" / "hostile.zip", entries)
    before = tree(tmp_path)

    staged = stage_upload([archive], "acme", uploads)

    target = uploads / "acme"
    after = tree(tmp_path)
    new = {path: info for path, info in after.items() if path not in before}
    prefix = str(target.relative_to(tmp_path))
    allowed = {str(uploads.relative_to(tmp_path)), prefix}
    assert new and all(path in allowed or path.startswith(prefix + os.sep) for path in new), new
    assert not any(kind == "link" for kind, *_ in new.values())
    assert {path: info for path, info in after.items() if path in before} == before  # nothing outside touched
    assert not any(Path(p).name == "evil.jpg" for p in after)
    assert outside.read_bytes() == photo_bytes(1)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == \
        ["P1/a.jpg", "P1/c.jpg", "P2/b.jpg"]

    got = refusals(staged)
    for name, reason in HOSTILE.items():
        assert reason in got[f"hostile.zip: {display_name(name)}"], name
    assert "symbolic link" in got["hostile.zip: link.jpg"] and "symbolic link" in got["hostile.zip: P1/linkdir"]
    assert "not a regular file" in got["hostile.zip: dev.jpg"] and "not a regular file" in got["hostile.zip: fifo.jpg"]
    assert len(staged.refused) == len(HOSTILE) + 4
    assert display_name("ok.jpg\x00../../evil.jpg") == "ok.jpg\\x00../../evil.jpg"  # shown, not cut at the NUL
    assert {(p.product_id, p.path.name) for p in staged.photos} == {("P1", "a.jpg"), ("P2", "b.jpg"), ("P1", "c.jpg")}


def test_a_link_planted_in_the_uploads_folder_is_not_followed(uploads, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (uploads / "acme").mkdir(parents=True)
    (uploads / "acme" / "P9").symlink_to(elsewhere)
    archive = make_zip(tmp_path / "up" / "z.zip", [("P9/x.jpg", photo_bytes(1)), ("P9/sub/y.jpg", photo_bytes(2)),
                                                   ("P1/a.jpg", photo_bytes(3))])
    staged = stage_upload([archive], "acme", uploads)
    got = refusals(staged)
    assert "leads outside the upload folder" in got["z.zip: P9/x.jpg"]
    assert "leads outside the upload folder" in got["z.zip: P9/sub/y.jpg"]
    assert list(elsewhere.iterdir()) == []
    assert [p.path.relative_to(uploads / "acme").as_posix() for p in staged.photos] == ["P1/a.jpg"]


@pytest.mark.parametrize("name, reason", [
    ("a\x00b", "NUL or control character"), ("a\nb", "NUL or control character"),
    ("x" * 256, "256 bytes long, over 255"), ("é" * 128, "256 bytes long, over 255"),
    ("..", "starts with a dot"), (".", "starts with a dot"), (".hidden", "starts with a dot"),
    ("a/b", "slash"), ("a\\b", "slash"), ("/abs", "slash"), ("..\\x", "slash"), ("../x", "slash"),
    ("", None), ("   ", None),
])
def test_bad_factory_names_are_refused_before_anything_is_written(uploads, tmp_path, name, reason):
    archive = make_zip(tmp_path / "up" / "z.zip", [("P1/a.jpg", photo_bytes(1))])
    with pytest.raises(UploadRefused) as refused:
        stage_upload([archive], name, uploads)
    assert str(refused.value).startswith("Name the factory these photos come from")
    if reason:
        assert reason in str(refused.value)
    assert not uploads.exists()


def test_good_factory_names_pass(uploads, tmp_path):
    assert check_factory_name("  Fábrica 1 (ex) ") == "Fábrica 1 (ex)"
    assert check_factory_name("x" * 255) == "x" * 255
    assert check_factory_name("a..b") == "a..b"
    staged = stage_upload([make_zip(tmp_path / "z.zip", [("P1/a.jpg", photo_bytes(1))])], "Fábrica 1", uploads)
    assert staged.photos[0].path == (uploads / "Fábrica 1" / "a.jpg").absolute()


def test_a_factory_folder_that_is_a_link_is_refused(uploads, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    uploads.mkdir(parents=True)
    (uploads / "evil").symlink_to(elsewhere)
    with pytest.raises(UploadRefused, match="is a link"):
        stage_upload([make_zip(tmp_path / "z.zip", [("P1/a.jpg", photo_bytes(1))])], "evil", uploads)
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------- the usual layouts


def _catalogue_folder(root: Path) -> Path:
    for rel, shade in (("acme/P1/a.jpg", 10), ("acme/P1/b.jpg", 20), ("acme/P2/c.jpg", 30)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(photo_bytes(shade))
    (root / "acme" / "P2" / "notes.txt").write_text("fob price 12")
    (root / "acme" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root / "acme"


def _zip_r(folder: Path, out: Path) -> Path:
    subprocess.run(["zip", "-qr", str(out), folder.name + "/"], cwd=folder.parent, check=True)
    return out


def _make_archive(folder: Path, out: Path) -> Path:
    return Path(shutil.make_archive(str(out.with_suffix("")), "zip", root_dir=folder.parent, base_dir=folder.name))


@pytest.mark.parametrize("build", [
    pytest.param(_zip_r, id="zip -r", marks=pytest.mark.skipif(not shutil.which("zip"), reason="no zip tool")),
    pytest.param(_make_archive, id="shutil.make_archive"),
])
@pytest.mark.parametrize("factory", ["acme", "other_name"])
def test_a_zip_of_a_factory_folder_keeps_its_products(uploads, tmp_path, build, factory):
    folder = _catalogue_folder(tmp_path / "src")
    archive = build(folder, tmp_path / "acme.zip")
    with zipfile.ZipFile(archive) as zf:
        assert "acme/P1/a.jpg" in zf.namelist()  # the top folder really is in the zip
    staged = stage_upload([archive], factory, uploads)
    target = uploads / factory
    assert sorted((p.product_id, p.path.relative_to(target.absolute()).as_posix()) for p in staged.photos) == \
        [("P1", "P1/a.jpg"), ("P1", "P1/b.jpg"), ("P2", "P2/c.jpg")]
    assert staged.products == ["P1", "P2"] and staged.written == 3
    assert staged.files[0].unwrapped == "acme" and staged.files[0].photos == 3
    assert not (target / "acme").exists()  # no nested uploads/acme/acme tree
    assert sorted(staged.ignored) == ["acme.zip: acme/.DS_Store", "acme.zip: acme/P2/notes.txt"]
    assert staged.refused == []


@pytest.mark.parametrize("names, expected", [
    (["SKU1.jpg", "SKU2.png"], {"SKU1", "SKU2"}),  # loose photos: the stem is the product
    (["acme/SKU1.jpg", "acme/SKU2.png"], {"SKU1", "SKU2"}),  # one top folder of loose photos: unwrapped
    (["export/P1/a.jpg", "export/P2/b.jpg"], {"P1", "P2"}),  # the top folder's name does not matter
    (["P1/a.jpg", "SKU3.jpg"], {"P1", "SKU3"}),  # mixed top level: nothing to unwrap
    (["P1/a.jpg", "P2/b.jpg"], {"P1", "P2"}),  # products at top level
    (["acme/P1/angles/a.jpg", "acme/P1/b.jpg", "acme/P2/c.jpg"], {"P1", "P2"}),  # deeper folders stay with P1
    (["__MACOSX/acme/._a.jpg", "acme/P1/a.jpg", "acme/P2/b.jpg"], {"P1", "P2"}),  # macOS metadata ignored
])
def test_products_follow_the_catalogue_layout(uploads, tmp_path, names, expected):
    archive = make_zip(tmp_path / "z.zip", [(n, photo_bytes(10 * i)) for i, n in enumerate(names)])
    staged = stage_upload([archive], "acme", uploads)
    assert set(staged.products) == expected
    assert not (uploads / "acme" / "acme").exists() and not (uploads / "acme" / "export").exists()


def test_loose_photos_and_a_zip_in_one_upload(uploads, tmp_path):
    loose = tmp_path / "up" / "SKU9.jpg"
    loose.parent.mkdir(parents=True)
    loose.write_bytes(photo_bytes(5))
    note = tmp_path / "up" / "price list.pdf"
    note.write_bytes(b"%PDF-1.4")
    archive = make_zip(tmp_path / "up" / "batch.zip", [("batch/P77/front.jpg", photo_bytes(6))])
    staged = stage_upload([loose, note, archive], "acme", uploads)
    assert [(p.name, p.product_id) for p in staged.photos] == [("SKU9.jpg", "SKU9"),
                                                              ("batch.zip: batch/P77/front.jpg", "P77")]
    assert refusals(staged) == {"price list.pdf": "not a photo or .zip"}


# --------------------------------------------------------------------------- re-uploads


def test_reuploading_the_same_zip_writes_nothing(uploads, tmp_path):
    archive = make_zip(tmp_path / "acme.zip", [("acme/P1/a.jpg", photo_bytes(1)), ("acme/P2/b.jpg", photo_bytes(2))])
    first = stage_upload([archive], "acme", uploads)
    snapshot = tree(uploads)
    second = stage_upload([archive], "acme", uploads)
    assert first.written == 2 and second.written == 0
    assert [(p.path, p.product_id) for p in first.photos] == [(p.path, p.product_id) for p in second.photos]
    assert tree(uploads) == snapshot  # same files, same inodes and mtimes: nothing rewritten
    assert not any(".incoming" in path for path in snapshot)  # temp folders are gone


def test_a_name_twice_in_one_zip_is_kept_once_per_content(uploads, tmp_path):
    archive = make_zip(tmp_path / "dup.zip", [
        ("P1/a.jpg", photo_bytes(1)), ("P1/a.jpg", photo_bytes(2)), ("P1/a.jpg", photo_bytes(1)),
        ("P2/b.jpg", photo_bytes(3)),
    ])
    staged = stage_upload([archive], "acme", uploads)
    files = sorted(p.name for p in (uploads / "acme" / "P1").iterdir())
    assert len(files) == 2 and files[0] == "a-" + files[0][2:] and "a.jpg" in files
    beside = next(p for p in staged.photos if p.kept_beside)
    assert beside.kept_beside == "a.jpg" and beside.product_id == "P1" and beside.path.read_bytes() == photo_bytes(2)
    assert (uploads / "acme" / "P1" / "a.jpg").read_bytes() == photo_bytes(1)
    assert [p.written for p in staged.photos] == [True, True, False, True]
    snapshot = tree(uploads)
    again = stage_upload([archive], "acme", uploads)  # issue 14.11: no new copy on each re-upload
    assert again.written == 0 and tree(uploads) == snapshot


def test_different_bytes_at_a_taken_name_keep_both(uploads, tmp_path):
    stage_upload([make_zip(tmp_path / "one.zip", [("P1/a.jpg", photo_bytes(1)), ("P2/b.jpg", photo_bytes(9))])],
                 "acme", uploads)
    staged = stage_upload([make_zip(tmp_path / "two.zip", [("P1/a.jpg", photo_bytes(2)),
                                                           ("P2/b.jpg", photo_bytes(9))])], "acme", uploads)
    kept, same = staged.photos
    assert (uploads / "acme" / "P1" / "a.jpg").read_bytes() == photo_bytes(1)  # never overwritten
    assert kept.written and kept.kept_beside == "a.jpg" and kept.path.read_bytes() == photo_bytes(2)
    assert kept.path.name.startswith("a-") and kept.path.suffix == ".jpg" and kept.product_id == "P1"
    assert not same.written and same.kept_beside is None


# --------------------------------------------------------------------------- one message per bad entry


def test_each_bad_entry_is_one_message_and_the_rest_is_read(uploads, tmp_path):
    good = [("P1/a.jpg", photo_bytes(1)), ("P2/b.jpg", photo_bytes(2))]
    archive = make_zip(tmp_path / "mixed.zip", good + [
        ("P1/secret.jpg", photo_bytes(3)),
        ("P1/ppmd.jpg", photo_bytes(4)),
        ("P1/" + "y" * 256 + ".jpg", photo_bytes(5)),
        ("a", b"a file"), ("a/b.jpg", photo_bytes(6)),
        ("c.jpg", photo_bytes(7)), ("c.jpg/d.jpg", photo_bytes(8)),
        ("P2/huge.bmp", b"\0" * (3 * MIB)),
        ("P2/liar.jpg", photo_bytes(9)),
    ])
    stored = make_zip(tmp_path / "stored.zip", [("P3/flipped.jpg", photo_bytes(10, size=(200, 100)))],
                      compression=zipfile.ZIP_STORED)
    patch_entry(archive, "P1/secret.jpg", flag_bits=0x1)
    patch_entry(archive, "P1/ppmd.jpg", method=98)
    patch_entry(archive, "P2/liar.jpg", file_size=100)
    patch_entry(stored, "P3/flipped.jpg", flip_data_byte=True)
    not_zip = tmp_path / "photos.zip"
    not_zip.write_bytes(photo_bytes(11))  # a JPEG renamed .zip
    truncated = tmp_path / "half.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    staged = stage_upload([archive, stored, not_zip, truncated], "acme", uploads,
                          UploadLimits(max_unpacked_bytes=2 * MIB))
    got = refusals(staged)
    assert got.pop("mixed.zip: P1/secret.jpg") == "encrypted (password-protected): zip it again without a password"
    assert got.pop("mixed.zip: P1/ppmd.jpg").startswith("compressed with method 98 (ppmd), which cannot be read here")
    assert "over 255 bytes" in got.pop(f"mixed.zip: {display_name('P1/' + 'y' * 256 + '.jpg')}")
    assert got.pop("mixed.zip: a").startswith("both a file and a folder in this zip")
    assert got.pop("mixed.zip: c.jpg").startswith("both a file and a folder in this zip")
    assert got.pop("mixed.zip: P2/huge.bmp").startswith("unpacks to 3.0 MB, more than the 2.0 MB left")
    assert got.pop("mixed.zip: P2/liar.jpg") == "damaged data (CRC check failed)"
    assert got.pop("stored.zip: P3/flipped.jpg") == "damaged data (CRC check failed)"
    assert got.pop("photos.zip").startswith("not a zip file, or a damaged one")
    assert got.pop("half.zip").startswith("not a zip file, or a damaged one")
    assert got == {}
    assert sorted((p.product_id, p.path.name) for p in staged.photos) == \
        [("P1", "a.jpg"), ("P2", "b.jpg"), ("a", "b.jpg"), ("c.jpg", "d.jpg")]
    on_disk = sorted(p.relative_to(uploads / "acme").as_posix() for p in (uploads / "acme").rglob("*") if p.is_file())
    assert on_disk == ["P1/a.jpg", "P2/b.jpg", "a/b.jpg", "c.jpg/d.jpg"]  # nothing half-written left behind


@pytest.mark.skipif(not shutil.which("zip"), reason="no zip tool")
def test_a_password_protected_zip_made_by_zip_is_refused_by_entry(uploads, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(photo_bytes(1))
    subprocess.run(["zip", "-q", "-P", "secret", str(tmp_path / "locked.zip"), "a.jpg"], cwd=src, check=True)
    staged = stage_upload([tmp_path / "locked.zip"], "acme", uploads)
    assert refusals(staged) == {"locked.zip: a.jpg": "encrypted (password-protected): zip it again without a password"}
    assert staged.photos == [] and not (uploads / "acme").exists()


def test_too_many_entries_refuse_that_zip_only(uploads, tmp_path):
    crowded = make_zip(tmp_path / "crowded.zip", [(f"P{i}/a.jpg", photo_bytes(i)) for i in range(6)])
    loose = tmp_path / "SKU1.jpg"
    loose.write_bytes(photo_bytes(99))
    staged = stage_upload([crowded, loose], "acme", uploads, UploadLimits(max_entries=5))
    assert refusals(staged) == {"crowded.zip": "holds 6 entries, more than 5 per zip: split it into smaller zips"}
    assert [p.product_id for p in staged.photos] == ["SKU1"]


def test_a_zip_without_photos_creates_no_folder(uploads, tmp_path):
    archive = make_zip(tmp_path / "docs.zip", [("readme.txt", b"hello"), ("sub/", b"")])
    staged = stage_upload([archive], "new_factory", uploads)
    assert staged.photos == [] and staged.ignored == ["docs.zip: readme.txt"]
    assert not (uploads / "new_factory").exists()


# --------------------------------------------------------------------------- bounds


class _Endless:
    """A stream that never ends, counting what was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, n: int) -> bytes:
        self.read_bytes += n
        return b"\0" * n


def test_copy_stops_at_its_cap_whatever_the_stream_says():
    stream = _Endless()
    with open(os.devnull, "wb") as sink, pytest.raises(TooLarge):
        copy_capped(stream, sink, cap=3 * MIB)
    assert stream.read_bytes == 3 * MIB + 1
    sink = io.BytesIO()
    assert copy_capped(io.BytesIO(b"abc"), sink, cap=3) == (3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_a_large_member_is_streamed_not_held_in_memory(uploads, tmp_path):
    archive = tmp_path / "big.zip"
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("P1/big.bmp", "w") as out:
        for _ in range(40):
            out.write(chunk)
    tracemalloc.start()
    try:
        staged = stage_upload([archive], "acme", uploads, UploadLimits(max_unpacked_bytes=64 * MIB))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert staged.photos[0].path.stat().st_size == 40 * MIB
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB while unpacking a 40 MiB member"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB tmpfs (a full disk for real); skipped where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_refuses_what_does_not_fit_and_leaves_no_partial_file(tiny_disk, tmp_path):
    archive = make_zip(tmp_path / "fat.zip", [(f"P{i}/x.bmp", os.urandom(200_000)) for i in range(3)],
                       compression=zipfile.ZIP_STORED)
    staged = stage_upload([archive], "acme", tiny_disk / "uploads")
    assert [p.product_id for p in staged.photos] == ["P0", "P1"]
    assert refusals(staged) == {"fat.zip: P2/x.bmp": "cannot write: No space left on device"}
    assert sorted(tree(tiny_disk / "uploads")) == ["acme", "acme/P0", "acme/P0/x.bmp", "acme/P1", "acme/P1/x.bmp"]


# --------------------------------------------------------------------------- with a real ingest


@pytest.fixture
def ingest(tmp_path, tiny_embedder):
    store = EdgeStore(tmp_path / "data" / "qdrant-edge", "shoes")
    yield IngestService(store, tiny_embedder, BlobDetector(), tmp_path / "data", batch_size=4)
    store.close()


def test_add_upload_indexes_keeps_ids_on_reupload_and_removes_failed_photos(tmp_path, ingest):
    uploads = tmp_path / "data" / "uploads"
    archive = make_zip(tmp_path / "acme.zip", [
        ("acme/P1/a.jpg", photo_bytes(10)), ("acme/P1/b.jpg", photo_bytes(60)), ("acme/P2/c.jpg", photo_bytes(120)),
        ("acme/P2/broken.jpg", b"not a photo at all"),
    ])
    calls = []
    first = add_upload([archive], "acme", uploads, ingest, progress=lambda done, total: calls.append((done, total)))
    assert first.ingest.photos_added == 3 and [f.error for f in first.ingest.photos_failed] == \
        ["not an image Pillow can read (unknown format or corrupt header)"]
    assert [p.name for p in first.removed] == ["acme.zip: acme/P2/broken.jpg"]
    assert not (uploads / "acme" / "P2" / "broken.jpg").exists()
    assert calls[-1] == (4, 4)
    points = {p.id: p.payload["product_id"] for p in ingest.store.scroll({"factory": ["acme"]})}
    assert sorted(set(points.values())) == ["P1", "P2"]
    snapshot = tree(uploads)

    again = add_upload([archive], "acme", uploads, ingest)
    assert (again.ingest.photos_added, again.ingest.photos_unchanged, again.ingest.photos_updated) == (0, 3, 0)
    assert again.staged.written == 1  # only the broken photo, written and removed again
    assert {p.id: p.payload["product_id"] for p in ingest.store.scroll({"factory": ["acme"]})} == points
    assert tree(uploads) == snapshot


def test_an_ingest_refused_by_the_store_leaves_no_files(tmp_path, ingest, tiny_embedder):
    uploads = tmp_path / "data" / "uploads"
    add_upload([make_zip(tmp_path / "one.zip", [("P1/a.jpg", photo_bytes(1))])], "acme", uploads, ingest)
    other_model = CountingEmbedder(tiny_embedder)
    other_model.model_id = "another-clip"
    mismatched = IngestService(ingest.store, other_model, BlobDetector(), tmp_path / "data")
    before = tree(uploads)
    with pytest.raises(SchemaMismatch):
        add_upload([make_zip(tmp_path / "two.zip", [("P7/x.jpg", photo_bytes(7)), ("P1/a.jpg", photo_bytes(1))])],
                   "acme", uploads, mismatched)
    assert tree(uploads) == before  # P7 written, then removed with its folder; P1/a.jpg untouched


def test_add_upload_without_photos_indexes_nothing(tmp_path, ingest):
    uploads = tmp_path / "data" / "uploads"
    report = add_upload([make_zip(tmp_path / "docs.zip", [("notes.txt", b"x")])], "brand_new", uploads, ingest)
    assert report.ingest is None and report.staged.ignored == ["docs.zip: notes.txt"]
    assert ingest.store.count() == 0 and not (uploads / "brand_new").exists()
