"""Training and loading the chapter-6 defenses of one method: one per noise level, one for reconstruction.

For every sigma the method's defense is trained against the classifier (its own predictions on the clean training
images are the targets, thesis Sec. 6.4); one more is trained at the reconstruction sigma against the
reconstruction network (Table 6.3). Checkpoints carry the builder arguments in ``meta``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.reconstruction import RECONSTRUCTION
from advreid.certify.targets import fingerprint
from advreid.certify.training import (
    CLASSIFICATION,
    Defense,
    DefenseMethod,
    DefenseTrainer,
    Task,
    TrainSchedule,
    black_box_scores,
    build_defense,
    get_method,
    noisy_accuracy,
    prepare_defense,
    train_defense,
)
from advreid.io import load_torch
from advreid.reid.engine import load_checkpoint, resumable_epochs, save_checkpoint

TRAINING_FIELDS = ("loss", "objective", "mse", "noisy_accuracy", "queries_per_sample")


@dataclass(frozen=True)
class DefenseSettings:
    """What every defense of a method is trained with (the ``train_denoiser.settings`` of params.yaml)."""

    epochs: int
    batch_size: int
    q: int
    mu: float
    lambda_cs: float
    lambda_mmd: float
    lr: float
    lr_step: int
    weight_decay: float
    pretrain_epochs: int
    pretrain_lr: float
    dncnn: dict
    rdunet: dict
    ae_width: int


def train_method(
    method: DefenseMethod,
    settings: DefenseSettings,
    sigmas: tuple[float, ...],
    classification: tuple[nn.Module, Tensor, tuple[Tensor, Tensor]],
    reconstruction: tuple[nn.Module, Tensor, float, int],
    seed: int,
    out_dir: Path,
    on_done: Callable[[str, float], None] | None = None,
    checkpoint_dir: Path | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Train ``method``'s defense at every sigma against the classifier, then one against the reconstructor.

    Args:
        classification: ``(classifier, training images, (validation images, labels))``.
        reconstruction: ``(reconstruction network, its degraded training inputs, sigma, epochs)``.
        seed: the defense at sigma index i uses ``seed + i``; the reconstruction one ``seed + len(sigmas)``.
        out_dir: where ``sigma_<s>.pt`` and ``reconstruction.pt`` are written.
        on_done: called with (key, seconds) after each classification defense.
        checkpoint_dir: per-epoch checkpoints ``<key>.pt`` of each training, resumed after a kill.

    Returns:
        ``{"sigma_<s>" | "reconstruction": per-epoch records}``.
    """
    import time

    classifier, images, (val_x, val_y) = classification
    targets = black_box_scores(BlackBox(classifier), images)  # the black box's labels, not the dataset's
    histories: dict[str, list[dict[str, float]]] = {}
    for index, sigma in enumerate(sigmas):
        started = time.perf_counter()
        key = f"sigma_{sigma:g}"
        histories[key] = train_one(
            method, settings, classifier, CLASSIFICATION, images, targets, sigma, seed + index,
            out_dir / f"{key}.pt", validation=(BlackBox(classifier), val_x, val_y),
            checkpoint=None if checkpoint_dir is None else checkpoint_dir / f"{key}.pt",
        )  # fmt: skip
        if on_done is not None:
            on_done(key, time.perf_counter() - started)
    reconstructor, inputs, recon_sigma, recon_epochs = reconstruction
    recon_targets = black_box_scores(RECONSTRUCTION.black_box(reconstructor), inputs)
    histories["reconstruction"] = train_one(
        method, settings, reconstructor, RECONSTRUCTION, inputs, recon_targets, recon_sigma, seed + len(sigmas),
        out_dir / "reconstruction.pt", epochs=recon_epochs,
        checkpoint=None if checkpoint_dir is None else checkpoint_dir / "reconstruction.pt",
    )  # fmt: skip
    return histories


def train_one(
    method: DefenseMethod,
    settings: DefenseSettings,
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
    checkpoint: Path | None = None,
) -> list[dict[str, float]]:
    """Build, pre-train and train one defense of ``method`` against ``target``; save it to ``path``.

    ``validation`` = (query-only target, images, labels) adds the per-epoch ``noisy_accuracy`` (Fig. 6.6).
    ``checkpoint``: saved every epoch; a training killed after its pre-training resumes from it when it was written
    with the same settings, target outputs and inputs (else it starts again and says why).
    """
    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator(inputs.device).manual_seed(seed)
    denoiser_kwargs = dict(settings.dncnn if method.denoiser == "dncnn" else settings.rdunet)
    image_size = (int(inputs.shape[2]), int(inputs.shape[3]))
    defense = build_defense(method, int(inputs.shape[1]), image_size, settings.q, denoiser_kwargs, settings.ae_width)
    defense.to(inputs.device)
    trainer = DefenseTrainer(
        method, defense, target, task, sigma=sigma, q=settings.q, mu=settings.mu,
        lambda_cs=settings.lambda_cs, lambda_mmd=settings.lambda_mmd, generator=generator,
    )  # fmt: skip
    label = f"{method.name} {task.name} sigma={sigma:g}"
    schedule = TrainSchedule(
        epochs or settings.epochs, settings.batch_size, settings.lr, settings.lr_step,
        weight_decay=settings.weight_decay,
    )  # fmt: skip
    config = {"settings": asdict(settings), "method": method.name, "task": task.name, "sigma": sigma, "seed": seed,
              "epochs": schedule.epochs}  # fmt: skip
    key = fingerprint(config, inputs, targets)
    done = 0
    if checkpoint is not None:
        done = resumable_epochs(checkpoint, key, schedule.epochs, stage=label, written_with="settings or inputs")
    pretrain = TrainSchedule(settings.pretrain_epochs, settings.batch_size, settings.pretrain_lr, lr_step=10**9)
    if settings.pretrain_epochs > 0 and done == 0:  # a resumed training has its pre-trained weights in the checkpoint
        prepare_defense(trainer, inputs, pretrain, generator=generator)
    on_epoch = None
    if validation is not None:
        query, val_x, val_y = validation

        def on_epoch(epoch: int, record: dict[str, float]) -> dict[str, float]:
            noise = torch.Generator(inputs.device).manual_seed(seed)  # the same draws after every epoch
            return {"noisy_accuracy": noisy_accuracy(defense, query, val_x, val_y, sigma, noise)}

    history = train_defense(
        trainer, inputs, targets, schedule, generator=generator, on_epoch=on_epoch, desc=label,
        checkpoint=checkpoint, fingerprint=key, resume=done > 0,
    )  # fmt: skip
    meta = {
        "method": method.name,
        "task": task.name,
        "sigma": sigma,
        "channels": int(inputs.shape[1]),
        "image_size": list(image_size),
        "latent_dim": settings.q,
        "denoiser_kwargs": denoiser_kwargs,
        "ae_width": settings.ae_width,
    }
    save_checkpoint(path, defense, epoch=schedule.epochs, history=history, meta=meta)
    return history


def load_defense(path: Path, device: torch.device | str = "cpu") -> tuple[Defense, dict]:
    """A defense saved by :func:`train_one`, in eval mode, and its ``meta`` (method, task, sigma, builder args)."""
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
    epochs = max(len(h) for h in histories.values())
    columns = ["epoch"] + [f"{key}_{f}" for key, h in histories.items() for f in TRAINING_FIELDS if f in h[0]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for epoch in range(epochs):
        row: list[object] = [epoch + 1]
        for history in histories.values():
            record = history[epoch] if epoch < len(history) else {}
            row += [f"{record[f]:.6g}" if f in record else "" for f in TRAINING_FIELDS if f in history[0]]
        writer.writerow(row)
    return out.getvalue()
