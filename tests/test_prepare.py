"""The prepare stage: every kind of bad input is converted or skipped with its reason, never a crash;
the split is by source image and deterministic."""

import io
import json

import numpy as np
import pytest
from grid_reading import read_grid
from PIL import Image

from pipeline.data.shards import load_images
from pipeline.config.schema import DataConfig
from pipeline.core.grid import BACKGROUND
from pipeline.data.prepare import EmptyDatasetError, prepare


def _save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _photo(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "images"
    for index in range(6):
        _save(root / f"good/photo{index}.png", _photo((80 + 4 * index, 72), index))
    _save(root / "nested/deeper/good.jpg", _photo((90, 70), 99), quality=95)
    (root / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    _photo((80, 80), 7).save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "text.jpg").write_text("this is not an image")
    (root / "notes.txt").write_text("not an image extension")
    _save(root / "cmyk.jpg", _photo((80, 80), 8).convert("CMYK"))
    _save(root / "gray.png", _photo((80, 80), 9).convert("L"))
    gray16 = (np.arange(80 * 80, dtype=np.uint16).reshape(80, 80) * 10)
    _save(root / "gray16.png", Image.fromarray(gray16))
    _save(root / "alpha.png", _photo((80, 80), 10).convert("RGBA"))
    _save(root / "palette.png", _photo((80, 80), 11).convert("P"))
    _save(root / "small.png", _photo((40, 100), 12))
    _save(root / "bomb.png", Image.new("RGB", (400, 300)))
    return root


def _run(tmp_path, cfg):
    out = tmp_path / "out"
    summary = prepare(cfg, out / "shards", out / "manifest.json", out / "sheet.png")
    return summary, json.loads((out / "manifest.json").read_text()), out


def _cfg(root, **overrides):
    base = dict(source="folder", path=str(root), storage_size=96, min_size=64, val_fraction=0.3,
                max_pixels=100_000, seed=3)
    return DataConfig(**{**base, **overrides})


def test_bad_inputs_are_skipped_or_converted_with_reasons(tmp_path, mixed_folder):
    summary, manifest, out = _run(tmp_path, _cfg(mixed_folder))
    reasons = {item["name"]: item["reason"] for item in manifest["skipped"]}
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["truncated.png"].startswith("truncated or corrupt")
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["notes.txt"].startswith("extension '.txt'")
    assert reasons["small.png"].startswith("too small: 40x100")
    assert reasons["bomb.png"].startswith("decompression bomb: 400x300 = 120000 pixels")
    assert len(reasons) == 6
    conversions = {s["name"]: " ".join(s["conversions"]) for s in manifest["sources"]}
    assert "CMYK to RGB" in conversions["cmyk.jpg"]
    assert "L to RGB" in conversions["gray.png"]
    assert "16-bit" in conversions["gray16.png"]
    assert "alpha composited" in conversions["alpha.png"]
    assert "palette" in conversions["palette.png"]
    assert summary["train_images"] + summary["val_images"] == 12
    # the contact sheet: a labelled row of up to 8 crops (128 px) per split, blank where a split has fewer
    counts = [summary["train_images"], summary["val_images"]]
    sheet = read_grid(out / "sheet.png", 128, rows=2, columns=min(8, max(counts)))
    assert sheet.row_label_inked(0) and sheet.row_label_inked(1)
    for row, count in enumerate(counts):
        for column in range(sheet.columns):
            assert (sheet.tile_at(row, column) == BACKGROUND).all() == (column >= count)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path, mixed_folder):
    _, manifest, out = _run(tmp_path, _cfg(mixed_folder))
    split = next(s["split"] for s in manifest["sources"] if s["name"] == "gray16.png")
    images = dict(load_images(manifest["shards"][split]))
    gray = images["gray16.png"][..., 0].astype(int)
    assert gray.max() == round(80 * 80 * 10 / 65535 * 255) and len(np.unique(gray)) > 200


def test_split_is_by_source_group_and_deterministic(tmp_path, mixed_folder):
    _, first, out = _run(tmp_path, _cfg(mixed_folder))
    train = {s["group"] for s in first["sources"] if s["split"] == "train"}
    val = {s["group"] for s in first["sources"] if s["split"] == "val"}
    assert train and val and not train & val
    shards_first = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    _, second, out = _run(tmp_path, _cfg(mixed_folder))
    assert first == second
    assert shards_first == {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    _, reseeded, _ = _run(tmp_path, _cfg(mixed_folder, seed=4))
    assert {s["group"] for s in reseeded["sources"] if s["split"] == "val"} != val


def test_stored_images_keep_aspect_with_bounded_shorter_side(tmp_path, mixed_folder):
    _, manifest, _ = _run(tmp_path, _cfg(mixed_folder, storage_size=64))
    for source in manifest["sources"]:
        width, height = source["stored_size"]
        ow, oh = source["original_size"]
        assert min(width, height) == 64
        assert abs(width / height - ow / oh) < 0.03


def test_empty_source_is_a_clear_error_and_writes_nothing(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    with pytest.raises(EmptyDatasetError, match=r"data.source='folder'.*no usable image"):
        _run(tmp_path, _cfg(folder))
    assert not (tmp_path / "out").exists()


def test_missing_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        _run(tmp_path, _cfg(tmp_path / "nowhere"))


def test_existing_shards_as_source(tmp_path, mixed_folder):
    _, manifest, out = _run(tmp_path, _cfg(mixed_folder))
    pattern = str(out / "shards" / "train-{000000..000003}.tar")
    summary, _, _ = _run(tmp_path / "second", _cfg(mixed_folder, source="shards", path=pattern))
    assert summary["train_images"] + summary["val_images"] == manifest["counts"]["train_images"]
