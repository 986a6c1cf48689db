"""Decoding one source image into 8-bit RGB, or a precise reason why it cannot be used.

Every kind of awkward input has a defined outcome: grayscale, CMYK, palette, alpha, 16-bit and multi-frame
images are converted (and the conversion is recorded); empty, truncated, non-image, too-small and
decompression-bomb inputs are rejected with a reason. Nothing raises for bad data.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class DecodedImage:
    """An RGB uint8 image (H, W, 3) and what was done to make it so."""

    pixels: np.ndarray
    original_size: tuple[int, int]  # (width, height) as stored in the file
    conversions: tuple[str, ...]


@dataclass(frozen=True)
class Rejected:
    reason: str


def decode_image(data: bytes, *, min_size: int, max_pixels: int, storage_size: int) -> DecodedImage | Rejected:
    """Decode image bytes to RGB uint8 with the shorter side at most `storage_size` (Lanczos downscaling).

    Rejects images whose shorter side is below `min_size` (the largest training crop) and images with more
    than `max_pixels` pixels before any pixel data is decoded.
    """
    if not data:
        return Rejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return Rejected(
                    f"decompression bomb: {width}x{height} = {width * height} pixels exceeds "
                    f"data.max_pixels={max_pixels}"
                )
            conversions = []
            if getattr(image, "n_frames", 1) > 1:
                conversions.append(f"multi-frame ({image.n_frames} frames): first frame used")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Rejected(f"decompression bomb: {err}")
    except UnidentifiedImageError:
        return Rejected("not an image (no decoder recognises the content)")
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return Rejected(f"truncated or corrupt image data: {err}")

    if min(width, height) < min_size:
        return Rejected(f"too small: {width}x{height}, shorter side below data.min_size={min_size}")
    image = ImageOps.exif_transpose(image)
    rgb = to_rgb(image, conversions)
    rgb = _fit_shorter_side(rgb, storage_size)
    return DecodedImage(np.asarray(rgb, dtype=np.uint8), (width, height), tuple(conversions))


def to_rgb(image: Image.Image, conversions: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert() clips >255 instead of rescaling; map the full range to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(np.round(array / scale * 255.0), 0, 255).astype(np.uint8)
        conversions.append(f"{mode} ({'16-bit' if scale > 255 else 'integer'}) grayscale to 8-bit RGB")
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
