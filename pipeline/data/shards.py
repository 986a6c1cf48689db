"""Reading the prepared WebDataset shards: an endless, resumable training stream and fixed val images.

Shards are read from prepare's folder or from any URL webdataset opens (a copy of the folder served over
http(s), for example), listed through the folder's index.json (`shard_urls`).

Training stream (per DataLoader worker): shards are shuffled per epoch (the same order on every worker, so
the node/worker split stays disjoint), split by rank (`wds.split_by_node`) then by worker, samples shuffled in a buffer, grouped into batches of raw bytes, and only then
decoded, randomly cropped and flipped. Every random choice comes from seeded generators keyed by
(seed, rank, worker, batch index), so the stream is a pure function of the seed and a resumed run can skip
the batches it already consumed without decoding them: N steps + resume + N steps sees the same batches as
2N uninterrupted steps.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from pipeline.config.parsing import ConfigError
from pipeline.core.errors import MissingInputError
from pipeline.core.seeds import derived_seed

INDEX = "index.json"  # {split: [shard file names]}, written by prepare beside the shards: lists them behind a URL


def shard_identity(urls: list[str]) -> str:
    """Hex SHA-256 naming the shards `urls` (from `shard_urls`) for a partial checkpoint's configuration: local
    shards by name, size and modification time (prepare writes them anew; hashing their bytes at every start would
    cost a read of the dataset), shards behind URLs by their URLs."""
    listing = []
    for url in urls:
        if is_url(url):
            listing.append(url)
        else:
            stat = os.stat(url)
            listing.append([url, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def shard_urls(location: str | Path, split: str) -> list[str]:
    """The sorted shard URLs of one split written by `prepare`: `location` is its shard folder, or the URL of a
    copy of it (http(s)://..., any URL webdataset opens), whose shards are listed by prepare's index.json."""
    if is_url(location):
        base = str(location).rstrip("/")
        try:
            with wds.gopen(f"{base}/{INDEX}") as stream:
                names = json.load(stream)[split]
        except (OSError, ValueError, KeyError) as err:
            raise MissingInputError(f"{base}/{INDEX}: cannot read the '{split}' shard list ({err}); point --shards "
                                    "at a copy of a prepared shard folder (prepare writes index.json)") from err
        return [f"{base}/{name}" for name in sorted(names)]
    urls = sorted(str(p) for p in Path(location).glob(f"{split}-*.tar"))
    if not urls:
        raise MissingInputError(f"{location}: no '{split}-*.tar' shards; run the prepare stage (dvc repro prepare)")
    return urls


def is_url(location: str | Path) -> bool:
    """A URL scheme (http://, s3://, pipe:...) rather than a local path."""
    return isinstance(location, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", location) is not None


def decode_rgb(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def to_model_range(pixels: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(127.5).sub_(1.0)
    return tensor.movedim(-1, -3)


class TrainStream(IterableDataset):
    """Endless batches (B, 3, resolution, resolution) in [-1, 1] of random crops with horizontal flips."""

    def __init__(self, urls: list[str], resolution: int, batch_size: int, seed: int,
                 start_batch: int = 0, shuffle_buffer: int = 64):
        super().__init__()
        self.urls, self.resolution, self.batch_size = list(urls), resolution, batch_size
        self.seed, self.start_batch, self.shuffle_buffer = seed, start_batch, shuffle_buffer

    def __iter__(self):
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        # The DataLoader takes batches from its workers round-robin starting at worker 0, so global batch i
        # comes from worker i % W. A run resumed at batch S therefore lets worker w play the role of worker
        # (w + S) % W of the uninterrupted run: same shards, same random stream, same next batch.
        role = (worker + self.start_batch) % workers
        samples = wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            wds.detshuffle(bufsize=len(self.urls), initial=len(self.urls), seed=self.seed),
            wds.split_by_node,
            lambda shards: itertools.islice(shards, role, None, workers),  # wds.split_by_worker, rotated
            wds.tarfile_to_samples(),
            wds.detshuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, seed=self.seed + 1),
        ).repeat(nepochs=sys.maxsize)
        # Batches span epoch boundaries, so a worker whose shards hold fewer samples than a batch still
        # yields batches (batching inside each epoch would drop every partial batch, and loop forever).
        raw_batches = wds.batched(self.batch_size, collation_fn=list, partial=False)(iter(samples))
        already_served = len(range(role, self.start_batch, workers))
        for index, batch in enumerate(raw_batches):
            if index < already_served:
                continue
            generator = torch.Generator().manual_seed(derived_seed(self.seed, rank, role, index))
            yield torch.stack([self._augment(sample, generator) for sample in batch])

    def _augment(self, sample: dict, generator: torch.Generator) -> torch.Tensor:
        pixels = decode_rgb(sample["png"])
        height, width = pixels.shape[:2]
        size = self.resolution
        if min(height, width) < size:
            raise ConfigError(
                f"resolution: shard sample {sample['__key__']} ({sample.get('__url__', 'shard')}) is {width}x{height}, "
                f"smaller than the {size}px training crop set by this stage's resolution (train_128.resolution, "
                f"train_256.resolution or ldm.resolution); re-run prepare with data.min_size >= {size} (and "
                f"data.storage_size >= {size}), or lower the resolution"
            )
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        crop = pixels[top:top + size, left:left + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop[:, ::-1]
        return to_model_range(crop)


def train_loader(urls: list[str], resolution: int, batch_size: int, seed: int, num_workers: int,
                 start_batch: int = 0) -> DataLoader:
    """A DataLoader over `TrainStream`; iterate it for (B, 3, r, r) batches forever."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if len(urls) < world * max(num_workers, 1):
        raise ConfigError(
            f"{len(urls)} train shards cannot feed {world} process(es) x {max(num_workers, 1)} loader worker(s) "
            "without duplicates; lower the stage's num_workers, or prepare more shards (data.shard_max_samples)"
        )
    stream = TrainStream(urls, resolution, batch_size, seed, start_batch)
    # A private generator: starting an iterator draws a base seed, which must not advance the global RNG
    # (that would make a resumed run's posterior noise differ from an uninterrupted run's).
    return DataLoader(stream, batch_size=None, num_workers=num_workers, generator=torch.Generator(),
                      persistent_workers=num_workers > 0, prefetch_factor=2 if num_workers else None)


def stream_images(urls: list[str], limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) for the samples of `urls` in shard order, at most `limit`, decoded one at a time
    (memory holds one image). Every rank reads every shard (validation and evaluation sets)."""
    every_shard = lambda shards: shards  # each rank reads the whole set
    samples = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=every_shard)
    for sample in itertools.islice(samples, limit):
        meta = json.loads(sample["json"]) if "json" in sample else {}
        yield meta.get("name", sample["__key__"]), decode_rgb(sample["png"])


def load_images(urls: list[str], limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """`stream_images` as a list: for small sets (a test's, `limit` held-out images)."""
    return list(stream_images(urls, limit))


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Central (size, size, 3) crop of an (H, W, 3) image at least `size` on each side."""
    height, width = pixels.shape[:2]
    if min(height, width) < size:
        raise ValueError(f"image {width}x{height} is smaller than the {size}px crop")
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top:top + size, left:left + size]
