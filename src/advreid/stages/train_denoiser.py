"""Stage ``train_denoiser@<method>``: train one chapter-6 defense per noise level, and one for reconstruction.

For every sigma of ``train_denoiser.settings.sigmas`` the method's defense is trained against the classifier
(its own predictions on the clean training images are the targets); one more is trained at
``reconstruction_sigma`` against the reconstruction network (Table 6.3).

Outputs: ``models/denoisers/<method>/sigma_<s>.pt`` and ``reconstruction.pt`` (checkpoints with the builder
arguments in ``meta``), ``reports/certify/training/<method>.csv`` (per epoch: loss and noisy validation
accuracy per sigma, Fig. 6.6) and ``reports/metrics/train_denoiser/<method>.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from advreid.io import atomic_path, load_torch, write_json, write_text
from advreid.params import ParamsError, build, load_params, require, require_counts
from advreid.settings import apply_environment

if TYPE_CHECKING:
    from advreid.certify.training import DefenseMethod, Task


@dataclass(frozen=True)
class DenoiserParams:
    sigmas: tuple[float, ...]  # thesis: 0.25 (Tables 6.1-6.5), 0.5 and 1.0 (Tables 6.6-6.7)
    epochs: int  # thesis: 600
    batch_size: int  # thesis: 256
    q: int = 192  # RGE directions per sample; also the AE latent size (CGE: 2 q queries per sample)
    mu: float = 0.005
    lambda_cs: float = 1.0
    lambda_mmd: float = 4.0
    lr: float = 1e-4
    lr_step: int = 100  # thesis: lr / 10 every 100 epochs
    weight_decay: float = 0.0
    pretrain_epochs: int = 10  # autoencoder (AE variants) and denoiser (finetune strategy)
    pretrain_lr: float = 1e-3
    dncnn: dict = field(default_factory=dict)  # DnCNN kwargs (thesis: depth 17, width 64)
    rdunet: dict = field(default_factory=dict)  # RDUNet kwargs (thesis: base_width 64)
    ae_width: int = 32
    validation_points: int = 200  # test images for the noisy accuracy of the training curves
    reconstruction_sigma: float = 0.25
    reconstruction_epochs: int = 10
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def check(self, where: str) -> DenoiserParams:
        if not self.sigmas:
            raise ParamsError(f"{where}.sigmas: needs at least one noise level")
        for index, sigma in enumerate(self.sigmas):
            require(sigma > 0, f"{where}.sigmas[{index}]", "> 0 (the Gaussian noise level)", sigma)
        require_counts(self, where, ("epochs", "batch_size", "q", "lr_step", "ae_width", "validation_points"))
        require_counts(self, where, ("pretrain_epochs", "reconstruction_epochs", "threads"), minimum=0)
        for name in ("mu", "lr", "pretrain_lr", "reconstruction_sigma"):
            require(getattr(self, name) > 0, f"{where}.{name}", "> 0", getattr(self, name))
        for name in ("lambda_cs", "lambda_mmd", "weight_decay"):
            require(getattr(self, name) >= 0, f"{where}.{name}", ">= 0", getattr(self, name))
        return self


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

    from advreid.certify.blackbox import BlackBox
    from advreid.certify.reconstruction import RECONSTRUCTION
    from advreid.certify.training import CLASSIFICATION, black_box_scores, get_method
    from advreid.device import select_device, set_threads
    from advreid.stages.train_classifier import load_classifier, load_images, load_reconstructor
    from advreid.tracking.mlflow_run import stage_run

    method = get_method(args.method)
    device = select_device(params.device)
    set_threads(params.threads, "train_denoiser.settings.threads")
    processed = root / "data" / "processed" / dataset
    images, _ = load_images(processed, "train", root, device)
    val_x, val_y = (t[: params.validation_points] for t in load_images(processed, "test", root, device))
    classifier = load_classifier(root / "models" / "classifier" / f"{dataset}.pt", device)
    degrade, reconstructor = load_reconstructor(root / "models" / "reconstructor" / f"{recon_dataset}.pt", device)
    recon_images, _ = load_images(root / "data" / "processed" / recon_dataset, "train", root, device)
    out_dir = root / "models" / "denoisers" / method.name
    histories: dict[str, list[dict[str, float]]] = {}
    with stage_run(f"train_denoiser@{method.name}", {**asdict(params), "method": method.name, "seed": seed}) as run:
        with atomic_path(out_dir, is_dir=True) as tmp:
            targets = black_box_scores(BlackBox(classifier), images)  # the black box's labels, not the dataset's
            validation = (BlackBox(classifier), val_x, val_y)
            for index, sigma in enumerate(params.sigmas):
                started = time.perf_counter()
                histories[f"sigma_{sigma:g}"] = train_one(
                    method, params, classifier, CLASSIFICATION, images, targets, sigma, seed + index,
                    tmp / f"sigma_{sigma:g}.pt", validation=validation,
                )  # fmt: skip
                run.log_metrics({f"sigma_{sigma:g}.seconds": time.perf_counter() - started})
            inputs = degrade(recon_images)
            recon_targets = black_box_scores(RECONSTRUCTION.black_box(reconstructor), inputs)
            recon = params.reconstruction_sigma
            histories["reconstruction"] = train_one(
                method, params, reconstructor, RECONSTRUCTION, inputs, recon_targets, recon, seed + len(params.sigmas),
                tmp / "reconstruction.pt", epochs=params.reconstruction_epochs,
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


def train_one(
    method: DefenseMethod,
    params: DenoiserParams,
    target: nn.Module,
    task: Task,
    inputs: Tensor,
    targets: Tensor,
    sigma: float,
    seed: int,
    path: Path,
    *,
    epochs: int | None = None,
    validation: tuple[Callable[[Tensor], Tensor], Tensor, Tensor] | None = None,
) -> list[dict[str, float]]:
    """Build, pre-train and train one defense of ``method`` against ``target``; save it to ``path``.

    ``validation`` = (query-only target, images, labels) adds the per-epoch ``noisy_accuracy`` (Fig. 6.6).
    """
    from advreid.certify.training import (
        DefenseTrainer,
        TrainSchedule,
        build_defense,
        noisy_accuracy,
        prepare_defense,
        train_defense,
    )
    from advreid.reid.engine import save_checkpoint

    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator(inputs.device).manual_seed(seed)
    denoiser_kwargs = dict(params.dncnn if method.denoiser == "dncnn" else params.rdunet)
    image_size = (int(inputs.shape[2]), int(inputs.shape[3]))
    defense = build_defense(method, int(inputs.shape[1]), image_size, params.q, denoiser_kwargs, params.ae_width)
    defense.to(inputs.device)
    trainer = DefenseTrainer(
        method, defense, target, task, sigma=sigma, q=params.q, mu=params.mu,
        lambda_cs=params.lambda_cs, lambda_mmd=params.lambda_mmd, generator=generator,
    )  # fmt: skip
    label = f"{method.name} {task.name} sigma={sigma:g}"
    pretrain = TrainSchedule(params.pretrain_epochs, params.batch_size, params.pretrain_lr, lr_step=10**9)
    if params.pretrain_epochs > 0:
        prepare_defense(trainer, inputs, pretrain, generator=generator)
    schedule = TrainSchedule(
        epochs or params.epochs, params.batch_size, params.lr, params.lr_step, weight_decay=params.weight_decay
    )
    on_epoch = None
    if validation is not None:
        query, val_x, val_y = validation

        def on_epoch(epoch: int, record: dict[str, float]) -> dict[str, float]:
            noise = torch.Generator(inputs.device).manual_seed(seed)  # the same draws after every epoch
            return {"noisy_accuracy": noisy_accuracy(defense, query, val_x, val_y, sigma, noise)}

    history = train_defense(trainer, inputs, targets, schedule, generator=generator, on_epoch=on_epoch, desc=label)
    meta = {
        "method": method.name,
        "task": task.name,
        "sigma": sigma,
        "channels": int(inputs.shape[1]),
        "image_size": list(image_size),
        "latent_dim": params.q,
        "denoiser_kwargs": denoiser_kwargs,
        "ae_width": params.ae_width,
    }
    save_checkpoint(path, defense, epoch=schedule.epochs, history=history, meta=meta)
    return history


def load_defense(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A defense saved by this stage, in eval mode, and its ``meta`` (method, task, sigma, builder arguments)."""
    from advreid.certify.training import build_defense, get_method
    from advreid.reid.engine import load_checkpoint

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_denoiser stage for this method and noise level")
    meta = load_torch(path, "defense checkpoint")["meta"]
    defense = build_defense(
        get_method(meta["method"]), meta["channels"], tuple(meta["image_size"]), meta["latent_dim"],
        meta["denoiser_kwargs"], meta["ae_width"],
    )  # fmt: skip
    load_checkpoint(path, defense)
    return defense.to(device).eval(), meta


def training_table(histories: dict[str, list[dict[str, float]]]) -> str:
    """One CSV row per epoch with ``<key>_<field>`` columns (key: ``sigma_<s>`` or ``reconstruction``)."""
    fields = ("loss", "objective", "mse", "noisy_accuracy", "queries_per_sample")
    epochs = max(len(h) for h in histories.values())
    columns = ["epoch"] + [f"{key}_{f}" for key, h in histories.items() for f in fields if f in h[0]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for epoch in range(epochs):
        row: list[object] = [epoch + 1]
        for history in histories.values():
            record = history[epoch] if epoch < len(history) else {}
            row += [f"{record[f]:.6g}" if f in record else "" for f in fields if f in history[0]]
        writer.writerow(row)
    return out.getvalue()
