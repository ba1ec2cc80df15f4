"""What a benchmark returns, a timer that repeats a call and keeps the best run, and helpers for benchmarks that
run each case in a fresh subprocess (wall and CPU seconds, peak resident memory, the case's JSON result)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
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
