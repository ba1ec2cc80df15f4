"""The black-box targets of chapter 6: the classifier (Tables 6.1-6.8) and the reconstruction network (Table 6.3).

The classifier is trained with the dataset labels, as any deployed model would be; the defenses later see it only
through queries. The reconstruction network learns to recover images from their compressed-sensing
back-projections. Classifier training checkpoints every epoch into ``checkpoint_dir/last.pt`` so that a killed run
resumes with the same final weights (:func:`advreid.reid.engine.resumable_epochs` decides whether it may).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advreid.certify.reconstruction import CompressedSensing, ReconstructionNet
from advreid.certify.training import TrainSchedule, fit_reconstruction
from advreid.device import rng_state, set_rng_state
from advreid.io import load_torch
from advreid.progress import progress
from advreid.reid.engine import LAST_CHECKPOINT, load_checkpoint, resumable_epochs, save_checkpoint


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
) -> list[dict[str, float]]:
    """SGD with momentum and a cosine schedule on cross-entropy; return the mean loss per epoch.

    With ``checkpoint_dir`` every epoch is saved (weights, optimizer, schedule, shuffling generator, global random
    states) and a run finding a checkpoint written with the same ``fingerprint`` continues from it.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    history: list[dict[str, float]] = []
    last = None if checkpoint_dir is None else Path(checkpoint_dir) / LAST_CHECKPOINT
    start = 0
    if last is not None:
        start = resumable_epochs(last, fingerprint, epochs, stage="train_classifier", written_with="settings or data")
        if start:
            checkpoint = load_checkpoint(last, model, optimizer, scheduler)
            history = list(checkpoint["history"])
            set_rng_state(checkpoint["rng"])
            generator.set_state(checkpoint["rng"]["generator"])
    steps = -(-images.shape[0] // batch_size)
    bar = progress(total=epochs * steps, initial=start * steps, desc="classifier", unit="step")
    for epoch in range(start + 1, epochs + 1):
        model.train()
        total = 0.0
        order = torch.randperm(images.shape[0], generator=generator, device=images.device)
        for first in range(0, images.shape[0], batch_size):
            index = order[first : first + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * index.numel()
            bar.update(1)
        scheduler.step()
        history.append({"epoch": float(epoch), "loss": total / images.shape[0]})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if last is not None:
            state = {**rng_state(), "generator": generator.get_state()}
            save_checkpoint(last, model, optimizer, scheduler, epoch=epoch, history=history, rng=state,
                            meta={"fingerprint": fingerprint})  # fmt: skip
    bar.close()
    model.eval()
    return history


def fingerprint(config: dict, *tensors: Tensor) -> str:
    """SHA-256 of a JSON-able ``config`` and the bytes of ``tensors``: what a resumable checkpoint was written with."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_reconstructor(
    images: Tensor, measurements: int, hidden: int, schedule: TrainSchedule, seed: int
) -> tuple[CompressedSensing, ReconstructionNet, list[float]]:
    """The Table 6.3 target: a compressed-sensing degradation rescaled to the training images' range, and a
    reconstruction network trained on it; returns ``(degradation, network in eval mode, loss per epoch)``."""
    shape = tuple(images.shape[1:])
    projections = CompressedSensing(shape, measurements, seed=seed).to(images.device).back_projection(images)
    low, high = float(projections.min()), float(projections.max())
    degrade = CompressedSensing(shape, measurements, seed, low, high).to(images.device)
    torch.manual_seed(seed)
    net = ReconstructionNet(shape, hidden).to(images.device)
    generator = torch.Generator(images.device).manual_seed(seed)
    losses = fit_reconstruction(
        net, list(net.parameters()), degrade, images, schedule, generator=generator, desc="reconstructor"
    )
    return degrade, net.eval(), losses


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``images``."""
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(dim=1) == labels[i : i + batch_size]).sum())
        for i in range(0, images.shape[0], batch_size)
    )
    return correct / images.shape[0]


def load_images(processed: Path, split: str, root: Path, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """All images of a classification split as ``(N, C, H, W)`` floats in [0, 1] and ``(N,)`` labels."""
    from advreid.data.torch_data import ManifestImages, load_split

    frame, raw_root = load_split(processed, split, root)
    dataset = ManifestImages(frame, raw_root, array_dir=processed)
    if len(dataset) == 0:
        raise ValueError(f"{processed}: split '{split}' has no images")
    images = torch.stack([dataset.image(i) for i in range(len(dataset))])
    labels = torch.as_tensor(np.array(dataset.labels), dtype=torch.long)  # a writable copy: arrow memory is read-only
    return images.to(device), labels.to(device)


def dataset_meta(images: Tensor, num_classes: int) -> dict:
    """Channels statistics and sizes that a classifier checkpoint needs to be rebuilt."""
    per_channel = images.transpose(0, 1).flatten(1)  # (C, N H W)
    return {
        "num_classes": num_classes,
        "mean": [float(v) for v in per_channel.mean(dim=1)],
        "std": [float(v) for v in per_channel.std(dim=1).clamp(min=1e-3)],
        "image_size": [int(images.shape[2]), int(images.shape[3])],
        "channels": int(images.shape[1]),
    }


def load_reconstructor(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
    """``(degradation, reconstruction network)`` saved by the train_classifier stage, in eval mode."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_classifier stage first")
    meta = load_torch(path, "train_classifier checkpoint")["meta"]
    modules = nn.ModuleDict(
        {
            "degrade": CompressedSensing(meta["shape"], meta["measurements"], meta["seed"]),
            "net": ReconstructionNet(meta["shape"], meta["hidden"]),
        }
    )
    load_checkpoint(path, modules)
    modules.to(device).eval()
    return modules["degrade"], modules["net"]
