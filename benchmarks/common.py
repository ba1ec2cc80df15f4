"""What a benchmark returns, a timer that repeats a call and keeps the best run, and one that interleaves calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float
    unit: str
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Seconds of the fastest of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_times(
    fns: Sequence[Callable[[], object]],
    repeats: int = 7,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    number: int = 1,
) -> list[list[float]]:
    """Seconds per call in ``repeats`` rounds, each calling every function ``number`` times in turn:
    ``times[round][function]``.

    Adjacent calls share the machine's load of the moment, so ratios taken within a round are steadier on a
    shared machine than ratios of separately taken minima. ``clock=time.process_time`` counts this process's
    CPU seconds only, which other processes' load does not inflate (CPU runs; a GPU needs wall time).
    ``number`` > 1 makes calls of a few milliseconds long enough to time.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    rounds = []
    for _ in range(repeats):
        times = []
        for fn in fns:
            start = clock()
            for _ in range(number):
                fn()
            times.append((clock() - start) / number)
        rounds.append(times)
    return rounds


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """``(min, median, max)`` of ``values``."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return ordered[0], median, ordered[-1]
