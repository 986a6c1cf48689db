"""Listing sources: folders with symbolic-link loops, broken links and FIFOs are listed once with every entry
recorded; `shards` sources expand globs, name a missing or corrupt shard, and keep prepare's split groups; the
training stream names the resolution when stored images are smaller than its crop."""

import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.config.parsing import ConfigError
from pipeline.config.schema import DataConfig
from pipeline.core.errors import MissingInputError, UserError
from pipeline.data.prepare import prepare
from pipeline.data.shards import TrainStream, shard_urls
from pipeline.data.sources import SourceFile, Unreadable, UnreadableShard, folder_sources, shard_sources


def _png(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _cfg(**overrides) -> DataConfig:
    return DataConfig(**{"storage_size": 40, "min_size": 32, "val_fraction": 0.5, "seed": 0, **overrides})


def _prepare(cfg: DataConfig, out) -> dict:
    prepare(cfg, out / "shards", out / "manifest.json", out / "sheet.png")
    return json.loads((out / "manifest.json").read_text())


def test_symlink_loops_broken_links_and_fifos_are_recorded_not_followed_or_dropped(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(_png((40, 40), 0))
    (root / "sub" / "b.png").write_bytes(_png((40, 40), 1))
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "broken.png").symlink_to(root / "missing.png")
    os.mkfifo(root / "pipe.png")
    listed = {source.name: source for source in folder_sources(root)}
    assert list(listed) == ["a.png", "broken.png", "pipe.png", "sub/b.png", "sub/loop"]
    assert isinstance(listed["a.png"], SourceFile) and isinstance(listed["sub/b.png"], SourceFile)
    reasons = {name: source.reason for name, source in listed.items() if isinstance(source, Unreadable)}
    assert reasons["broken.png"].startswith("broken symbolic link")
    assert reasons["pipe.png"].startswith("not a regular file or folder")
    assert reasons["sub/loop"] == (f"folder {root} already listed through another path (a symbolic-link loop, or a "
                                   "second link to it): not walked again")
    # prepare records the three, and stores each image once
    manifest = _prepare(_cfg(source="folder", path=str(root)), tmp_path / "out")
    assert sorted(item["name"] for item in manifest["skipped"]) == ["broken.png", "pipe.png", "sub/loop"]
    assert sorted(item["name"] for item in manifest["sources"]) == ["a.png", "sub/b.png"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Shards prepared from a folder of 8 images."""
    root = tmp_path_factory.mktemp("source")
    for index in range(8):
        (root / f"{index}.png").write_bytes(_png((40, 40), index))
    out = root / "out"
    return _prepare(_cfg(source="folder", path=str(root)), out), out / "shards"


def test_a_glob_of_local_shards_is_expanded(prepared, tmp_path):
    manifest, shards = prepared
    again = _prepare(_cfg(source="shards", path=str(shards / "train-*.tar")), tmp_path)
    assert sum(again["counts"][key] for key in ("train_images", "val_images")) == manifest["counts"]["train_images"]


def test_a_missing_shard_names_data_path_and_the_file(prepared):
    _, shards = prepared
    pattern = str(shards / "train-{000000..000009}.tar")  # prepare wrote 4 train shards
    with pytest.raises(MissingInputError, match=r"data.path='.*': no shard file at '.*train-000004.tar'"):
        list(shard_sources(pattern))
    with pytest.raises(MissingInputError, match="no shard file at '.*nothing-\\*.tar'"):
        list(shard_sources(str(shards / "nothing-*.tar")))


def test_a_corrupt_shard_is_a_user_error_naming_data_path_and_the_file(tmp_path):
    bad = tmp_path / "bad-000000.tar"
    bad.write_bytes(b"not a tar file" * 100)
    with pytest.raises(UnreadableShard) as err:
        list(shard_sources(str(tmp_path / "bad-*.tar")))
    assert str(err.value) == (f"data.path='{tmp_path}/bad-*.tar': shard {bad} cannot be read (ReadError: invalid "
                              "header); replace or remove it, or narrow data.path")
    # prepare fails with it (a UserError: the stage prints the one line and exits 2) and leaves nothing behind
    with pytest.raises(UserError, match="cannot be read"):
        _prepare(_cfg(source="shards", path=str(bad)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_re_preparing_shards_keeps_the_stored_split_groups(tmp_path):
    """Pairs of views share a group in the sample json prepare writes: they must land in one split again."""
    shard = tmp_path / "pairs-000000.tar"
    with wds.TarWriter(str(shard)) as writer:
        for index in range(12):
            group = f"pair{index // 2}"
            writer.write({"__key__": f"{index:04d}", "png": _png((40, 40), index),
                          "json": json.dumps({"name": f"{group}/{index % 2}.png", "group": group}).encode()})
    manifest = _prepare(_cfg(source="shards", path=str(shard)), tmp_path / "out")
    assert {item["group"] for item in manifest["sources"]} == {f"pair{index}" for index in range(6)}
    splits: dict[str, set[str]] = {}
    for item in manifest["sources"]:
        splits.setdefault(item["group"], set()).add(item["split"])
    assert all(len(split) == 1 for split in splits.values()), splits
    assert {next(iter(split)) for split in splits.values()} == {"train", "val"}


def test_images_smaller_than_the_training_crop_name_the_resolution_and_size(prepared):
    _, shards = prepared
    stream = TrainStream(shard_urls(shards, "train"), resolution=64, batch_size=1, seed=0)
    with pytest.raises(ConfigError, match=r"resolution: shard sample \w+ .* is 40x40, smaller than the 64px") as err:
        next(iter(stream))
    assert isinstance(err.value, UserError) and "ldm.resolution" in str(err.value)
