"""Listed sources -> shard-ready samples, in parallel worker processes, results in listing order.

A worker reads one file, hashes it, decodes it (pipeline/data/images.py) and encodes the stored PNG, so the main
process only deduplicates and writes. Results come back in the order the sources were listed whatever the number
of workers, and at most `IN_FLIGHT_PER_WORKER` tasks per worker are outstanding at a time, so memory is bounded
by the images in flight, never by the size of the dataset (a plain `Pool.imap` would read the whole listing
ahead and queue every finished result while the writer catches up).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.data.images import Rejected, decode_image, encode_png
from pipeline.data.sources import SourceFile, Unreadable

# results come back in order, so a slow image holds back the ones behind it: a deep queue keeps both workers busy
# meanwhile (4 per worker left them idle 4% of the time on 2 cores); 16 PNGs per worker are a few tens of MB
IN_FLIGHT_PER_WORKER = 16


@dataclass(frozen=True)
class Limits:
    """What decode_image needs from data params."""

    min_size: int
    max_pixels: int
    storage_size: int


@dataclass(frozen=True)
class Stored:
    """A usable source image: the PNG stored in the shard and what the manifest records about it."""

    name: str
    group: str
    sha256: str
    png: bytes
    original_size: tuple[int, int]  # (width, height) as stored in the source file
    stored_size: tuple[int, int]  # (width, height) in the shard
    conversions: tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def examine(source: SourceFile | Unreadable, limits: Limits) -> Stored | Skipped:
    """Read, hash, decode and PNG-encode one source; never raises for bad data."""
    if isinstance(source, Unreadable):
        return Skipped(source.name, source.reason)
    try:
        data = source.read()
    except OSError as err:
        return Skipped(source.name, f"unreadable: {err}")
    result = decode_image(data, min_size=limits.min_size, max_pixels=limits.max_pixels,
                          storage_size=limits.storage_size)
    if isinstance(result, Rejected):
        return Skipped(source.name, result.reason)
    height, width = result.pixels.shape[:2]
    return Stored(source.name, source.group, hashlib.sha256(data).hexdigest(), encode_png(result.pixels),
                  result.original_size, (width, height), result.conversions)


def default_workers() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0))


def examine_all(sources: Iterable[SourceFile | Unreadable], limits: Limits, workers: int) -> Iterator[Stored | Skipped]:
    """`examine` over `sources`, in their order, on `workers` processes (1: in this process)."""
    if workers == 1:
        yield from (examine(source, limits) for source in sources)
        return
    # fork: workers start in milliseconds and share the parent's imported modules.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for source in sources:
            pending.append(_Done(examine(source, limits)) if isinstance(source, Unreadable)
                           else pool.apply_async(examine, (source, limits)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@dataclass(frozen=True)
class _Done:
    """A result known without a worker, queued in order beside the pool's AsyncResults."""

    result: Stored | Skipped

    def get(self) -> Stored | Skipped:
        return self.result
