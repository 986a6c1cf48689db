"""Seeds derived from tuples of integers, so that every random draw is a pure function of what it is for."""

from __future__ import annotations

from enum import IntEnum


class Stream(IntEnum):
    """What a training step's random numbers are for: each stream is seeded from its own key, so two streams never
    share draws (a generator seeded alike would repeat the posterior noise as diffusion noise, for example).

    Negative, so that a stream's keys never equal the non-negative keys of a seed derived without one (the data
    stream's (seed, rank, worker, batch)); not -1, whose hash Python shares with -2.
    """

    GLOBAL = -2  # torch's global generators during a step (the VAE's posterior samples, dropout)
    DIFFUSION = -3  # train_ldm's step generator: posterior sample, noise levels and noise
    CACHE_INDEX = -4  # which cached latents make a train_ldm batch
    HELD_OUT_POSTERIOR = -5  # train_ldm's held-out latents (posterior samples)
    HELD_OUT_NOISE = -6  # the fixed noise of train_ldm's held-out loss


def derived_seed(*keys: int) -> int:
    """A non-negative 31-bit seed for torch generators from integer keys, e.g. (seed, rank, step).

    Python hashes tuples of ints the same in every process (no hash randomisation for ints), so two runs, or a run
    and its resumed continuation, derive the same seed from the same keys.
    """
    return hash(keys) & 0x7FFFFFFF


def stream_seed(stream: Stream, *keys: int) -> int:
    """The seed of `stream`'s generator for `keys`, e.g. (seed, rank, step): independent of every other stream."""
    return derived_seed(*keys, int(stream))
