"""Stage ``defense_seed@<seed>``: one more training seed of chapter 5's claim cells (issue 12): the vanilla model and
the defenses of ``defense.replicates.defenses`` trained with ``<seed>``, scored clean and under
``defense.replicates.attacks`` at ``defense.replicates.budget`` (:func:`advreid.defense.replicates.replicate_seed`).

Outputs: ``models/defense_seeds/seed<seed>/<model>.pt`` (vanilla and each defense, the formats of ``train_reid`` and
``train_defense``) and ``reports/metrics/defense_seeds/seed<seed>.json`` (``{seed, queries, cells: {model: {cell:
scores}}}``, read by the robustness matrix beside the main stages' seed).
"""

from __future__ import annotations

import argparse
import sys
import time

from advreid.defense.replicates import replicate_plan, replicate_seed
from advreid.defense.training import DefenseParams
from advreid.device import make_deterministic, select_device
from advreid.io import atomic_path, write_json
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid defense-seed", description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int, help="a seed of defense.replicates.seeds in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(DefenseParams, load_params("defense", root / "params.yaml"), "defense")
    plan = replicate_plan(reid, params, args.seed)
    make_deterministic(reid.threads, "reid.threads")
    device = select_device(reid.device)
    stage = f"defense_seed@{args.seed}"
    source_dir = root / "data" / "processed" / reid.source

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    logged = {"seed": args.seed, "model": params.model, "source": reid.source, "replicates": params.replicates}
    manifests = {f"{reid.source}/{s}": source_dir / f"{s}.parquet" for s in ("train", "query", "gallery")}
    start = time.perf_counter()
    with stage_run(stage, logged, manifests=manifests) as run:
        out_dir = root / "models" / "defense_seeds" / f"seed{args.seed}"
        with atomic_path(out_dir, is_dir=True) as tmp:  # all the models or none
            result = replicate_seed(args.seed, plan, source_dir, tmp, device=device, root=root)
        out = root / "reports" / "metrics" / "defense_seeds" / f"seed{args.seed}.json"
        write_json(
            out, {"seed": args.seed, "queries": result.queries, "budget": plan.replicates.budget, "cells": result.cells}
        )
        run.log_metrics(numeric_leaves(result.cells))
        run.log_metrics(numeric_leaves({**result.seconds, "total": time.perf_counter() - start}, "seconds."))
        run.log_artifact(out, "defense_seeds")
    for model, cells in result.cells.items():
        scores = ", ".join(f"{name} rank-1 {c['rank1']:.3f} +- {c['rank1_std']:.3f}" for name, c in cells.items())
        print(f"{stage}: {model:<14} {scores}")
    print(f"{stage}: {time.perf_counter() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
