"""Paired differences, their seed-to-seed noise, and the verdict rule.

A claim says arm F (the paper's favoured recipe) beats arm O on a measure. Seed s of F is paired with seed s of
O (same data order and step noise; the initial weights differ with the architecture anyway), giving per-seed
advantages a_s = F_s - O_s when higher is better and O_s - F_s when lower is better, so a positive advantage
always points the paper's way. With n seeds, mean a = mean(a_s) and noise = std(a_s) (ddof 1):

    agrees        if mean a >  k * noise
    disagrees     if mean a < -k * noise
    inconclusive  otherwise, and always with fewer than 2 seeds (no noise estimate)

k is the budget's `noise_factor` (2 by default). The noise is the spread of the difference itself, not of each
arm, so what the two arms share (the data, the seed's batches) cancels. With 2 seeds the noise is estimated from
one degree of freedom: an "agrees" at 2 seeds means the two seeds agree with each other much more closely than
the effect's size, no more.

A claim with several rows (PSNR and SSIM, or five kernel widths) is decided by its headline rows:
agrees if at least one agrees and none disagrees, disagrees if at least one disagrees and none agrees, else
inconclusive (nothing decided, or the rows contradict each other). A claim about every row ("in all tested
cases") agrees only when every headline row agrees, and disagrees when any one does (a counter-example).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"


@dataclass(frozen=True)
class Paired:
    """Per-seed advantages of the favoured arm (positive: the paper's way), their mean and seed-to-seed std."""

    advantages: tuple[float, ...]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.advantages) if self.advantages else None

    @property
    def noise(self) -> float | None:
        return statistics.stdev(self.advantages) if len(self.advantages) >= 2 else None


def paired(favoured: Mapping[int, float], other: Mapping[int, float], higher_is_better: bool) -> Paired:
    """The advantages at every seed both arms measured (finite values only)."""
    seeds = sorted(seed for seed in set(favoured) & set(other)
                   if math.isfinite(favoured[seed]) and math.isfinite(other[seed]))
    sign = 1.0 if higher_is_better else -1.0
    return Paired(tuple(sign * (favoured[s] - other[s]) for s in seeds))


def verdict(result: Paired, noise_factor: float) -> str:
    if result.noise is None:
        return INCONCLUSIVE
    if result.mean > noise_factor * result.noise:
        return AGREES
    if result.mean < -noise_factor * result.noise:
        return DISAGREES
    return INCONCLUSIVE


def interval_verdict(low: float, high: float) -> str:
    """Verdict on an advantage known only as a range [low, high] (e.g. from the fastest and slowest timed passes):
    agrees if the whole range is positive, disagrees if it is all negative, else inconclusive."""
    if low > 0:
        return AGREES
    if high < 0:
        return DISAGREES
    return INCONCLUSIVE


def combine(verdicts: Iterable[str], every_row: bool = False) -> str:
    """A claim's verdict from its headline rows' verdicts; `every_row`: the claim holds for each row, not overall."""
    found = set(verdicts)
    if every_row:
        if DISAGREES in found:
            return DISAGREES
        return AGREES if found == {AGREES} else INCONCLUSIVE
    if AGREES in found and DISAGREES not in found:
        return AGREES
    if DISAGREES in found and AGREES not in found:
        return DISAGREES
    return INCONCLUSIVE
