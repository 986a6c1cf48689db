"""The training stream reads the shards at 128 and 256 px with 2 workers, without duplicates, and resumes
exactly."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config.parsing import ConfigError
from pipeline.data.shards import TrainStream, load_images, shard_urls, train_loader
from pipeline.config.schema import DataConfig
from pipeline.data.prepare import prepare


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    for index in range(12):
        pixels = rng.integers(0, 256, (300, 320 + 8 * index, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{index:02d}.png")
    cfg = DataConfig(source="folder", path=str(root), storage_size=300, min_size=256, val_fraction=0.25)
    prepare(cfg, root / "shards", root / "manifest.json", root / "sheet.png")
    return root / "shards"


@pytest.mark.parametrize("resolution", [128, 256])
def test_batches_have_the_requested_crop_with_two_workers(shards, resolution):
    loader = train_loader(shard_urls(shards, "train"), resolution, batch_size=2, seed=0, num_workers=2)
    batches = list(itertools.islice(iter(loader), 4))
    for batch in batches:
        assert batch.shape == (2, 3, resolution, resolution)
        assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1
    assert not torch.equal(batches[0], batches[1])  # two workers serve different shards


def test_stream_is_a_pure_function_of_the_seed_and_resumes_exactly(shards):
    urls = shard_urls(shards, "train")
    full = list(itertools.islice(iter(TrainStream(urls, 128, 2, seed=5)), 7))
    again = list(itertools.islice(iter(TrainStream(urls, 128, 2, seed=5)), 7))
    resumed = list(itertools.islice(iter(TrainStream(urls, 128, 2, seed=5, start_batch=4)), 3))
    other = list(itertools.islice(iter(TrainStream(urls, 128, 2, seed=6)), 7))
    assert all(torch.equal(a, b) for a, b in zip(full, again))
    assert all(torch.equal(a, b) for a, b in zip(full[4:], resumed))
    assert not all(torch.equal(a, b) for a, b in zip(full, other))


def test_resume_with_workers_continues_the_same_sequence(shards):
    urls = shard_urls(shards, "train")
    full = list(itertools.islice(iter(train_loader(urls, 128, 2, seed=1, num_workers=2)), 5))
    resumed = list(itertools.islice(iter(train_loader(urls, 128, 2, seed=1, num_workers=2, start_batch=3)), 2))
    assert torch.equal(full[3], resumed[0]) and torch.equal(full[4], resumed[1])


def test_batches_larger_than_a_workers_share_span_epochs(shards):
    urls = shard_urls(shards, "train")
    per_shard = len(load_images(urls[:1]))
    batches = list(itertools.islice(iter(TrainStream(urls[:1], 128, per_shard + 3, seed=0)), 2))
    assert [len(batch) for batch in batches] == [per_shard + 3] * 2


def test_too_many_workers_for_the_shards_is_a_clear_error(shards):
    with pytest.raises(ConfigError, match="1 train shards cannot feed 1 process.* x 2 loader worker.*num_workers"):
        train_loader(shard_urls(shards, "train")[:1], 128, 2, seed=0, num_workers=2)


def test_val_images_load_in_a_fixed_order(shards):
    first = load_images(shard_urls(shards, "val"))
    second = load_images(shard_urls(shards, "val"))
    assert [n for n, _ in first] == [n for n, _ in second] and len(first) == 3
    assert all(p.shape[0] == 300 for _, p in first)


def test_missing_shards_name_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the prepare stage"):
        shard_urls(tmp_path, "train")
