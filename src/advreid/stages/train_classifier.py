"""Stage ``train_classifier``: train the black-box targets of chapter 6 on one classification dataset.

The classifier (Tables 6.1-6.8) is trained with the dataset labels, as any deployed model would be; the
defenses later see it only through queries. The reconstruction network of Table 6.3 learns to recover the
images from their compressed-sensing back-projections.

Outputs: ``models/classifier/<dataset>.pt``, ``models/reconstructor/<reconstruction.dataset>.pt`` (the one
checkpoint format of :func:`advreid.reid.engine.save_checkpoint`, with the builder arguments in ``meta``) and
``reports/metrics/train_classifier.json``. The classifier's epochs are checkpointed in
``models/classifier/checkpoints/last.pt`` (a DVC ``persist`` out): a killed run resumes there.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from advreid.certify.params import ClassifierParams, ReconstructorParams
from advreid.io import write_json
from advreid.params import build, load_params
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid train-classifier", description=__doc__.splitlines()[0]).parse_args(argv)
    root = apply_environment()
    params = build(ClassifierParams, load_params("train_classifier", root / "params.yaml"), "train_classifier")
    params.check("train_classifier")
    where = "train_classifier.reconstruction"
    recon = build(ReconstructorParams, params.reconstruction, where).check(where)
    seed = load_params("seed", root / "params.yaml")

    import torch
    from torch import nn

    from advreid.certify.reconstruction import reconstruction_errors
    from advreid.certify.targets import (
        accuracy,
        dataset_meta,
        fingerprint,
        load_images,
        train_classifier,
        train_reconstructor,
    )  # fmt: skip
    from advreid.certify.training import TrainSchedule
    from advreid.device import make_deterministic, select_device
    from advreid.models.classifiers import build_classifier
    from advreid.reid.engine import save_checkpoint
    from advreid.tracking.mlflow_run import stage_run

    device = select_device(params.device)
    make_deterministic(params.threads, "train_classifier.threads")
    processed = root / "data" / "processed" / params.dataset
    train_x, train_y = load_images(processed, "train", root, device)
    test_x, test_y = load_images(processed, "test", root, device)
    info = dataset_meta(train_x, int(max(train_y.max(), test_y.max())) + 1)
    manifests = {f"{params.dataset}/{s}": processed / f"{s}.parquet" for s in ("train", "test")}
    recon_dir = root / "data" / "processed" / recon.dataset
    manifests.update({f"{recon.dataset}/{s}": recon_dir / f"{s}.parquet" for s in ("train", "test")})
    with stage_run("train_classifier", {**asdict(params), "seed": seed}, manifests=manifests) as run:
        torch.manual_seed(seed)
        model = build_classifier(
            params.arch, info["num_classes"], info["mean"], info["std"], min(info["image_size"]), **params.arch_options
        ).to(device)
        started = time.perf_counter()
        history = train_classifier(
            model, train_x, train_y, epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
            momentum=params.momentum, weight_decay=params.weight_decay,
            generator=torch.Generator(device).manual_seed(seed), checkpoint_dir=root / "models" / "classifier" /
            "checkpoints", fingerprint=fingerprint({**asdict(params), "seed": seed}, train_x, train_y),
        )  # fmt: skip
        for record in history:
            run.log_metrics({"classifier.train_loss": record["loss"]}, step=int(record["epoch"]))
        run.log_metrics({"classifier.seconds": time.perf_counter() - started})
        metrics = {
            "classifier": {
                "train_accuracy": accuracy(model, train_x, train_y),
                "test_accuracy": accuracy(model, test_x, test_y),
            }
        }
        meta = {"arch": params.arch, "options": dict(params.arch_options), **info, "dataset": params.dataset}
        classifier_path = root / "models" / "classifier" / f"{params.dataset}.pt"
        save_checkpoint(classifier_path, model, epoch=params.epochs, history=history, meta=meta)

        recon_train, recon_test = (load_images(recon_dir, s, root, device)[0] for s in ("train", "test"))
        schedule = TrainSchedule(recon.epochs, recon.batch_size, recon.lr, lr_step=max(recon.epochs, 1))
        degrade, net, losses = train_reconstructor(recon_train, recon.measurements, recon.hidden, schedule, seed)
        with torch.no_grad():
            rmse, ssim = reconstruction_errors(net(degrade(recon_test)), recon_test)
            degraded_rmse, _ = reconstruction_errors(degrade(recon_test), recon_test)
        metrics["reconstructor"] = {"test_rmse": rmse, "test_ssim": ssim, "degraded_rmse": degraded_rmse}
        shape = list(recon_train.shape[1:])
        recon_meta = {"shape": shape, "measurements": recon.measurements, "hidden": recon.hidden, "seed": seed,
                      "dataset": recon.dataset}  # fmt: skip
        reconstructor_path = root / "models" / "reconstructor" / f"{recon.dataset}.pt"
        save_checkpoint(
            reconstructor_path,
            nn.ModuleDict({"degrade": degrade, "net": net}),
            epoch=recon.epochs,
            history=[{"epoch": float(i + 1), "loss": v} for i, v in enumerate(losses)],
            meta=recon_meta,
        )
        write_json(root / "reports" / "metrics" / "train_classifier.json", metrics)
        run.log_metrics({f"{k}.{m}": v for k, d in metrics.items() for m, v in d.items()})
    print(
        f"train_classifier: {params.arch} on {params.dataset}: test accuracy "
        f"{metrics['classifier']['test_accuracy']:.4f}; reconstructor test RMSE {rmse:.4f} -> {classifier_path.parent}"
    )
    return 0
