"""The spread behind every number that judges a claim: intervals over seeds, queries and test points, paired tests.

Pure functions of arrays: the claims report, ``advreid compare`` and the chapter reports call them; nothing here
reads params or logs. Each interval is two-sided at ``level`` (default 95%).

- over seeds: Student-t interval of the mean of a few independent runs;
- over queries (CMC, mAP) and test points (accuracy): percentile bootstrap of the mean, resampling units;
- certified accuracy: Clopper-Pearson exact binomial interval;
- a paired comparison on the same test points: McNemar's exact test on the discordant pairs and a paired bootstrap
  interval of the difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
Verdict = Literal["reproduced", "not reproduced", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided interval; ``n`` is the number of units (seeds, queries, points)."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    method: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (False when the interval is undefined)."""
        return not math.isnan(self.low) and (value < self.low or value > self.high)


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample std (ddof = 1) and the Student-t interval of the mean over independent seeds."""

    mean: float
    std: float
    interval: Interval
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "mean": self.mean,
            "std": self.std,
            "low": self.interval.low,
            "high": self.interval.high,
            "n": self.interval.n,
            "values": list(self.values),
        }


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: ``only_a`` points correct for A alone, ``only_b`` for B alone; two-sided p-value."""

    only_a: int
    only_b: int
    pvalue: float


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")


def _as_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-d array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def over_seeds(values, level: float = LEVEL) -> SeedSummary:
    """Mean ± std over seeds and the t-interval of the mean; one seed gives an undefined (NaN) interval."""
    _check_level(level)
    x = _as_vector(values, "values over seeds")
    mean = float(x.mean())
    if x.size < 2:
        nan = float("nan")
        return SeedSummary(mean, nan, Interval(mean, nan, nan, 1, level, "t"), tuple(x.tolist()))
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return SeedSummary(mean, std, Interval(mean, mean - half, mean + half, x.size, level, "t"), tuple(x.tolist()))


def bootstrap_mean(values, *, resamples: int = 2000, seed: int = 0, level: float = LEVEL) -> Interval:
    """Percentile-bootstrap interval of the mean of per-unit values (per-query AP or rank-1 hits, per-point 0/1)."""
    _check_level(level)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x = _as_vector(values, "per-unit values")
    estimate = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):  # nothing to resample: the interval is the point
        return Interval(estimate, estimate, estimate, x.size, level, "bootstrap")
    result = sps.bootstrap(
        (x,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), x.size, level, "bootstrap")


def paired_bootstrap_difference(a, b, *, resamples: int = 2000, seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval of mean(a) − mean(b) for values measured on the same units (resampling the units jointly)."""
    xa, xb = _as_vector(a, "a"), _as_vector(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired values must have the same length, got {xa.size} and {xb.size}")
    interval = bootstrap_mean(xa - xb, resamples=resamples, seed=seed, level=level)
    return Interval(interval.estimate, interval.low, interval.high, interval.n, level, "paired bootstrap")


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """Exact binomial (Clopper–Pearson) interval of a proportion, e.g. certified accuracy over test points."""
    _check_level(level)
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    ci = sps.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return Interval(successes / trials, float(ci.low), float(ci.high), int(trials), level, "clopper-pearson")


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """McNemar's exact test of two classifiers on the same points (booleans: correct / certified-correct)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes must be 1-d of the same length, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    discordant = only_a + only_b
    pvalue = 1.0 if discordant == 0 else float(sps.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, pvalue)


def verdict(difference: Interval, *, at_least: float = 0.0) -> Verdict:
    """A directional claim "difference > at_least" judged by the interval of the difference.

    ``reproduced`` when the whole interval lies above ``at_least``, ``not reproduced`` when it lies entirely at or
    below it, ``inconclusive`` when it straddles it or is undefined (one seed).
    """
    if math.isnan(difference.low) or math.isnan(difference.high):
        return "inconclusive"
    if difference.low > at_least:
        return "reproduced"
    if difference.high <= at_least:
        return "not reproduced"
    return "inconclusive"


def over_seeds_from_summary(mean: float, std: float, n: int, level: float = LEVEL) -> Interval:
    """The Student-t interval of :func:`over_seeds` from a stored mean, sample std (ddof = 1) and count.

    Upstream stages store ``mean`` and ``std`` over their noise draws rather than every draw; ``n < 2`` or a NaN std
    gives an undefined interval.
    """
    _check_level(level)
    if n < 2 or not math.isfinite(std):
        nan = float("nan")
        return Interval(float(mean), nan, nan, int(n), level, "t")
    half = float(sps.t.ppf(0.5 + level / 2, df=n - 1)) * float(std) / math.sqrt(n)
    return Interval(float(mean), mean - half, mean + half, int(n), level, "t")


def bonferroni_level(level: float = LEVEL, parts: int = 2) -> float:
    """The level each of ``parts`` intervals needs so that all hold together at ``level`` (Bonferroni)."""
    _check_level(level)
    return 1.0 - (1.0 - level) / parts


def difference_bounds(a: Interval, b: Interval, *, scale: float = 1.0) -> Interval:
    """A conservative interval of ``a - scale * b`` from two intervals that need not be paired or independent.

    When both intervals hold, ``a - scale * b`` lies in ``[a.low - scale * b.high, a.high - scale * b.low]``
    (``scale >= 0``); by the union bound the result holds with probability at least ``1 - (1 - a.level) -
    (1 - b.level)``, so build ``a`` and ``b`` at :func:`bonferroni_level` for a 95% difference. Undefined when
    either is.
    """
    if scale < 0:
        raise ValueError(f"difference_bounds: scale must be >= 0, got {scale}")
    level = 1.0 - (1.0 - a.level) - (1.0 - b.level)
    return Interval(
        a.estimate - scale * b.estimate,
        a.low - scale * b.high,
        a.high - scale * b.low,
        min(a.n, b.n),
        level,
        "bonferroni",
    )
