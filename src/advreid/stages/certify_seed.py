"""Stage ``certify_seed@<seed>``: one more seed of chapter 6's claim cells (issue 12): every method of
``certify.replicates.methods`` trained at ``certify.replicates.sigma`` and certified with ``<seed>``, as the main
``train_denoiser`` and ``certify`` stages would with ``seed: <seed>``
(:func:`advreid.certify.replicates.replicate_seed`).

Outputs: ``models/certify_seeds/seed<seed>/<method>.pt`` (the format of ``train_denoiser``) and
``reports/metrics/certify_seeds/seed<seed>.json`` (``{seed, sigma, points, cells: {method: {sca, rca_<r>, ...}}}``,
read by the robustness matrix beside the main stages' seed).
"""

from __future__ import annotations

import argparse
import sys
import time

from advreid.certify.params import CertifyParams, DenoiserParams
from advreid.io import atomic_path, write_json
from advreid.params import build, load_params
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid certify-seed", description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int, help="a seed of certify.replicates.seeds in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    training = build(DenoiserParams, load_params("train_denoiser.settings", root / "params.yaml"),
                     "train_denoiser.settings").check("train_denoiser.settings")  # fmt: skip
    certify = build(CertifyParams, load_params("certify.settings", root / "params.yaml"), "certify.settings")
    certify.check("certify.settings")
    methods = tuple(load_params("train_denoiser.methods", root / "params.yaml"))
    dataset = load_params("train_classifier.dataset", root / "params.yaml")
    main_seed = load_params("seed", root / "params.yaml")

    from advreid.certify.replicates import replicate_plan, replicate_seed
    from advreid.certify.targets import load_images
    from advreid.data.torch_data import dataset_info
    from advreid.device import make_deterministic, select_device
    from advreid.models.classifiers import load_classifier
    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    replicates = load_params("certify.replicates", root / "params.yaml")
    plan = replicate_plan(replicates, training, certify, methods, main_seed, args.seed)
    device = select_device(training.device)
    make_deterministic(training.threads, "train_denoiser.settings.threads")
    processed = root / "data" / "processed" / dataset
    stage = f"certify_seed@{args.seed}"
    start = time.perf_counter()
    logged = {"seed": args.seed, "replicates": replicates}
    with stage_run(stage, logged) as run:
        images, _ = load_images(processed, "train", root, device)
        test = load_images(processed, "test", root, device)
        classifier = load_classifier(root / "models" / "classifier" / f"{dataset}.pt", device)
        num_classes = int(dataset_info(processed)["num_classes"])
        with atomic_path(root / "models" / "certify_seeds" / f"seed{args.seed}", is_dir=True) as tmp:  # all or none
            result = replicate_seed(args.seed, plan, classifier, images, test, num_classes, tmp)
        out = root / "reports" / "metrics" / "certify_seeds" / f"seed{args.seed}.json"
        write_json(out, {"seed": args.seed, "sigma": plan.sigma, "points": result.points, "cells": result.cells})
        run.log_metrics(numeric_leaves(result.cells))
        run.log_metrics(numeric_leaves({**result.seconds, "total": time.perf_counter() - start}, "seconds."))
        run.log_artifact(out, "certify_seeds")
    for method, cell in result.cells.items():
        print(f"{stage}: {method:<11} sigma {plan.sigma:g}: SCA {cell['sca']:.3f} on {result.points} points")
    print(f"{stage}: {time.perf_counter() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
