"""Decoding untrusted images: any exception from Pillow is a recorded skip, data.max_pixels is the one pixel limit
whatever Pillow's own, float and 32-bit grayscale map to 8 bits only where the mapping is known, and a decoder
that kills its worker process costs only that file."""

import io
import json
import os
import struct

import numpy as np
from PIL import Image

from pipeline.config.schema import DataConfig
from pipeline.data import decoding
from pipeline.data.decoding import Limits, Skipped, Stored, examine_all
from pipeline.data.images import DecodedImage, Rejected, decode_image
from pipeline.data.prepare import prepare
from pipeline.data.sources import SourceFile


def _png(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def tiff_with_a_page_without_dimensions() -> bytes:
    """A valid 8x8 TIFF whose first IFD links to a second page with no ImageWidth/ImageLength tags: Pillow raises
    TypeError('Missing dimensions') when counting frames (`n_frames`), outside the exceptions it documents."""
    data = bytearray(_tiff(Image.new("RGB", (8, 8), (200, 10, 10))))
    assert data[:4] == b"II*\x00"  # little-endian TIFF; the first IFD's offset follows
    first_ifd = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, first_ifd)[0]
    struct.pack_into("<I", data, first_ifd + 2 + 12 * entries, len(data))  # "next IFD" -> the page appended below
    data += struct.pack("<H", 1) + struct.pack("<HHII", 259, 3, 1, 1) + struct.pack("<I", 0)  # Compression only
    return bytes(data)


def _decode(data: bytes, max_pixels: int = 10**6) -> DecodedImage | Rejected:
    return decode_image(data, min_size=1, max_pixels=max_pixels, storage_size=512)


def test_any_pillow_exception_on_a_corrupt_file_is_a_rejection_naming_its_type():
    result = _decode(tiff_with_a_page_without_dimensions())
    assert isinstance(result, Rejected)
    assert result.reason.startswith("truncated or corrupt image data (TypeError: Missing dimensions")


def test_a_corrupt_tiff_is_skipped_by_prepare_with_its_name_and_reason(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        (folder / f"good{index}.png").write_bytes(_png((40, 40), index))
    (folder / "pages.tif").write_bytes(tiff_with_a_page_without_dimensions())
    cfg = DataConfig(source="folder", path=str(folder), storage_size=40, min_size=32, val_fraction=0.4)
    summary = prepare(cfg, tmp_path / "shards", tmp_path / "manifest.json", tmp_path / "sheet.png")
    skipped = json.loads((tmp_path / "manifest.json").read_text())["skipped"]
    assert [item["name"] for item in skipped] == ["pages.tif"]
    assert "TypeError" in skipped[0]["reason"]
    assert summary["train_images"] + summary["val_images"] == 3


def test_data_max_pixels_is_the_one_limit_whatever_pillows_own(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would refuse 100x100 (> 2 x its limit)
    image = _png((100, 100), 0)
    decoded = _decode(image, max_pixels=20_000)
    assert isinstance(decoded, DecodedImage) and decoded.pixels.shape == (100, 100, 3)
    rejected = _decode(image, max_pixels=5_000)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "decompression bomb: 100x100 = 10000 pixels exceeds data.max_pixels=5000"
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's limit is restored for everyone else


def test_float_images_in_zero_one_map_to_eight_bits_and_other_ranges_are_refused():
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    decoded = _decode(_tiff(Image.fromarray(ramp, mode="F")))
    assert isinstance(decoded, DecodedImage)
    gray = decoded.pixels[..., 0].astype(int)
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) == 256
    assert "F (float in [0, 1])" in decoded.conversions[0]
    rejected = _decode(_tiff(Image.fromarray(ramp * 1000 - 5, mode="F")))
    assert isinstance(rejected, Rejected)
    assert rejected.reason.startswith("float image with values in [-5, 995], not within [0, 1]")


def test_32_bit_integer_images_map_by_their_range_or_are_refused():
    eight = _decode(_tiff(Image.fromarray(np.full((16, 16), 200, dtype=np.int32))))
    assert isinstance(eight, DecodedImage) and (eight.pixels == 200).all()
    sixteen = _decode(_tiff(Image.fromarray(np.full((16, 16), 65535, dtype=np.int32))))
    assert isinstance(sixteen, DecodedImage) and (sixteen.pixels == 255).all()
    negative = _decode(_tiff(Image.fromarray(np.full((16, 16), -1, dtype=np.int32))))
    assert isinstance(negative, Rejected) and "outside 0..65535" in negative.reason


def _exit_on_crash_marker(data: bytes, **limits) -> DecodedImage | Rejected:
    """decode_image, except that it kills its process on the bytes b"crash" (a segfault in an image library)."""
    if data == b"crash":
        os._exit(139)
    return decode_image(data, **limits)


def test_a_decoder_that_kills_its_worker_costs_only_that_file(monkeypatch):
    # fork: the workers inherit the patched module, so their decoder dies on the marker
    monkeypatch.setattr(decoding, "decode_image", _exit_on_crash_marker)
    names = [f"{index}.png" for index in range(6)]
    sources = [SourceFile(name, name, content=_png((40, 40), index)) for index, name in enumerate(names)]
    sources.insert(3, SourceFile("crash.png", "crash.png", content=b"crash"))
    results = list(examine_all(sources, Limits(min_size=32, max_pixels=10**6, storage_size=40), workers=2))
    assert [result.name for result in results] == [source.name for source in sources]  # listing order
    assert all(isinstance(result, Stored) for result in results if result.name != "crash.png")
    crashed = results[3]
    assert isinstance(crashed, Skipped) and crashed.reason.startswith("decoder crashed: the process decoding this")


def test_a_worker_killed_once_is_recovered_without_losing_files(monkeypatch, tmp_path):
    """A worker killed by memory pressure rather than by its file: every file decodes when retried alone."""
    first_crash = tmp_path / "crashed-once"

    def crash_first_time(data: bytes, **limits) -> DecodedImage | Rejected:
        if not first_crash.exists():
            first_crash.touch()
            os._exit(137)
        return decode_image(data, **limits)

    monkeypatch.setattr(decoding, "decode_image", crash_first_time)
    sources = [SourceFile(f"{index}.png", f"{index}.png", content=_png((40, 40), index)) for index in range(4)]
    results = list(examine_all(sources, Limits(min_size=32, max_pixels=10**6, storage_size=40), workers=2))
    assert [result.name for result in results] == [source.name for source in sources]
    assert all(isinstance(result, Stored) for result in results)

