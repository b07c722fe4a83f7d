"""Is a difference between two methods real? Paired differences over seeds, a 95% t-interval, a verdict.

Two methods trained with the same seed share the data order, the validation split and the student's
initial weights, so their accuracies are paired: the seed-to-seed swing common to both cancels in the
difference. The verdict is "better" when the whole interval lies above 0, "worse" when below, and
"within noise" otherwise; with one seed there is no interval and no verdict.

Accuracies move in steps of one example (100 / images points), so a few seeds can give identical
differences and a sample std of 0: a zero-width interval that would call one test image "better".
`resolution` floors the std of the differences at that step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """a - b over the seeds both have: mean difference, its 95% t-interval, the seeds used, a verdict."""

    a: str
    b: str
    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "one seed: no verdict"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"

    def sentence(self, unit: str = " points") -> str:
        """"TAS - OFA = +1.20 points (95% CI +0.30 to +2.10, 5 seeds): better"."""
        if self.n < 2:
            return f"{self.a} - {self.b} = {self.mean:+.2f}{unit} (1 seed: no interval, no verdict)"
        return (f"{self.a} - {self.b} = {self.mean:+.2f}{unit} ({CONFIDENCE:.0%} CI {self.low:+.2f} to "
                f"{self.high:+.2f}, {self.n} seeds): {self.verdict}")


def paired(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("a", "b"), *,
           resolution: float = 0.0) -> Comparison:
    """Paired comparison of two equally long sequences (one value per seed, in the same seed order); the
    std of the differences is at least `resolution` (the metric's step, e.g. one test image)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need the same, non-zero number of seeds, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return Comparison(*names, mean, math.nan, math.nan, n)
    sd = max(math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)), resolution)
    half = scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return Comparison(*names, mean, mean - half, mean + half, n)
