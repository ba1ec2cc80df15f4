"""Stage ``train_denoiser@<method>``: train one chapter-6 defense per noise level, and one for reconstruction.

For every sigma of ``train_denoiser.settings.sigmas`` the method's defense is trained against the classifier
(its own predictions on the clean training images are the targets); one more is trained at
``reconstruction_sigma`` against the reconstruction network (Table 6.3).

Outputs: ``models/denoisers/<method>/sigma_<s>.pt`` and ``reconstruction.pt`` (checkpoints with the builder
arguments in ``meta``), ``reports/certify/training/<method>.csv`` (per epoch: loss and noisy validation
accuracy per sigma, Fig. 6.6) and ``reports/metrics/train_denoiser/<method>.json``. Every epoch of every training
is checkpointed in ``models/denoiser_checkpoints/<method>/`` (a DVC ``persist`` out): a killed run resumes there.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields

from advreid.certify.params import DenoiserParams
from advreid.io import atomic_path, write_json, write_text
from advreid.params import build, load_params
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid train-denoiser", description=__doc__.splitlines()[0])
    parser.add_argument("method", help="a defense method (advreid.certify.training.METHODS)")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(
        DenoiserParams, load_params("train_denoiser.settings", root / "params.yaml"), "train_denoiser.settings"
    ).check("train_denoiser.settings")
    dataset = load_params("train_classifier.dataset", root / "params.yaml")
    recon_dataset = load_params("train_classifier.reconstruction.dataset", root / "params.yaml")
    seed = load_params("seed", root / "params.yaml")

    from advreid.certify.defenses import DefenseSettings, train_method, training_table
    from advreid.certify.targets import load_images, load_reconstructor
    from advreid.certify.training import get_method
    from advreid.device import make_deterministic, select_device
    from advreid.models.classifiers import load_classifier
    from advreid.tracking.mlflow_run import stage_run

    method = get_method(args.method)
    device = select_device(params.device)
    make_deterministic(params.threads, "train_denoiser.settings.threads")
    processed = root / "data" / "processed" / dataset
    images, _ = load_images(processed, "train", root, device)
    validation = tuple(t[: params.validation_points] for t in load_images(processed, "test", root, device))
    classifier = load_classifier(root / "models" / "classifier" / f"{dataset}.pt", device)
    degrade, reconstructor = load_reconstructor(root / "models" / "reconstructor" / f"{recon_dataset}.pt", device)
    recon_images, _ = load_images(root / "data" / "processed" / recon_dataset, "train", root, device)
    settings = DefenseSettings(**{f.name: getattr(params, f.name) for f in fields(DefenseSettings)})
    out_dir = root / "models" / "denoisers" / method.name
    with stage_run(f"train_denoiser@{method.name}", {**asdict(params), "method": method.name, "seed": seed}) as run:
        with atomic_path(out_dir, is_dir=True) as tmp:
            histories = train_method(
                method, settings, params.sigmas, (classifier, images, validation),
                (reconstructor, degrade(recon_images), params.reconstruction_sigma, params.reconstruction_epochs),
                seed, tmp, on_done=lambda key, seconds: run.log_metrics({f"{key}.seconds": seconds}),
                checkpoint_dir=root / "models" / "denoiser_checkpoints" / method.name,
            )  # fmt: skip
        curves = root / "reports" / "certify" / "training" / f"{method.name}.csv"
        write_text(curves, training_table(histories))
        summary = {
            "method": method.name,
            "label": method.label,
            "final": {key: history[-1] for key, history in histories.items()},
        }
        write_json(root / "reports" / "metrics" / "train_denoiser" / f"{method.name}.json", summary)
        for key, history in histories.items():
            for record in history:
                values = {f"{key}.{k}": v for k, v in record.items() if k != "epoch"}
                run.log_metrics(values, step=int(record["epoch"]))
        run.log_artifact(curves, "training")
    final = summary["final"][f"sigma_{params.sigmas[0]:g}"]
    print(
        f"train_denoiser@{method.name}: sigma {params.sigmas[0]:g}: loss {final['loss']:.4f}, noisy validation "
        f"accuracy {final['noisy_accuracy']:.4f} -> {out_dir}"
    )
    return 0
