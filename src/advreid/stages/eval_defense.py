"""Stage ``eval_defense@<model>``: clean and attacked CMC / mAP of the vanilla model or of one chapter-5 defense
(thesis 5.3): every attack of ``defense.eval.attacks`` at every budget, white-box with the noise on and EOT, the
transfer attacks from the vanilla model, the eps sweep and the gradient-masking check
(:func:`advreid.defense.evaluation.evaluate_defense`), on ``defense.eval.queries`` evenly spaced queries of the
source domain's test split against its whole gallery (supervised setting: train and test on ``reid.source``).

Output: ``reports/metrics/defense/<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from advreid.defense.evaluation import evaluate_defense, load_split_tensors
from advreid.defense.noise import NoiseConfig, build_stochastic_model
from advreid.defense.training import DefenseParams, load_defended_model
from advreid.device import select_device, set_threads
from advreid.io import write_json
from advreid.params import ParamsError, build, load_params
from advreid.reid.checkpoint import ReIDParams, load_trained_model, model_entry
from advreid.settings import apply_environment

VANILLA = "vanilla"


def model_path(root: Path, params: DefenseParams, name: str) -> Path:
    """The model file evaluated as ``name``; it must be the one ``defense.evaluate.<name>`` names."""
    if name not in params.evaluate:
        raise ParamsError(f"defense.evaluate: unknown model {name!r}; known: {sorted(params.evaluate)}")
    expected = f"models/reid/{params.model}/model.pt" if name == VANILLA else f"models/defense/{name}/model.pt"
    if name != VANILLA and name not in params.defenses:
        raise ParamsError(f"defense.evaluate.{name}: not a defense of defense.defenses {list(params.defenses)}")
    if params.evaluate[name] != expected:
        raise ParamsError(f"defense.evaluate.{name}: must be {expected!r}, got {params.evaluate[name]!r}")
    return root / expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid eval-defense", description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"'{VANILLA}' or a name in defense.defenses")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(DefenseParams, load_params("defense", root / "params.yaml"), "defense")
    model_entry(reid.models, params.model)
    protocol = params.protocol()
    path = model_path(root, params, args.model)
    set_threads(reid.threads, "reid.threads")
    device = select_device(reid.device)
    vanilla_model, meta = load_trained_model(root / "models" / "reid" / params.model / "model.pt", device)
    vanilla = build_stochastic_model(vanilla_model, NoiseConfig(isotropic=False, anisotropic=False), (1, 1))
    if args.model == VANILLA:
        model = vanilla
    else:
        model, defended_meta = load_defended_model(path, device)
        if defended_meta["arch"] != meta["arch"]:
            raise ValueError(f"{path}: built on {defended_meta['arch']!r}, the vanilla model is {meta['arch']!r}")

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    processed = root / "data" / "processed" / reid.source
    manifests = {f"{reid.source}/{s}": processed / f"{s}.parquet" for s in ("query", "gallery")}
    stage = f"eval_defense@{args.model}"
    start = time.perf_counter()
    with stage_run(
        stage, {"model": args.model, "device": str(device), "eval": params.eval}, manifests=manifests
    ) as run:
        size = (meta["height"], meta["width"])
        query = load_split_tensors(processed, "query", size, root)
        gallery = load_split_tensors(processed, "gallery", size, root)
        metrics = evaluate_defense(model, vanilla, query, gallery, protocol, device, args.model)
        metrics.update(model=args.model, dataset=reid.source)
        # wall-clock numbers go to MLflow only: the DVC metrics file depends on the inputs alone
        seconds = {name: cell.pop("seconds") for name, cell in metrics["cells"].items() if "seconds" in cell}
        seconds["total"] = time.perf_counter() - start
        out = root / "reports" / "metrics" / "defense" / f"{args.model}.json"
        write_json(out, metrics)
        run.log_metrics(numeric_leaves({"cells": metrics["cells"], "masking": metrics["masking"]}))
        run.log_metrics(numeric_leaves(seconds, "seconds."))
        run.log_artifact(out, "defense")
    for name, cell in metrics["cells"].items():
        print(f"{stage}: {name:<26} rank-1 {cell['rank1']:.3f} +- {cell['rank1_std']:.3f}, mAP {cell['mAP']:.3f}")
    flag = "passed" if metrics["masking"]["passed"] else "FAILED"
    print(f"{stage}: gradient-masking check {flag} ({metrics['masking']}); {seconds['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
