"""Seeds derived from tuples of integers, so that every random draw is a pure function of what it is for."""

from __future__ import annotations


def derived_seed(*keys: int) -> int:
    """A non-negative 31-bit seed for torch generators from integer keys, e.g. (seed, rank, step).

    Python hashes tuples of ints the same in every process (no hash randomisation for ints), so two runs, or a run
    and its resumed continuation, derive the same seed from the same keys.
    """
    return hash(keys) & 0x7FFFFFFF
