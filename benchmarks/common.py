"""What a benchmark returns, and a timer that repeats a call and keeps the best run."""

from __future__ import annotations

import time
from collections.abc import Callable
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
