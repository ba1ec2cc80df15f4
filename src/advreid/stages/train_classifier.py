"""Stage ``train_classifier``: train the black-box targets of chapter 6 on one classification dataset.

The classifier (Tables 6.1-6.8) is trained with the dataset labels, as any deployed model would be; the
defenses later see it only through queries. The reconstruction network of Table 6.3 learns to recover the
images from their compressed-sensing back-projections.

Outputs: ``models/classifier/<dataset>.pt``, ``models/reconstructor/<reconstruction.dataset>.pt`` (the one
checkpoint format of :func:`advreid.reid.engine.save_checkpoint`, with the builder arguments in ``meta``) and
``reports/metrics/train_classifier.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from advreid.io import load_torch, write_json
from advreid.params import build, load_params, require, require_counts
from advreid.settings import apply_environment


@dataclass(frozen=True)
class ReconstructorParams:
    dataset: str  # the thesis uses MNIST (Table 6.3) while the classifiers use CIFAR / STL-10
    measurements: int  # rows of the measurement matrix (Zhang et al.: 576 of MNIST's 784 pixels)
    hidden: int = 256
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3

    def check(self, where: str) -> ReconstructorParams:
        require_counts(self, where, ("measurements", "hidden", "epochs", "batch_size"))
        require(self.lr > 0, f"{where}.lr", "> 0", self.lr)
        return self


@dataclass(frozen=True)
class ClassifierParams:
    dataset: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    reconstruction: dict
    arch_options: dict = field(default_factory=dict)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def check(self, where: str) -> ClassifierParams:
        require_counts(self, where, ("epochs", "batch_size"))
        require(self.lr > 0, f"{where}.lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, f"{where}.momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, f"{where}.weight_decay", ">= 0", self.weight_decay)
        require(self.threads >= 0, f"{where}.threads", ">= 0 (0 = torch's default)", self.threads)
        return self


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid train-classifier", description=__doc__.splitlines()[0]).parse_args(argv)
    root = apply_environment()
    params = build(ClassifierParams, load_params("train_classifier", root / "params.yaml"), "train_classifier")
    params.check("train_classifier")
    where = "train_classifier.reconstruction"
    recon = build(ReconstructorParams, params.reconstruction, where).check(where)
    seed = load_params("seed", root / "params.yaml")

    from advreid.certify.reconstruction import reconstruction_errors
    from advreid.device import select_device, set_threads
    from advreid.models.classifiers import build_classifier
    from advreid.reid.engine import save_checkpoint
    from advreid.tracking.mlflow_run import stage_run

    device = select_device(params.device)
    set_threads(params.threads, "train_classifier.threads")
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
        history = train_classifier(model, train_x, train_y, params, torch.Generator(device).manual_seed(seed))
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
        degrade, net, losses = train_reconstructor(recon_train, recon, seed)
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


def train_classifier(
    model: nn.Module, images: Tensor, labels: Tensor, params: ClassifierParams, generator: torch.Generator
) -> list[dict[str, float]]:
    """SGD with momentum and a cosine schedule on cross-entropy; return the mean loss per epoch."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, params.epochs)
    history = []
    steps = -(-images.shape[0] // params.batch_size)
    bar = tqdm(total=params.epochs * steps, desc="classifier", unit="step", leave=False)
    for epoch in range(1, params.epochs + 1):
        model.train()
        total = 0.0
        order = torch.randperm(images.shape[0], generator=generator, device=images.device)
        for start in range(0, images.shape[0], params.batch_size):
            index = order[start : start + params.batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * index.numel()
            bar.update(1)
        scheduler.step()
        history.append({"epoch": float(epoch), "loss": total / images.shape[0]})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    bar.close()
    model.eval()
    return history


def train_reconstructor(images: Tensor, params: ReconstructorParams, seed: int) -> tuple[nn.Module, nn.Module, list]:
    """The Table 6.3 target: a compressed-sensing degradation rescaled to the training images' range, and a
    reconstruction network trained on it; returns ``(degradation, network in eval mode, loss per epoch)``."""
    from advreid.certify.reconstruction import CompressedSensing, ReconstructionNet
    from advreid.certify.training import TrainSchedule, fit_reconstruction

    shape = tuple(images.shape[1:])
    projections = CompressedSensing(shape, params.measurements, seed=seed).to(images.device).back_projection(images)
    low, high = float(projections.min()), float(projections.max())
    degrade = CompressedSensing(shape, params.measurements, seed, low, high).to(images.device)
    torch.manual_seed(seed)
    net = ReconstructionNet(shape, params.hidden).to(images.device)
    schedule = TrainSchedule(params.epochs, params.batch_size, params.lr, lr_step=max(params.epochs, 1))
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


def load_classifier(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The classifier saved by this stage, in eval mode."""
    from advreid.models.classifiers import build_classifier
    from advreid.reid.engine import load_checkpoint

    meta = _meta(path)
    model = build_classifier(
        meta["arch"], meta["num_classes"], meta["mean"], meta["std"], min(meta["image_size"]), **meta["options"]
    )
    load_checkpoint(path, model)
    return model.to(device).eval()


def load_reconstructor(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
    """``(degradation, reconstruction network)`` saved by this stage, in eval mode."""
    from advreid.certify.reconstruction import CompressedSensing, ReconstructionNet
    from advreid.reid.engine import load_checkpoint

    meta = _meta(path)
    modules = nn.ModuleDict(
        {
            "degrade": CompressedSensing(meta["shape"], meta["measurements"], meta["seed"]),
            "net": ReconstructionNet(meta["shape"], meta["hidden"]),
        }
    )
    load_checkpoint(path, modules)
    modules.to(device).eval()
    return modules["degrade"], modules["net"]


def _meta(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_classifier stage first")
    return load_torch(path, "train_classifier checkpoint")["meta"]
