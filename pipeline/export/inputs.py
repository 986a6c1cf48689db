"""What the exported models accept as images, turned into one tensor layout: (B, 3, H, W) float32 in [0, 1].

Image files are read with the prepare stage's decoding (pipeline/data/images.py): grayscale, 16-bit, palette, CMYK
and alpha images are converted to 8-bit RGB the same way, and an unreadable file raises an `UnreadableImage`
naming the file and the reason (empty, truncated, not an image, decompression bomb). No file is resized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pipeline.core.errors import UserError
from pipeline.data.images import Rejected, decode_image, to_rgb

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb limit, as data.max_pixels
ImageInput = str | Path | Image.Image | np.ndarray | Tensor


class UnreadableImage(UserError):
    """An image file that cannot be decoded; the message names the file and why."""


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file at its own size."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UnreadableImage(f"{path}: cannot be read ({err.strerror})") from None
    # storage_size: no shorter side reaches it (the pixel limit rejects such images first), so nothing is resized
    decoded = decode_image(data, min_size=1, max_pixels=MAX_PIXELS, storage_size=MAX_PIXELS)
    if isinstance(decoded, Rejected):
        raise UnreadableImage(f"{path}: {decoded.reason}")
    return decoded.pixels


def to_tensor(image: ImageInput) -> Tensor:
    """An image file path, PIL image, (H, W, 3) uint8 array or (B, 3, H, W) / (3, H, W) tensor (uint8, or float
    in [0, 1]) -> (B, 3, H, W) float32 in [0, 1]."""
    if isinstance(image, (str, Path)):
        image = read_image(image)
    elif isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image, []), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W); a copy: arrays may be read-only
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a file path, PIL image, array or tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected a (B, 3, H, W) tensor, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255
    return image.float()


def quantise(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> uint8 (B, 3, H, W) on the CPU, rounded as an 8-bit image file stores it (for the
    exported models' [0, 1] outputs, the same values as pipeline.measures.quality.to_uint8 gives in [-1, 1])."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
