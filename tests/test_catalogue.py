"""Layout convention and manifests: which factory and product each photo belongs to."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from core.catalogue.folders import discover
from core.errors import ManifestError


def _photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_product_from_subfolder_or_stem(tmp_path):
    root = tmp_path / "factory_a"
    _photo(root / "SKU123" / "front.jpg")
    _photo(root / "SKU123" / "angles" / "side.png")
    _photo(root / "SKU999.jpg")
    (root / "notes.txt").write_text("not a photo")
    _photo(root / ".hidden" / "x.jpg")
    found = {p.path.relative_to(root).as_posix(): (p.factory, p.product_id) for p in discover(root)}
    assert found == {
        "SKU123/front.jpg": ("factory_a", "SKU123"),
        "SKU123/angles/side.png": ("factory_a", "SKU123"),
        "SKU999.jpg": ("factory_a", "SKU999"),
    }


def test_factory_option_overrides_folder_name(tmp_path):
    _photo(tmp_path / "dump" / "X1.jpg")
    assert [p.factory for p in discover(tmp_path / "dump", factory="acme")] == ["acme"]


def test_manifest_overrides_layout_and_keeps_extras(tmp_path):
    root = tmp_path / "factory_a"
    _photo(root / "IMG_001.jpg")
    _photo(root / "IMG_002.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,product_id,factory,colour\nIMG_001.jpg,SKU-7,factory_z,white\n")
    found = {p.path.name: p for p in discover(root, manifest=manifest)}
    assert (found["IMG_001.jpg"].factory, found["IMG_001.jpg"].product_id) == ("factory_z", "SKU-7")
    assert found["IMG_001.jpg"].extras == {"colour": "white"}
    assert (found["IMG_002.jpg"].factory, found["IMG_002.jpg"].product_id) == ("factory_a", "IMG_002")


@pytest.mark.parametrize("text,message", [
    ("file,sku\nIMG_001.jpg,S1\n", "line 1: missing column"),
    ("path,product_id\nmissing.jpg,S1\n", "line 2: no such photo: missing.jpg"),
    ("path,product_id\nIMG_001.jpg,S1\nIMG_001.jpg,S2\n", "line 3: IMG_001.jpg is listed twice .first on line 2."),
    ("path,product_id\nIMG_001.jpg,\n", "line 2: empty product_id"),
])
def test_bad_manifest_names_the_line(tmp_path, text, message):
    root = tmp_path / "factory_a"
    _photo(root / "IMG_001.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ManifestError, match=message):
        list(discover(root, manifest=manifest))


def test_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "factory_a"
    _photo(root / "P1" / "a.jpg")
    os.symlink(root, root / "P1" / "loop")
    assert [p.product_id for p in discover(root)] == ["P1"]


def test_unicode_and_odd_names(tmp_path):
    root = tmp_path / "fábrica_ü"
    _photo(root / "鞋 001" / "vorn é.jpg")
    [photo] = discover(root)
    assert (photo.factory, photo.product_id) == ("fábrica_ü", "鞋 001")


def _manifest_error(tmp_path, content: bytes) -> str:
    root = tmp_path / "factory_a"
    _photo(root / "IMG_001.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(ManifestError) as caught:
        list(discover(root, manifest=manifest))
    return str(caught.value)


def test_manifest_that_is_not_utf8_names_the_line(tmp_path):
    message = _manifest_error(tmp_path, "path,product_id,colour\nIMG_001.jpg,S1,weiß\n".encode("latin-1"))
    assert message == (f"{tmp_path / 'm.csv'}: line 2: not UTF-8 text (byte 0xdf at column 19); "
                       f"save the manifest as UTF-8 CSV")


def test_binary_file_as_manifest_is_refused(tmp_path):
    png = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(png)
    assert "line 1: not UTF-8 text (byte 0x89 at column 1)" in _manifest_error(tmp_path, png.read_bytes())
    assert _manifest_error(tmp_path, b"path,product_id\nIMG_001.jpg,S\x001\n").endswith(
        "line 2: a NUL byte: this is a binary file, not a CSV manifest")
    assert "line 1: longer than 4 MB" in _manifest_error(tmp_path, b"x" * (5 << 20))


def test_manifest_field_over_the_csv_limit_names_the_line(tmp_path):
    big = "a" * 200_000
    message = _manifest_error(tmp_path, f'path,product_id,notes\nIMG_001.jpg,S1,ok\nIMG_001.jpg,S2,"{big}"\n'.encode())
    assert message.endswith("line 3: a field longer than 131,072 characters (an unclosed quote?)")
    message = _manifest_error(tmp_path, b'path,product_id,notes\nIMG_001.jpg,S1,"unclosed\n' + b"x\n" * 70_000)
    assert "a field longer than 131,072 characters" in message


@pytest.mark.parametrize("column", ["box", "photo_width", "photo_height", "background", "photo_sha256", "crop_path",
                                    "photo_path", "width", "model", "ingested_at", "group_similar", "group_identical",
                                    "group_duplicate", "group_next_tier"])
def test_manifest_column_named_like_a_computed_key_is_refused(tmp_path, column):
    message = _manifest_error(tmp_path, f"path,product_id,{column}\nIMG_001.jpg,S1,sim-fake\n".encode())
    assert message.endswith(f"line 1: column '{column}' is a key ingest computes for every crop (it would overwrite "
                            f"it); rename the column")


def test_every_computed_payload_key_is_protected(tmp_path):
    from core.domain.types import COMPUTED_PAYLOAD_KEYS

    for column in set(COMPUTED_PAYLOAD_KEYS) - {"factory", "product_id"}:
        assert f"column '{column}' is a key ingest computes" in _manifest_error(
            tmp_path, f"path,product_id,{column}\nIMG_001.jpg,S1,x\n".encode())


def test_manifest_column_given_twice_is_refused(tmp_path):
    assert _manifest_error(tmp_path, b"path,product_id,colour,colour\nIMG_001.jpg,S1,red,blue\n").endswith(
        "line 1: column 'colour' appears twice")


def test_manifest_line_numbers_count_physical_lines(tmp_path):
    """A quoted value over two lines and a blank line: the error names the line in the file."""
    text = 'path,product_id,notes\nIMG_001.jpg,S1,"two\nlines"\n\nghost.jpg,S2,x\n'
    assert _manifest_error(tmp_path, text.encode()).endswith("line 5: no such photo: ghost.jpg")
