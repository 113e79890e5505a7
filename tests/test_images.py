"""Safe decoding: every mode to RGB, EXIF orientation, size limits, clear reasons for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.errors import BadImage
from core.vision.images import expand_box, file_sha256, load_photo

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


# --------------------------------------------------------------------------- bounded memory per photo


def _png_rows(path, width: int, height: int, value: int = 0x7F) -> None:
    """A real 8-bit greyscale PNG written row by row (a huge one costs no Pillow encode)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(6), b"\x00" + bytes([value]) * width
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("WEBP", "RGB"),
                                      ("TIFF", "RGB"), ("BMP", "RGB"), ("GIF", "P"), ("JPEG", "RGB")])
def test_every_format_is_reduced_right_after_decoding(tmp_path, fmt, mode):
    """Not only JPEGs (draft mode): a large photo of any format leaves the decoder at most
    `max_side` long, its colours kept, its original size reported."""
    from core.vision.images import read_photo

    img = Image.new("RGB", (3000, 1000), (200, 40, 40))
    img.paste(Image.new("RGB", (1500, 1000), (40, 40, 200)), (1500, 0))  # left red, right blue
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    elif mode == "I;16":  # a dark 16-bit photo stays dark (values are scaled as 16-bit, not 8)
        img = Image.fromarray(np.full((1000, 3000), 1000, dtype=np.uint16))
    path = tmp_path / f"photo.{fmt.lower()}"
    img.save(path, format=fmt)
    photo = read_photo(path, LIMIT, max_side=600)
    assert photo.image.mode == "RGB" and photo.image.size == (600, 200) and photo.original_size == (3000, 1000)
    left, right = photo.image.getpixel((100, 100)), photo.image.getpixel((500, 100))
    if mode == "I;16":
        assert left == right == load_photo(path, LIMIT).getpixel((0, 0)) == (3, 3, 3)  # 1000 / 65535 * 255
    else:
        assert left[0] > 150 > left[2] and right[2] > 150 > right[0], (left, right)


def test_reduced_photo_is_upright_from_any_format(tmp_path):
    """EXIF orientation is read from the decoded file (a TIFF keeps it in its tags), then applied
    to the reduced image."""
    from core.vision.images import read_photo

    img = Image.new("RGB", (2000, 1000), (250, 250, 250))
    img.paste(Image.new("RGB", (200, 100), (200, 0, 0)), (0, 900))  # bottom-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("rot.jpg", "rot.tif", "rot.png"):
        img.save(tmp_path / name, exif=exif)
        photo = read_photo(tmp_path / name, LIMIT, max_side=500)
        assert photo.image.size == (250, 500) and photo.original_size == (1000, 2000), name
        assert photo.image.getpixel((5, 5))[0] > 150 > photo.image.getpixel((5, 5))[1], name  # now top-left


def test_extreme_aspect_ratio_is_refused_from_the_header(tmp_path):
    from core.vision.images import read_photo

    _png_rows(tmp_path / "strip.png", 200_000, 1)
    assert (tmp_path / "strip.png").stat().st_size < 12_000
    with pytest.raises(BadImage, match=r"^extreme aspect ratio: 200000x1 \(200,000:1\) \(limit MAX_ASPECT_RATIO=20\)$"):
        read_photo(tmp_path / "strip.png", LIMIT, 1600, max_aspect_ratio=20)
    Image.new("RGB", (40, 800)).save(tmp_path / "tall.png")  # exactly 20:1 passes
    assert read_photo(tmp_path / "tall.png", LIMIT, 1600, max_aspect_ratio=20).original_size == (40, 800)


def test_pixel_budget_lets_one_large_decode_run_at_a_time(tmp_path):
    """Two threads, two 6-megapixel PNGs, a 10-megapixel budget: they decode one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from core.vision.images import PixelBudget, read_photo

    for name in ("a.png", "b.png"):
        _png_rows(tmp_path / name, 3000, 2000)
    budget = PixelBudget(10_000_000)
    with ThreadPoolExecutor(2) as pool:
        photos = list(pool.map(lambda n: read_photo(tmp_path / n, LIMIT, 1000, budget=budget), ["a.png", "b.png"]))
    assert [p.image.size for p in photos] == [(1000, 667)] * 2
    assert budget.peak == 6_000_000 and budget.in_use == 0
    small = PixelBudget(10_000_000)
    with ThreadPoolExecutor(2) as pool:  # small photos do decode side by side
        list(pool.map(lambda n: read_photo(tmp_path / n, LIMIT, 1000, budget=small), ["a.png", "b.png"]))
        assert small.peak <= 10_000_000


def test_max_image_pixels_above_pillows_guard_is_the_one_limit(tmp_path, monkeypatch):
    """Pillow refuses over 89,478,485 pixels on its own; MAX_IMAGE_PIXELS=100,000,000 must still
    accept a 95-megapixel photo, and refuse one over it in our words."""
    from core.vision.images import read_photo

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    path = tmp_path / "huge.png"
    _png_rows(path, 10_000, 9_500)
    assert 10_000 * 9_500 > Image.MAX_IMAGE_PIXELS
    photo = read_photo(path, 100_000_000, max_side=1000)
    assert photo.original_size == (10_000, 9_500) and photo.image.size == (1000, 950)
    assert load_photo(path, 100_000_000).size == (10_000, 9_500)
    with pytest.raises(BadImage, match=r"^image too large: 95,000,000 pixels \(10000x9500\) "
                                       r"\(limit MAX_IMAGE_PIXELS=90,000,000\)$"):
        read_photo(path, 90_000_000, max_side=1000)


def test_hash_is_of_the_bytes_decoded_and_big_files_are_refused(tmp_path):
    from core.vision.images import read_photo

    path = tmp_path / "p.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path)
    assert read_photo(path, LIMIT).sha256 == file_sha256(path)
    with pytest.raises(BadImage, match=r"^file too large: .* MB \(limit MAX_FILE_MB=0.0001\)$"):
        read_photo(path, LIMIT, max_bytes=100)


def test_a_fifo_named_like_a_photo_is_refused_without_blocking(tmp_path):
    import os

    from core.vision.images import read_photo

    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(BadImage, match="not a regular file"):
        read_photo(tmp_path / "pipe.jpg", LIMIT)
