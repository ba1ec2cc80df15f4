"""Stage ``train_reid@<model>``: supervised Re-ID training on the source domain, L_V = L_CE + L_Tri (thesis Eq. 5.1).

The trained model is the chapter-5 baseline, the teacher E_std of IPES-GAN's KL loss and the target of the attack
stage. Cross-entropy with label smoothing plus batch-hard triplet loss on P x K batches, linear warm-up then step or
cosine decay, AMP on CUDA, one checkpoint per epoch in ``models/reid/<model>/checkpoints/last.pt``. That directory
is a DVC out with ``persist: true``: a run interrupted mid-training resumes from it on the next ``dvc repro``; a
checkpoint written with other settings, or by a run that had finished (DVC reruns a finished stage only because its
code, data or params changed), is discarded and training starts over. ImageNet weights are read only from the local
file ``pretrained_path``; without one the backbone starts from scratch (and says so).

Data-parallel training on N GPUs (NCCL) or N CPU processes (Gloo) runs the same stage under torchrun; each process
draws its own P x K batches (the effective batch is N x P x K) and rank 0 alone writes outputs and logs to MLflow::

    torchrun --standalone --nproc_per_node N -m advreid.stages.train_reid small_cnn

Outputs: ``models/reid/<model>/model.pt`` (final weights, the one checkpoint format, with ``meta``: arch,
num_classes, feature_dim, height, width, source), ``reports/reid/train/<model>.csv`` (epoch, loss, loss_ce,
loss_triplet, acc, lr), ``reports/metrics/reid/train_<model>.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from advreid.data.torch_data import ManifestImages, PKSampler, dataset_info, load_split
from advreid.device import (
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    set_threads,
    supports_amp,
    unwrap,
    wrap_distributed,
)
from advreid.io import write_json, write_text
from advreid.models.reid import ReIDModel, build_reid_model
from advreid.params import ParamsError, build, load_params, require, require_counts
from advreid.reid.checkpoint import ReIDParams, model_entry
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
from advreid.settings import apply_environment

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
        on_epoch_end=on_epoch_end,
        meta=meta,
        epsilon=settings.label_smoothing,
        margin=settings.margin,
    )
    return TrainedModel(unwrap(model), history, meta, resumed_from)


def training_curve(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The per-epoch records without timings (throughput varies run to run; outputs must not)."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid train-reid", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a key of reid.models in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    entry = model_entry(params.models, args.model)
    where = f"reid.models.{args.model}.train"
    settings = build(TrainSettings, entry.get("train", {}), where).check(where)
    set_threads(params.threads, "reid.threads")
    stage = f"train_reid@{args.model}"
    out_dir = root / "models" / "reid" / args.model
    source_dir = root / "data" / "processed" / params.source
    rank, world_size, device = init_distributed(params.device)
    fit = partial(train_reid, entry["arch"], settings, source_dir, out_dir / "checkpoints", device=device, root=root)
    try:
        if rank != 0:  # DDP: rank 0 alone writes outputs and talks to MLflow
            fit()
            return 0
        from advreid.tracking.mlflow_run import stage_run

        logged = {
            "model": args.model,
            "arch": entry["arch"],
            "source": params.source,
            "world_size": world_size,
            "device": str(device),
            "train": asdict(settings),
        }
        with stage_run(stage, logged, manifests={f"{params.source}/train": source_dir / "train.parquet"}) as run:
            if settings.pretrained_path is None:
                print(f"{stage}: no pretrained_path, the {entry['arch']} backbone is trained from scratch")
            trained = fit(on_epoch_end=lambda epoch, record: run.log_metrics(record, step=epoch + 1))
            for record in trained.history[: trained.resumed_from]:  # epochs of the interrupted run
                run.log_metrics(record, step=int(record["epoch"]))
            run.set_tags({"advreid.resumed_from_epoch": trained.resumed_from})
            metrics = write_outputs(
                trained,
                out_dir / "model.pt",
                root / "reports" / "reid" / "train" / f"{args.model}.csv",
                root / "reports" / "metrics" / "reid" / f"train_{args.model}.json",
            )
            run.log_metrics({f"final.{k}": float(v) for k, v in metrics.items()})
            run.log_artifact(root / "reports" / "reid" / "train" / f"{args.model}.csv", "reid")
            run.log_artifact(out_dir / "model.pt", "model")
    finally:
        cleanup_distributed()
    rate = sum(r["images_per_second"] for r in trained.history[trained.resumed_from :])
    rate /= max(len(trained.history) - trained.resumed_from, 1)
    print(
        f"{stage}: {metrics['epochs']} epochs (resumed after {trained.resumed_from}), loss "
        f"{metrics['first_epoch_loss']:.3f} -> {metrics['loss']:.3f}, train acc {metrics['acc']:.3f}, "
        f"{rate:.0f} images/s on {device} x {world_size} -> {out_dir / 'model.pt'}"
    )
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
