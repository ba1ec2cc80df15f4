"""Stage ``certify@<method>`` (and ``certify_baseline``): randomized-smoothing certification and Table 6.3.

For each sigma of ``certify.settings.sigmas``, Cohen et al.'s CERTIFY runs on evenly spaced test images with
the base classifier ``f(D(x + eta))`` queried as a black box; the certified accuracy at radius r counts the
points whose prediction is right (dataset label) and whose radius is at least r (SCA at r = 0, RCA above).
The reconstruction defense is evaluated under 40-step L2 PGD (Table 6.3). ``baseline`` certifies the
classifier alone (no denoiser) and evaluates the undefended reconstruction network ("Vanilla").

Outputs: ``reports/metrics/certify/<method>.json``, ``reports/certify/curves/<method>.csv`` (certified
accuracy per radius, one column per sigma) and ``reports/certify/points/<method>_sigma_<s>.csv`` (per test point:
index, label, prediction, radius, correct) for the paired tests of ``certify_report``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields

import numpy as np

from advreid.certify.params import THESIS_N, CertifyParams, ReconstructionEvalParams
from advreid.io import write_json, write_text
from advreid.params import build, load_params
from advreid.settings import apply_environment

BASELINE = "baseline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid certify", description=__doc__.splitlines()[0])
    parser.add_argument("method", help=f"a trained defense method, or '{BASELINE}' for no denoiser")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(CertifyParams, load_params("certify.settings", root / "params.yaml"), "certify.settings")
    params.check("certify.settings")
    where = "certify.settings.reconstruction"
    recon = build(ReconstructionEvalParams, params.reconstruction, where).check(where)
    dataset = load_params("train_classifier.dataset", root / "params.yaml")
    recon_dataset = load_params("train_classifier.reconstruction.dataset", root / "params.yaml")
    seed = load_params("seed", root / "params.yaml")

    from torch import nn

    from advreid.certify.certification import CertifySettings, certify_method, curve_table, evenly_spaced, points_table
    from advreid.certify.defenses import load_defense
    from advreid.certify.reconstruction import evaluate_reconstruction
    from advreid.certify.targets import load_images, load_reconstructor
    from advreid.certify.training import get_method
    from advreid.data.torch_data import dataset_info
    from advreid.device import select_device, set_threads
    from advreid.models.classifiers import load_classifier
    from advreid.tracking.mlflow_run import stage_run

    method = None if args.method == BASELINE else get_method(args.method)
    name = BASELINE if method is None else method.name
    device = select_device(params.device)
    set_threads(params.threads, "certify.settings.threads")
    processed = root / "data" / "processed" / dataset
    test_x, test_y = load_images(processed, "test", root, device)
    classifier = load_classifier(root / "models" / "classifier" / f"{dataset}.pt", device)
    degrade, reconstructor = load_reconstructor(root / "models" / "reconstructor" / f"{recon_dataset}.pt", device)
    recon_x, _ = load_images(root / "data" / "processed" / recon_dataset, "test", root, device)
    defenses = root / "models" / "denoisers" / name
    num_classes = int(dataset_info(processed)["num_classes"])
    stage = f"certify_{BASELINE}" if method is None else f"certify@{name}"
    settings = CertifySettings(**{f.name: getattr(params, f.name) for f in fields(CertifySettings)})
    with stage_run(stage, {**asdict(params), "method": name}) as run:
        points = evenly_spaced(test_x.shape[0], params.num_points)
        grid = np.round(np.arange(0.0, max(params.radii) + params.curve_step / 2, params.curve_step), 10)

        def base_for(sigma: float) -> nn.Module:
            defense = None if method is None else load_defense(defenses / f"sigma_{sigma:g}.pt", device)[0]
            return classifier if defense is None else nn.Sequential(defense, classifier)

        results, curves, per_point = certify_method(
            base_for, test_x, test_y, points, num_classes, params.sigmas, settings, grid, seed, name,
            on_done=lambda sigma, seconds: run.log_metrics({f"sigma_{sigma:g}.seconds": seconds}),
        )  # fmt: skip
        recon_defense, recon_meta = (
            (None, {"sigma": 0.0}) if method is None else load_defense(defenses / "reconstruction.pt", device)
        )
        recon_points = evenly_spaced(recon_x.shape[0], recon.num_points)
        reconstruction = evaluate_reconstruction(
            reconstructor, recon_defense, degrade(recon_x[recon_points]), recon_x[recon_points], recon.epsilons,
            steps=recon.steps, sigma=recon_meta["sigma"], noise_samples=recon.noise_samples, seed=seed,
        )  # fmt: skip
        metrics = {
            "method": name,
            "label": "no denoiser" if method is None else method.label,
            "white_box": None if method is None else not method.zeroth_order,
            "settings": {"n0": params.n0, "n": params.n, "alpha": params.alpha, "points": len(points),
                         "thesis_n": THESIS_N},
            "sigma": results,
            "reconstruction": reconstruction,
        }  # fmt: skip
        write_json(root / "reports" / "metrics" / "certify" / f"{name}.json", metrics)
        curve_path = root / "reports" / "certify" / "curves" / f"{name}.csv"
        write_text(curve_path, curve_table(grid, curves))
        for sigma, result in per_point.items():
            write_text(root / "reports" / "certify" / "points" / f"{name}_sigma_{sigma}.csv", points_table(result))
        run.log_metrics({f"sigma_{s}.{k}": v for s, d in results.items() for k, v in d.items()})
        run.log_metrics({f"reconstruction.eps_{e}.{k}": v for e, d in reconstruction.items() for k, v in d.items()})
        run.log_artifact(curve_path, "certify")
    first = results[f"{params.sigmas[0]:g}"]
    print(
        f"certify@{name}: sigma {params.sigmas[0]:g}: SCA {first.get('sca', float('nan')):.3f} on {len(points)} points"
        f" (n = {params.n}{'' if params.n >= THESIS_N else f', thesis n = {THESIS_N}'})"
    )
    return 0
