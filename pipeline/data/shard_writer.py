"""Writing one split's WebDataset shards as samples arrive, each shard closed as soon as it is full.

Samples go round-robin to `MIN_SHARDS` slots, and each slot rolls over to a new tar file every `max_samples`
samples: a split of n samples gets max(MIN_SHARDS, ceil(n / max_samples)) shards (rounded up to whole rounds;
only n if n is smaller), numbered without gaps (slot k's j-th file is shard j * MIN_SHARDS + k), so that 2
DataLoader workers x 2 ranks each get a shard of their own even from a small dataset. Only MIN_SHARDS files are
open at a time, whatever the number of samples.
"""

from __future__ import annotations

from pathlib import Path

import webdataset as wds

MIN_SHARDS = 4  # so 2 DataLoader workers x 2 ranks each get a shard of their own


class SplitShardWriter:
    """`write(sample)` appends a WebDataset sample dict to `folder`/`split`-NNNNNN.tar shards."""

    def __init__(self, folder: Path, split: str, max_samples: int):
        self.folder, self.split, self.max_samples = Path(folder), split, max_samples
        self.slots: list[wds.TarWriter | None] = [None] * MIN_SHARDS
        self.counts = [0] * MIN_SHARDS  # samples in each slot's open file
        self.files = [0] * MIN_SHARDS  # files each slot has opened
        self.written = 0
        self.names: list[str] = []

    def write(self, sample: dict) -> None:
        slot = self.written % MIN_SHARDS
        if self.slots[slot] is None or self.counts[slot] == self.max_samples:
            self._roll(slot)
        self.slots[slot].write(sample)
        self.counts[slot] += 1
        self.written += 1

    def _roll(self, slot: int) -> None:
        if self.slots[slot] is not None:
            self.slots[slot].close()
        name = f"{self.split}-{self.files[slot] * MIN_SHARDS + slot:06d}.tar"
        self.slots[slot] = wds.TarWriter(str(self.folder / name), mtime=0)  # mtime 0: byte-identical reruns
        self.files[slot] += 1
        self.counts[slot] = 0
        self.names.append(name)

    def close(self) -> list[str]:
        """Close the open shards; returns every shard's file name, sorted."""
        for writer in self.slots:
            if writer is not None:
                writer.close()
        self.slots = [None] * MIN_SHARDS
        return sorted(self.names)
