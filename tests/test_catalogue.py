"""Layout convention and manifests: which factory and product each photo belongs to."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from core.catalogue import discover
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
