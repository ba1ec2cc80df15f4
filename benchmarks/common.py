"""What a benchmark returns, a timer that repeats a call and keeps the best run, one that interleaves calls, and
helpers for benchmarks that run each case in a fresh subprocess (wall and CPU seconds, peak resident memory, the
case's JSON result)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


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


def peak_rss_mib() -> float:
    """This process's peak resident size so far (MiB); unlike tracemalloc it sees torch's and numpy's allocations."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """fn's result, wall seconds, CPU seconds over all threads (the honest figure on a shared machine)."""
    out = []
    cpu = cpu_seconds()
    wall = best_time(lambda: out.append(fn()), repeats=1, warmup=0)
    return out[0], wall, cpu_seconds() - cpu


def run_case(module: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m benchmarks.<module> ARGS...`` from the project root, with ``env`` added to this process's
    environment; its last stdout line, parsed as JSON."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{module} case {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
