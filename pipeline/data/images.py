"""Decoding one source image into 8-bit RGB, or a precise reason why it cannot be used.

Every kind of awkward input has a defined outcome: grayscale, CMYK, palette, alpha, 16-bit, float and multi-frame
images are converted (and the conversion is recorded); empty, truncated, non-image, too-small, decompression-bomb
inputs and pixel values with no known 8-bit mapping are rejected with a reason. Nothing raises for bad data:
Pillow's decoders raise many exception types on corrupt files (OSError, SyntaxError, TypeError, OverflowError,
...), and each becomes a rejection naming the type.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Pillow's decompression-bomb limit is one global of the PIL module; decode_image sets it to its own `max_pixels`
# while it decodes, and this lock keeps threads of one process from seeing each other's limit (decoding worker
# processes each have their own copy).
_PILLOW_LIMIT = threading.Lock()


@dataclass(frozen=True)
class DecodedImage:
    """An RGB uint8 image (H, W, 3) and what was done to make it so."""

    pixels: np.ndarray
    original_size: tuple[int, int]  # (width, height) as stored in the file
    conversions: tuple[str, ...]


@dataclass(frozen=True)
class Rejected:
    reason: str


class UnsupportedPixels(ValueError):
    """Pixel values with no known mapping to 8 bits (e.g. a float image outside [0, 1]); the message says why."""


def decode_image(data: bytes, *, min_size: int, max_pixels: int, storage_size: int) -> DecodedImage | Rejected:
    """Decode image bytes to RGB uint8 with the shorter side at most `storage_size` (Lanczos downscaling).

    Rejects images whose shorter side is below `min_size` (the largest training crop) and images with more
    than `max_pixels` pixels before any pixel data is decoded; `max_pixels` is the only pixel limit (it replaces
    Pillow's own MAX_IMAGE_PIXELS, higher or lower, while decoding).
    """
    if not data:
        return Rejected("empty file (0 bytes)")
    try:
        return _decode(data, min_size, max_pixels, storage_size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Rejected(f"decompression bomb: {err}")
    except UnidentifiedImageError:
        return Rejected("not an image (no decoder recognises the content)")
    except UnsupportedPixels as err:
        return Rejected(str(err))
    except Exception as err:  # noqa: BLE001 - any failure on untrusted bytes is bad data, never a crash
        return Rejected(f"truncated or corrupt image data ({type(err).__name__}: {err})")


def _decode(data: bytes, min_size: int, max_pixels: int, storage_size: int) -> DecodedImage | Rejected:
    with _owning_pillow_limit(), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None  # opening reads the header only; its size is checked just below
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            return Rejected(
                f"decompression bomb: {width}x{height} = {width * height} pixels exceeds "
                f"data.max_pixels={max_pixels}"
            )
        # Pillow's own checks while decoding (TIFF tiles, GIF frames) use the same limit
        Image.MAX_IMAGE_PIXELS = max_pixels
        conversions = []
        if getattr(image, "n_frames", 1) > 1:
            conversions.append(f"multi-frame ({image.n_frames} frames): first frame used")
        image.load()
    if min(width, height) < min_size:
        return Rejected(f"too small: {width}x{height}, shorter side below data.min_size={min_size}")
    image = ImageOps.exif_transpose(image)
    rgb = to_rgb(image, conversions)
    rgb = _fit_shorter_side(rgb, storage_size)
    return DecodedImage(np.asarray(rgb, dtype=np.uint8), (width, height), tuple(conversions))


@contextmanager
def _owning_pillow_limit() -> Iterator[None]:
    """Holds the lock on Pillow's MAX_IMAGE_PIXELS, which the body may set; restores its value on exit."""
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def to_rgb(image: Image.Image, conversions: list[str]) -> Image.Image:
    """Any Pillow image -> 8-bit RGB, appending what was done to `conversions`.

    High-bit-depth grayscale is mapped by its white point, never clipped: 16-bit modes ('I;16*') by 65535; 32-bit
    integers ('I', whose file does not say its white point) by 255 when every value is within 0..255 and by 65535
    when within 0..65535 (Pillow reads some 16-bit files as 'I'); 32-bit floats ('F') by 1.0, the float image
    convention, when every value is within [0, 1]. Other values (negative, above 16 bits, floats outside [0, 1],
    NaN) have no known 8-bit mapping and raise UnsupportedPixels rather than being guessed at or stretched.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        white, described = _white_point(mode, array)
        array = np.clip(np.round(array / white * 255.0), 0, 255).astype(np.uint8)
        conversions.append(f"{mode} ({described}) grayscale to 8-bit RGB")
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        conversions.append("palette to RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        conversions.append(f"{mode} alpha composited over white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    conversions.append(f"{mode} to RGB")
    return image.convert("RGB")


def _white_point(mode: str, array: np.ndarray) -> tuple[float, str]:
    """The value that maps to 255 in a high-bit-depth grayscale image, and how it was chosen (see to_rgb)."""
    if mode.startswith("I;16"):
        return 65535.0, "16-bit"
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if mode == "F":
        if np.isfinite(array).all() and 0.0 <= low and high <= 1.0:
            return 1.0, "float in [0, 1]"
        raise UnsupportedPixels(f"float image with values in [{low:g}, {high:g}], not within [0, 1]: no known "
                                "mapping to 8 bits; save it as 8- or 16-bit integers")
    if 0 <= low and high <= 255:
        return 255.0, "32-bit integer, values within 0..255 read as 8-bit"
    if 0 <= low and high <= 65535:
        return 65535.0, "32-bit integer, values within 0..65535 read as 16-bit"
    raise UnsupportedPixels(f"32-bit integer image with values in [{low:g}, {high:g}], outside 0..65535: no known "
                            "mapping to 8 bits; save it as 8- or 16-bit integers")


def _fit_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    shorter = min(width, height)
    if shorter <= size:
        return image
    scale = size / shorter
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new, Image.Resampling.LANCZOS)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) uint8 array (lossless so stored pixels are what metrics see)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
