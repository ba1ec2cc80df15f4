"""Stage ``attack_seed@<seed>``: one more training seed of chapter 4's claim cells (issue 12): every model of
``attack.replicates.models`` retrained with ``<seed>``, attacked with ``attack.replicates.attacks`` at
``attack.replicates.budget`` and scored clean, under attack and across models
(:func:`advreid.attacks.replicates.replicate_seed`).

Outputs: ``models/attack_seeds/seed<seed>/<model>.pt`` (the format of ``train_reid``) and
``reports/metrics/attack_seeds/seed<seed>.json`` (``{seed, queries, budget, main_seeds, cells: {model: {cell:
scores}}, transfer: {"A->B": {cell: scores}}}``; ``main_seeds``: each model's main training seed), read by the
robustness matrix beside the main stages' seed.
"""

from __future__ import annotations

import argparse
import sys
import time

from advreid.attacks.grid import AttackParams
from advreid.attacks.replicates import replicate_plan, replicate_seed
from advreid.device import make_deterministic, select_device
from advreid.io import atomic_path, write_json
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid attack-seed", description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int, help="a seed of attack.replicates.seeds in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(AttackParams, load_params("attack", root / "params.yaml"), "attack").check()
    plan = replicate_plan(reid, params, args.seed)
    make_deterministic(reid.threads, "reid.threads")
    device = select_device(reid.device)
    stage = f"attack_seed@{args.seed}"
    source_dir = root / "data" / "processed" / reid.source

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    logged = {"seed": args.seed, "source": reid.source, "replicates": params.replicates, "attack_seed": params.seed}
    manifests = {f"{reid.source}/{s}": source_dir / f"{s}.parquet" for s in ("train", "query", "gallery")}
    start = time.perf_counter()
    with stage_run(stage, logged, manifests=manifests) as run:
        with atomic_path(root / "models" / "attack_seeds" / f"seed{args.seed}", is_dir=True) as tmp:  # all or none
            result = replicate_seed(args.seed, plan, source_dir, tmp, device=device, root=root)
        out = root / "reports" / "metrics" / "attack_seeds" / f"seed{args.seed}.json"
        main_seeds = {name: model.train.seed for name, model in plan.models.items()}  # paired with this seed
        write_json(out, {"seed": args.seed, "queries": result.queries, "budget": plan.replicates.budget,
                         "main_seeds": main_seeds, "cells": result.cells, "transfer": result.transfer})  # fmt: skip
        run.log_metrics(numeric_leaves(result.cells))
        run.log_metrics(numeric_leaves({p.replace("->", "_to_"): c for p, c in result.transfer.items()}, "transfer."))
        run.log_metrics(numeric_leaves({**result.seconds, "total": time.perf_counter() - start}, "seconds."))
        run.log_artifact(out, "attack_seeds")
    for model, cells in result.cells.items():
        scores = ", ".join(f"{name} mAP {c['mAP']:.3f}" + (f" SSIM {c['ssim']:.3f}" if "ssim" in c else "")
                           for name, c in cells.items())  # fmt: skip
        print(f"{stage}: {model:<12} {scores}")
    for pair, cells in result.transfer.items():
        print(f"{stage}: transfer {pair}: " + ", ".join(f"{n} rank-1 {c['rank1']:.3f}" for n, c in cells.items()))
    print(f"{stage}: {time.perf_counter() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
