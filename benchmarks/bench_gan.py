"""IPES-GAN training throughput: iterations per second (one D step + one generator / E_id step) at the demo's
settings from params.yaml (``gan.settings``, small_cnn identity encoder and teacher), on random images with random
keypoints, one torch thread on the CPU, and on the GPU when one is available."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from advreid.gan.data import DomainImages
from advreid.gan.trainer import GANSettings, build_networks, train_iteration
from advreid.models.reid import build_reid_model
from advreid.params import build, load_params

from .common import Measurement, best_time

CLASSES, CAMERAS, IMAGES = 32, 3, 96


def _domain(settings: GANSettings, labelled: bool, seed: int) -> DomainImages:
    g = torch.Generator().manual_seed(seed)
    h, w = settings.height, settings.width
    keypoints = torch.cat([torch.rand(IMAGES, 18, 2, generator=g) * torch.tensor([w, h]), torch.ones(IMAGES, 18, 1)], 2)
    return DomainImages(
        name=f"random{seed}",
        images=torch.randint(0, 256, (IMAGES, 3, h, w), generator=g, dtype=torch.uint8),
        cameras=torch.arange(IMAGES) % CAMERAS,
        keypoints=keypoints,
        num_cameras=CAMERAS,
        labels=torch.arange(IMAGES) % CLASSES if labelled else None,
        num_classes=CLASSES if labelled else 0,
    )


def _iterations_per_second(settings: GANSettings, device: torch.device) -> float:
    source, target = _domain(settings, True, 0), _domain(settings, False, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = build_reid_model("small_cnn", CLASSES).to(device).eval()
    generator, discriminator, identity = (
        m.to(device).train() for m in build_networks(settings, teacher, "small_cnn", source, target, 0)
    )
    betas = (settings.beta1, settings.beta2)
    optimizers = {
        "opt_gen": torch.optim.Adam(generator.parameters(), settings.lr_gen, betas=betas),
        "opt_dis": torch.optim.Adam(discriminator.parameters(), settings.lr_dis, betas=betas),
        "opt_id": torch.optim.SGD([p for p in identity.parameters() if p.requires_grad], settings.lr_id),
    }
    counter = iter(range(10**6))

    def step() -> None:
        train_iteration(
            settings, source, target, 0, next(counter), generator, discriminator, identity, teacher, optimizers, device
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return 1.0 / best_time(step, repeats=3, warmup=1)


def run() -> list[Measurement]:
    root = Path(__file__).resolve().parents[1]
    gan = load_params("gan", root / "params.yaml")
    settings = build(GANSettings, gan["settings"], "gan.settings").check("gan.settings")
    size = f"{settings.height}x{settings.width}, {settings.batch_size}+{settings.batch_size} images"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [
            Measurement(
                "ipes_gan_cpu_1thread",
                _iterations_per_second(settings, torch.device("cpu")),
                "it/s",
                f"demo settings, {size}",
            )
        ]
    finally:
        torch.set_num_threads(previous)
    if torch.cuda.is_available():
        results.append(
            Measurement(
                "ipes_gan_cuda",
                _iterations_per_second(settings, torch.device("cuda")),
                "it/s",
                f"demo settings, {size}",
            )
        )
    return results
