"""Safe photo decoding: size limits, EXIF orientation, every mode to 8-bit RGB."""

from __future__ import annotations

import hashlib
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import BadImage

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                              ".heic", ".heif", ".avif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})  # decoded by pi-heif (libheif), registered on first use
AVIF_EXTENSIONS = frozenset({".avif"})  # decoded by Pillow itself (11.3+ wheels ship libavif)

# Truncated files must fail loudly, not decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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
    """Like `load_photo`, but a JPEG larger than `max_side` is decoded at a reduced scale
    (Pillow's draft mode: 1/2, 1/4 or 1/8, still at least `max_side`), which is several times
    faster. Returns the image and the upright photo's original (width, height).
    """
    _heif_ready()  # a HEIC photo under any name decodes like the others
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        missing = _missing_decoder(path)
        if missing:
            raise BadImage(missing)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _pillow_open()(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImage(
                        f"image too large: {width * height:,} pixels ({width}x{height}) "
                        f"(limit MAX_IMAGE_PIXELS={max_pixels:,})"
                    )
                img.seek(0)
                if max_side and img.format == "JPEG" and max(width, height) > max_side:
                    img.draft("RGB", (max_side, max_side))
                decoded_size = img.size
                img.load()
                upright = ImageOps.exif_transpose(img)
                rotated = upright.size != decoded_size
                original = (height, width) if rotated else (width, height)
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
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot decode: {exc}") from exc


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
