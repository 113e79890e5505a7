"""Safe decoding: every mode to RGB, EXIF orientation, size limits, clear reasons for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.errors import BadImage
from core.images import expand_box, file_sha256, load_photo

LIMIT = 50_000_000


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste(Image.new("RGB", (50, 100), (0, 0, 255)), (0, 0))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display upright
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_photo(path, LIMIT)
    assert out.size == (100, 200)
    top = np.asarray(out)[:40].reshape(-1, 3).mean(axis=0)
    assert top[2] > 150 and top[0] < 100  # the blue band is now on top


@pytest.mark.parametrize("mode,maker", [
    ("CMYK", lambda: Image.new("CMYK", (32, 24), (0, 255, 255, 0))),
    ("P+transparency", lambda: _palette_with_transparency()),
    ("RGBA", lambda: Image.new("RGBA", (32, 24), (255, 0, 0, 0))),
    ("LA", lambda: Image.new("LA", (32, 24), (10, 255))),
    ("I;16", lambda: Image.fromarray(np.full((24, 32), 65535, dtype=np.uint16))),
    ("1", lambda: Image.new("1", (32, 24), 1)),
])
def test_every_mode_becomes_8bit_rgb(tmp_path, mode, maker):
    path = tmp_path / "photo.png" if mode != "CMYK" else tmp_path / "photo.jpg"
    maker().save(path)
    out = load_photo(path, LIMIT)
    assert out.mode == "RGB" and out.size == (32, 24)
    if mode in {"RGBA", "P+transparency"}:
        assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white


def _palette_with_transparency():
    img = Image.new("P", (32, 24), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    return img


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_photo(path, LIMIT).getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is a text file, not a photo", "not an image"),
])
def test_unreadable_files_have_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        load_photo(path, LIMIT)


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, quality=90)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(BadImage, match="cannot decode"):
        load_photo(path, LIMIT)


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    with pytest.raises(BadImage, match="too large"):
        load_photo(path, max_pixels=1_000_000)
    assert load_photo(path, max_pixels=6_000_000).size == (3000, 2000)


def test_expand_box_adds_margin_and_clamps():
    assert expand_box((10, 10, 110, 60), 0.1, 500, 500) == (0, 5, 120, 65)
    assert expand_box((0, 0, 100, 100), 0.5, 120, 120) == (0, 0, 120, 120)


def test_sha256_is_of_the_bytes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"shoe")
    b.write_bytes(b"shoe")
    assert file_sha256(a) == file_sha256(b) == "efda1c925291a74c51bb958e56bf3589677a4a3880ddf40b8323b0235b3ced09"


def test_unreadable_file_after_ultralytics_import_is_still_a_clear_reason(tmp_path):
    """ultralytics patches Image.open to pip-install pi-heif on unknown files; we bypass it."""
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)

    path = tmp_path / "notes.jpg"
    path.write_text("not a photo")
    with pytest.raises(BadImage, match="not an image Pillow can read"):
        load_photo(path, LIMIT)
