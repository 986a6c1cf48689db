"""Listed sources -> shard-ready samples, in parallel worker processes, results in listing order.

A worker reads one file, hashes it, decodes it (pipeline/data/images.py) and encodes the stored PNG, so the main
process only deduplicates and writes. Results come back in the order the sources were listed whatever the number
of workers, and at most `IN_FLIGHT_PER_WORKER` tasks per worker are outstanding at a time, so memory is bounded
by the images in flight, never by the size of the dataset (a plain `Pool.imap` would read the whole listing
ahead and queue every finished result while the writer catches up).

A worker that dies (a crash inside an image library, or killed for memory) breaks the pool and fails every task
not yet finished; those are then examined again one at a time, each in a fresh process, so only a source that
kills its own worker is lost, and it is skipped with the reason like any other bad file.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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
    """`examine` over `sources`, in their order, on `workers` processes (1: in this process, where a decoder that
    kills its process takes the caller with it)."""
    if workers == 1:
        yield from (examine(source, limits) for source in sources)
        return
    pending: deque[tuple[SourceFile | Unreadable, Future | Stored | Skipped]] = deque()  # in listing order
    pool = _fork_pool(workers)
    try:
        for source in sources:
            pending.append((source, examine(source, limits) if isinstance(source, Unreadable)
                            else pool.submit(examine, source, limits)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                pool = _settle_oldest(pending, limits, pool, workers)
                yield pending.popleft()[1]
        while pending:
            pool = _settle_oldest(pending, limits, pool, workers)
            yield pending.popleft()[1]
    finally:
        pool.shutdown(cancel_futures=True)


def _settle_oldest(pending: deque, limits: Limits, pool: ProcessPoolExecutor, workers: int) -> ProcessPoolExecutor:
    """Wait until pending[0] holds its result; returns the pool to go on with. If a worker died, the pool is broken
    and every unfinished task failed with it: those are redone one at a time, and a new pool goes on."""
    source, outcome = pending[0]
    if not isinstance(outcome, Future):
        return pool
    try:
        pending[0] = (source, outcome.result())
        return pool
    except BrokenProcessPool:
        pool.shutdown()
        for index, (queued, queued_outcome) in enumerate(pending):
            if isinstance(queued_outcome, Future) and isinstance(queued_outcome.exception(), BrokenProcessPool):
                pending[index] = (queued, _examine_alone(queued, limits))
        return _fork_pool(workers)


def _examine_alone(source: SourceFile, limits: Limits) -> Stored | Skipped:
    """`examine` in a process of its own; a source that kills that process too is skipped."""
    with _fork_pool(1) as pool:
        try:
            return pool.submit(examine, source, limits).result()
        except BrokenProcessPool:
            return Skipped(source.name, "decoder crashed: the process decoding this file died (a crash inside an "
                                        "image library, or killed for memory); remove or re-encode the file")


def _fork_pool(workers: int) -> ProcessPoolExecutor:
    # fork: workers start in milliseconds and share the parent's imported modules.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
