"""Stage ``attack@<model>``: the chapter-4 attack grid (every attack x budget, Tables 4.1-4.4 and 4.6, chapter 5's
attack list) on a trained Re-ID model; with ``--sweep``, stage ``attack_sweep``: WMA's lambda and kernel sweeps (Figs.
4.6-4.7) on ``attack.sweep.model``. The grid and the scoring are :mod:`advreid.attacks.grid`; WMA cells also report
their exact Wasserstein distance and convergence, and a warning here names any unconverged projection.

Outputs: ``data/adversarial/<model>/<attack>-<budget>.pt`` per cell (uint8 ``images``, the manifest rows they replace,
``split``, ``dataset``, ``model``, ``attack``, ``budget``, ``budget_values``, ``config``; ``torch.load(weights_only=
True)``), ``reports/metrics/attack/<model>.json``, ``reports/attack/cmc/<model>.csv``; the sweep writes
``reports/metrics/attack_sweep.json``, ``reports/attack/lambda_sweep.png`` and ``reports/attack/kernel_sweep.png``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from advreid.attacks.grid import (
    AttackParams,
    SweepSettings,
    attack_grid,
    cmc_csv,
    convergence_warnings,
    load_source,
    wma_sweep,
)
from advreid.attacks.plots import kernel_figure, lambda_figure
from advreid.device import select_device, set_threads
from advreid.io import write_json, write_text
from advreid.params import ParamsError, build, load_params
from advreid.reid.checkpoint import ReIDParams, load_trained_model, model_entry
from advreid.reid.evaluation import EvalSettings
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid attack", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a key of reid.models in params.yaml")
    parser.add_argument("--sweep", action="store_true", help="run WMA's lambda and kernel-size sweeps (attack.sweep)")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(AttackParams, load_params("attack", root / "params.yaml"), "attack").check()
    where = f"reid.models.{args.model}.eval"
    settings = build(EvalSettings, model_entry(reid.models, args.model).get("eval", {}), where).check(where)
    sweep = build(SweepSettings, params.sweep, "attack.sweep").check() if args.sweep else None
    if sweep is not None and sweep.model != args.model:
        raise ParamsError(f"attack.sweep.model is '{sweep.model}', not '{args.model}'")
    set_threads(reid.threads, "reid.threads")
    device = select_device(reid.device)
    model, meta = load_trained_model(root / "models" / "reid" / args.model / "model.pt", device)
    if meta["source"] != reid.source:
        raise ParamsError(f"reid.source is '{reid.source}' but model '{args.model}' was trained on '{meta['source']}'")

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    processed = root / "data" / "processed" / reid.source
    manifests = {f"{reid.source}/{s}": processed / f"{s}.parquet" for s in ("query", "gallery")}
    stage = "attack_sweep" if sweep is not None else f"attack@{args.model}"
    logged = {"model": args.model, "source": reid.source, "device": str(device), **asdict(params)}
    with stage_run(stage, logged, manifests=manifests) as run:
        splits = load_source(model, processed, (meta["height"], meta["width"]), params.batch_size, device, root)
        if sweep is not None:
            return _sweep(model, splits, params, sweep, settings, device, root, run)
        metrics, results = attack_grid(
            model,
            splits,
            params,
            settings,
            root / "data" / "adversarial" / args.model,
            device=device,
            model_name=args.model,
            dataset=reid.source,
            on_cell=lambda name, outcome: run.log_metrics({f"seconds.{name}": outcome.seconds}),
        )
        metrics_path = root / "reports" / "metrics" / "attack" / f"{args.model}.json"
        write_json(metrics_path, metrics)
        cmc_path = root / "reports" / "attack" / "cmc" / f"{args.model}.csv"
        write_text(cmc_path, cmc_csv(results))
        run.log_metrics(numeric_leaves({"clean": metrics["clean"], "cells": metrics["cells"]}))
        run.log_artifact(metrics_path, "attack")
        run.log_artifact(cmc_path, "attack")
    clean = metrics["clean"]
    print(f"{stage}: clean rank-1 {clean['rank1']:.3f}, mAP {clean['mAP']:.3f}")
    for name, cell in metrics["cells"].items():
        print(
            f"{stage}: {name:<22} rank-1 {cell['rank1']:.3f}, mAP {cell['mAP']:.3f}, SSIM {cell['ssim']:.3f}, "
            f"L-inf {cell['linf']:.0f}/255"
            + (f", W {cell['wasserstein']:.0f} (eps_w {cell['eps_w_final']:.0f})" if "wasserstein" in cell else "")
        )
    for line in convergence_warnings(metrics["cells"]):
        print(f"{stage}: WARNING {line}", file=sys.stderr)
    return 0


def _sweep(model, splits, params, sweep, settings, device, root: Path, run) -> int:
    metrics, lambdas, rows = wma_sweep(model, splits, params, sweep, settings, device=device)
    metrics_path = root / "reports" / "metrics" / "attack_sweep.json"
    write_json(metrics_path, metrics)
    eps = metrics["budget"]["eps"] / 255
    out = root / "reports" / "attack"
    figures = [
        lambda_figure(splits["query"], rows, lambdas, eps, sweep.images, out / "lambda_sweep.png"),
        kernel_figure(metrics, sweep, out / "kernel_sweep.png"),
    ]
    from advreid.tracking.mlflow_run import numeric_leaves

    run.log_metrics(numeric_leaves({key: metrics[key] for key in ("clean", "lambda", "kernel")}))
    for path in [metrics_path, *figures]:
        run.log_artifact(path, "attack")
    for lam, cell in metrics["lambda"].items():
        print(
            f"attack_sweep: lambda {lam:>5}: rank-1 {cell['rank1']:.3f}, mAP {cell['mAP']:.3f}, "
            f"smoothness {cell['smoothness']:.3f}, W {cell['wasserstein']:.0f}"
        )
    runs = {f"lambda {lam}": m for lam, m in metrics["lambda"].items()}
    runs.update({f"kernel {k} eps {e}": m for k, by in metrics["kernel"].items() for e, m in by.items()})
    for line in convergence_warnings(runs):
        print(f"attack_sweep: WARNING {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
