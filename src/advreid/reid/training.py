"""Supervised Re-ID training of one backbone on a processed dataset, L_V = L_CE + L_Tri (thesis Eq. 5.1).

:func:`train_reid` builds the model, the P x K loader, optimizer and schedule from :class:`TrainSettings` and runs
:func:`advreid.reid.engine.train`, resuming an unfinished checkpoint written with the same settings (DDP-aware);
:func:`write_outputs` writes ``model.pt`` (the one checkpoint format, read back by
:func:`advreid.reid.checkpoint.load_trained_model`), the training-curve CSV and the metrics JSON.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from advreid.data.torch_data import ManifestImages, PKSampler, dataset_info, load_split
from advreid.device import get_rank, get_world_size, supports_amp, unwrap, wrap_distributed
from advreid.io import write_json, write_text
from advreid.models.reid import ReIDModel, build_reid_model
from advreid.params import ParamsError, require, require_counts
from advreid.reid.engine import (
    LAST_CHECKPOINT,
    SCHEDULES,
    build_scheduler,
    resumable_epochs,
    save_checkpoint,
    seed_everything,
    seed_worker,
    train,
)

OPTIMIZERS = ("adam", "sgd")
CURVE_COLUMNS = ("epoch", "loss", "loss_ce", "loss_triplet", "acc", "lr")


@dataclass(frozen=True)
class TrainSettings:
    """``reid.models.<name>.train``: the optimisation of one model (defaults: Luo et al.'s strong baseline)."""

    epochs: int
    p: int = 16
    k: int = 4
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    warmup_epochs: int = 0
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.1
    margin: float = 0.3
    height: int = 128
    width: int = 64
    flip: bool = True  # random horizontal flip
    pad: int = 0  # zero-pad by this many pixels, then randomly crop back to height x width
    pretrained_path: str | None = None
    amp: bool = True  # CUDA only
    seed: int = 0
    num_workers: int = 0

    def check(self, where: str) -> TrainSettings:
        if self.optimizer not in OPTIMIZERS:
            raise ParamsError(f"{where}.optimizer: must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ParamsError(f"{where}.schedule: must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        for name in ("epochs", "p", "height", "width"):
            if getattr(self, name) < 1:
                raise ParamsError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.k < 2:
            raise ParamsError(f"{where}.k: the triplet loss needs K >= 2 images per identity, got {self.k}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ParamsError(f"{where}.warmup_epochs: must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        require(self.lr > 0, f"{where}.lr", "> 0", self.lr)
        require(self.weight_decay >= 0, f"{where}.weight_decay", ">= 0", self.weight_decay)
        require_counts(self, where, ("pad", "num_workers", "seed"), minimum=0)
        require(0 < self.gamma <= 1, f"{where}.gamma", "in (0, 1]", self.gamma)
        require(0 <= self.label_smoothing < 1, f"{where}.label_smoothing", "in [0, 1)", self.label_smoothing)
        require(self.margin >= 0, f"{where}.margin", ">= 0", self.margin)
        return self


class ReIDAugment:
    """Training augmentation of a (3, H, W) image in [0, 1]: horizontal flip with probability 1/2, then zero-pad
    by ``pad`` pixels and crop a random H x W window. Draws from torch's global generator (checkpointed)."""

    def __init__(self, flip: bool = True, pad: int = 0):
        self.flip, self.pad = flip, pad

    def __call__(self, image: Tensor) -> Tensor:
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(2)
        if self.pad > 0:
            height, width = image.shape[1:]
            padded = nn.functional.pad(image, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            image = padded[:, top : top + height, left : left + width]
        return image


@dataclass
class TrainedModel:
    """What :func:`train_reid` returns."""

    model: ReIDModel  # unwrapped from DDP, on the training device
    history: list[dict[str, float]]  # one record per epoch (see ReIDEngine.run)
    meta: dict[str, Any]
    resumed_from: int  # epochs restored from the checkpoint (0: trained from the start)
    images_per_second: float | None  # mean over the epochs this call trained (None: nothing left to train)


def train_reid(
    arch: str,
    settings: TrainSettings,
    source_dir: str | Path,
    checkpoint_dir: str | Path | None,
    *,
    device: torch.device,
    root: str | Path = ".",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainedModel:
    """Train ``arch`` on the ``train`` split of ``source_dir`` (a processed dataset), resuming an unfinished
    checkpoint in ``checkpoint_dir`` written with the same settings. DDP-aware: call after
    :func:`advreid.device.init_distributed`; every rank returns the same weights (BatchNorm running statistics
    are each rank's own; rank 0's are the ones saved)."""
    root = Path(root)
    frame, raw_root = load_split(source_dir, "train", root)
    info = dataset_info(source_dir)
    size = (settings.height, settings.width)
    dataset = ManifestImages(
        frame, raw_root, relabel=True, size=size, transform=ReIDAugment(settings.flip, settings.pad)
    )
    seed_everything(settings.seed)  # initial weights come from torch's global generator
    pretrained = _resolve(root, settings.pretrained_path)
    model = build_reid_model(arch, dataset.num_classes, pretrained)
    rank, world_size = get_rank(), get_world_size()
    config = {
        "arch": arch,
        "train": asdict(settings),
        "source_train_sha256": info["splits"]["train"]["sha256"],
        "world_size": world_size,
    }
    meta = {
        "arch": arch,
        "num_classes": dataset.num_classes,
        "feature_dim": model.feature_dim,
        "height": settings.height,
        "width": settings.width,
        "source": info["name"],
        "pretrained": settings.pretrained_path,
        "fingerprint": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
    }
    resumed_from = 0
    if checkpoint_dir is not None:
        resumed_from = resumable_epochs(
            Path(checkpoint_dir) / LAST_CHECKPOINT,
            meta["fingerprint"],
            settings.epochs,
            stage="train_reid",
            written_with="settings, data or number of processes",
        )
    model = wrap_distributed(model.to(device), device)
    optimizer = _build_optimizer(model, settings)
    scheduler = build_scheduler(
        optimizer, settings.schedule, settings.epochs, settings.warmup_epochs, settings.milestones, settings.gamma
    )
    sampler = PKSampler(dataset.labels, settings.p, settings.k, settings.seed, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=settings.p * settings.k,
        sampler=sampler,
        num_workers=settings.num_workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(settings.seed),
        pin_memory=device.type == "cuda",
    )
    rates: list[float] = []

    def epoch_end(epoch: int, record: dict[str, float]) -> None:
        rates.append(record["images_per_second"])
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    history = train(
        model,
        loader,
        sampler,
        optimizer,
        scheduler,
        settings.epochs,
        checkpoint_dir,
        device=device,
        amp=settings.amp and supports_amp(device),
        on_epoch_end=epoch_end,
        meta=meta,
        epsilon=settings.label_smoothing,
        margin=settings.margin,
    )
    rate = sum(rates) / len(rates) if rates else None
    return TrainedModel(unwrap(model), history, meta, resumed_from, rate)


def training_curve(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The per-epoch records as the curve CSV has them (the columns of ``CURVE_COLUMNS``)."""
    return [{key: record[key] for key in CURVE_COLUMNS} for record in history]


def write_outputs(trained: TrainedModel, model_path: Path, curve_path: Path, metrics_path: Path) -> dict[str, Any]:
    """Write model.pt, the training-curve CSV and the metrics JSON (atomically); return the metrics."""
    curve = training_curve(trained.history)
    save_checkpoint(model_path, trained.model, epoch=len(curve), history=curve, meta=trained.meta)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "epoch": int(row["epoch"])} for row in curve)
    write_text(curve_path, buffer.getvalue())
    last = curve[-1]
    metrics = {
        "epochs": int(last["epoch"]),
        **{key: last[key] for key in ("loss", "loss_ce", "loss_triplet", "acc")},
        "first_epoch_loss": curve[0]["loss"],
        "num_classes": trained.meta["num_classes"],
        "parameters": sum(p.numel() for p in trained.model.parameters()),
        "pretrained": trained.meta["pretrained"] is not None,
    }
    write_json(metrics_path, metrics)
    return metrics


def _build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    # the BNNeck's frozen bias has requires_grad False and must stay out of the optimizer
    trainable = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        trainable, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=True
    )


def _resolve(root: Path, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p
