"""Safe photo decoding: size limits, EXIF orientation, every mode to 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from core.errors import BadImage

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                              ".heic", ".heif", ".avif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})  # decoded by pi-heif (libheif), registered on first use
AVIF_EXTENSIONS = frozenset({".avif"})  # decoded by Pillow itself (11.3+ wheels ship libavif)

# Truncated files must fail loudly, not decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# EXIF orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_EXTENSIONS


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (no decode)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_heif_registered: bool | None = None  # None: not tried yet


def _heif_ready() -> bool:
    """Register pi-heif's HEIC/HEIF opener with Pillow once; False when it is not installed."""
    global _heif_registered
    if _heif_registered is None:
        try:
            from pi_heif import register_heif_opener
        except ImportError:
            _heif_registered = False
        else:
            register_heif_opener()
            _heif_registered = True
    return _heif_registered


def _missing_decoder(path: Path) -> str | None:
    """Why a photo of this type cannot be decoded here (no decoder installed), or None."""
    suffix = path.suffix.lower()
    if suffix in HEIF_EXTENSIONS and not _heif_ready():
        return "HEIC/HEIF photo, but no HEIF decoder is installed (pip install pi-heif)"
    if suffix in AVIF_EXTENSIONS:
        from PIL import features

        if not features.check("avif"):
            return "AVIF photo, but this Pillow has no AVIF decoder (pip install 'pillow>=11.3')"
    return None


def _pillow_open():
    """Pillow's own `Image.open`.

    ultralytics replaces `PIL.Image.open` on import with a wrapper that, for a file Pillow
    cannot identify, tries to pip-install pi-heif (or raises ModuleNotFoundError offline).
    A corrupt photo must be a clear per-file reason, never an install attempt.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is not None and Image.open is getattr(patches, "image_open", None):
        return patches._image_open
    return Image.open


def load_photo(path: Path, max_pixels: int) -> Image.Image:
    """Decode `path` into an upright 8-bit RGB image at full resolution.

    Raises BadImage with a short reason for: empty or non-image files, truncated data,
    photos over `max_pixels` (checked from the header, before decoding the pixels).
    Animated images give their first frame; alpha is composited onto white.
    """
    return load_photo_scaled(path, max_pixels)[0]


def load_photo_scaled(path: Path, max_pixels: int, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`read_photo` without the hash, decoded from the file as Pillow reads it (no copy of the
    file in memory): (image at most `max_side` long, the original upright (width, height))."""
    return decode_photo(Path(path), max_pixels, max_side)


@dataclass(frozen=True)
class DecodedPhoto:
    """A photo decoded from one read of its file."""

    image: Image.Image  # upright 8-bit RGB, longest side at most the `max_side` asked for
    original_size: tuple[int, int]  # the upright photo's full (width, height)
    sha256: str  # of the very bytes that were decoded


class PixelBudget:
    """Caps the pixels being decoded at full size at once across threads.

    A photo waits until its pixels fit beside those in flight; one alone always proceeds,
    so the cap is never a deadlock, only a queue. Peak decode memory is then about the cap
    (or one photo, whichever is larger) times the bytes per pixel of its mode.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most pixels decoding at once (for tests and benchmarks)
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.capacity)
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


_PILLOW_GUARD_LOCK = threading.Lock()


def _let_pillow_open(max_pixels: int) -> None:
    """Make MAX_IMAGE_PIXELS the one limit: Pillow's own guard (89 MP by default) would refuse
    photos under a higher setting, so raise it to ours (never lower it: our check is per call)."""
    with _PILLOW_GUARD_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def read_photo_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """The whole file, read once. BadImage for: not a regular file, empty, over `max_bytes`."""
    try:
        # O_NONBLOCK: a FIFO named .jpg must not block the open; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise BadImage("no such file (dangling link?)") from exc
    except PermissionError as exc:
        raise BadImage(f"cannot read: {exc.strerror}") from exc
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from exc
    with open(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not a regular file")
        if info.st_size == 0:
            raise BadImage("empty file (0 bytes)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise BadImage(f"file too large: {info.st_size / 1e6:,.1f} MB (limit MAX_FILE_MB={max_bytes / 1e6:g})")
        try:
            data = handle.read(max_bytes + 1 if max_bytes is not None else -1)
        except OSError as exc:
            raise BadImage(f"cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise BadImage("empty file (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:  # it grew after the fstat
        raise BadImage(f"file too large: over {max_bytes / 1e6:g} MB (limit MAX_FILE_MB={max_bytes / 1e6:g})")
    return data


def read_photo(path: Path, max_pixels: int, max_side: int | None = None, *, max_aspect_ratio: float | None = None,
               max_bytes: int | None = None, budget: PixelBudget | None = None) -> DecodedPhoto:
    """Read `path` once, hash those bytes and decode the same bytes (a file replaced meanwhile
    can never pair one file's hash with another's pixels).

    Memory per photo is bounded: the file (at most `max_bytes`), its pixels at full size
    (at most `max_pixels`; a JPEG larger than `max_side` decodes at 1/2-1/8 scale in draft
    mode), reduced right after decoding to at most `max_side` on its longest side. `budget`
    queues full-size decodes so that several threads never hold more than its pixels at once.
    Raises BadImage with a short reason (see `load_photo`); also for a photo whose sides differ
    by more than `max_aspect_ratio` (checked from the header).
    """
    missing = _missing_decoder(Path(path))
    if missing:
        raise BadImage(missing)
    data = read_photo_bytes(path, max_bytes)
    image, original = decode_photo(data, max_pixels, max_side, max_aspect_ratio=max_aspect_ratio, budget=budget)
    return DecodedPhoto(image, original, hashlib.sha256(data).hexdigest())


def decode_photo(source: bytes | Path, max_pixels: int, max_side: int | None = None, *,
                 max_aspect_ratio: float | None = None,
                 budget: PixelBudget | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode a photo (a file's bytes, or its path): (upright RGB at most `max_side` long,
    original upright size)."""
    _let_pillow_open(max_pixels)
    try:
        if isinstance(source, Path) and source.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        _heif_ready()  # a HEIC photo under any name decodes like the others
        missing = _missing_decoder(source) if isinstance(source, Path) else None
        if missing:
            raise BadImage(missing)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _pillow_open()(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImage(
                        f"image too large: {width * height:,} pixels ({width}x{height}) "
                        f"(limit MAX_IMAGE_PIXELS={max_pixels:,})"
                    )
                ratio = max(width, height) / max(1, min(width, height))
                if max_aspect_ratio is not None and ratio > max_aspect_ratio:
                    raise BadImage(
                        f"extreme aspect ratio: {width}x{height} ({ratio:,.0f}:1) "
                        f"(limit MAX_ASPECT_RATIO={max_aspect_ratio:g})"
                    )
                img.seek(0)
                if max_side and img.format == "JPEG" and max(width, height) > max_side:
                    img.draft("RGB", (max_side, max_side))
                decoded_size = img.size
                with budget.hold(decoded_size[0] * decoded_size[1]) if budget else nullcontext():
                    img.load()
                    # Read from the decoded file (a TIFF keeps it in its tags, which a copy loses).
                    transpose = _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation))
                    reduced = _reduce(img, max_side)
                upright = reduced.transpose(transpose) if transpose is not None else reduced
                original = (height, width) if upright.size != reduced.size else (width, height)
                return to_rgb(upright), original
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired first (far past its limit); say it in our terms.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise BadImage(f"image too large: {size} (limit MAX_IMAGE_PIXELS={max_pixels:,})") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not an image Pillow can read (unknown format or corrupt header)") from exc
    except PermissionError as exc:
        raise BadImage(f"permission denied: {exc.strerror}") from exc
    except MemoryError as exc:
        raise BadImage("not enough memory to decode this photo") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot decode: {exc}") from exc
    except Exception as exc:  # a format plugin's own bug on hostile bytes (struct.error, IndexError...)
        raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from exc


def _reduce(img: Image.Image, max_side: int | None) -> Image.Image:
    """`img` with its longest side at most `max_side` (aspect kept; never below 1 pixel)."""
    if not max_side or max(img.size) <= max_side:
        return img
    if img.mode == "P":  # palette images resample by nearest neighbour only
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in {"PA", "1"}:
        img = img.convert("RGBA" if img.mode == "PA" else "L")
    elif img.mode.startswith("I;16"):  # no resampling filter takes 16-bit modes: resample as 32-bit
        wide = img.convert("I")
        wide.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return wide.convert("I;16")  # back to 16 bits, so `to_rgb` scales it as 16-bit
    # In place: the decoded pixels are dropped as soon as the reduced ones exist (no full-size copy).
    img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (CMYK, P, LA, RGBA, I;16, I, F, 1, L) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def expand_box(
    box: tuple[int, int, int, int], margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Grow a box by `margin` of its size on each side, clamped to the image."""
    x1, y1, x2, y2 = box
    dx = (x2 - x1) * margin
    dy = (y2 - y1) * margin
    return (
        max(0, int(round(x1 - dx))),
        max(0, int(round(y1 - dy))),
        min(width, int(round(x2 + dx))),
        min(height, int(round(y2 + dy))),
    )


def save_thumbnail(img: Image.Image, path: Path, max_side: int) -> None:
    """Write a JPEG thumbnail (longest side `max_side`) atomically."""
    thumb = img.copy()
    thumb.thumbnail((max_side, max_side))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    thumb.save(tmp, format="JPEG", quality=85)
    tmp.replace(path)
