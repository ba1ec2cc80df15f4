"""The robustness matrix's costs: per-query AP / rank-1 re-scoring (attack_units) at a Market-1501-like query
count, and MLflow cell runs: creating them, and a second run that finds every cell unchanged (cache hits).

Features are random 512-d vectors with identity structure; the MLflow store is a fresh SQLite file in a temporary
directory. Run with ``python -m benchmarks bench_robustness``."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from advreid.robustness.units import per_query_scores

from .common import Measurement, best_time

QUERIES, GALLERY, IDS, CAMS, DIM = 750, 4000, 250, 6, 512
CELLS = 60


def _features(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    centres = torch.randn(IDS, DIM, generator=generator) * 0.3
    ql, gl = torch.randint(0, IDS, (QUERIES,), generator=generator), torch.arange(GALLERY) % IDS
    qc = torch.randint(0, CAMS, (QUERIES,), generator=generator)
    gc = torch.randint(0, CAMS, (GALLERY,), generator=generator)
    qf = centres[ql] + torch.randn(QUERIES, DIM, generator=generator)
    gf = centres[gl] + torch.randn(GALLERY, DIM, generator=generator)
    return qf, gf, ql, gl, qc, gc


def _cells_timing() -> tuple[float, float]:
    from advreid.robustness.cells import log_cells
    from advreid.robustness.matrix import Cell, binomial
    from advreid.tracking.lineage import LockedPath, LockedStage
    from advreid.tracking.mlflow_run import stage_run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        source = "reports/metrics/attack/m.json"
        lock = {"attack@m": LockedStage("attack@m", "advreid attack m", (LockedPath("models/m.pt", "a" * 32),),
                                        (LockedPath(source, "b" * 32),))}  # fmt: skip
        cells = [Cell("attack", "m", f"a{i}", "eps8", {"rank1": binomial(0.5, 72)}, source) for i in range(CELLS)]
        with stage_run("robustness_matrix", {}, root=root) as run:
            start = time.perf_counter()
            records, _ = log_cells(run, cells, lock, {})
            create = time.perf_counter() - start
            cache = {r["fingerprint"]: r["run_id"] for r in records.values()}
            start = time.perf_counter()
            log_cells(run, cells, lock, cache)
            reuse = time.perf_counter() - start
        os.environ.pop("MLFLOW_TRACKING_URI")
    return create, reuse


def run() -> list[Measurement]:
    qf, gf, ql, gl, qc, gc = _features(torch.Generator().manual_seed(0))
    seconds = best_time(lambda: per_query_scores(qf, gf, ql, gl, qc, gc), repeats=1, warmup=0)
    create, reuse = _cells_timing()
    return [
        Measurement("per_query_scores", seconds, "s", f"{QUERIES} queries x {GALLERY} gallery, AP + rank-1 hits"),
        Measurement("cell_runs_created", CELLS / create, "cells/s", f"{CELLS} new MLflow cell runs (SQLite)"),
        Measurement("cell_runs_unchanged", CELLS / reuse, "cells/s", "second run: every fingerprint cached"),
    ]
