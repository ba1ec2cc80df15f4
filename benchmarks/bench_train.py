"""Re-ID training throughput on the CPU at the demo's 128x64: images per second of one optimisation step (forward,
cross-entropy + batch-hard triplet, backward, Adam) on a P x K = 8 x 4 batch of random images, for the two demo
backbones, with one torch thread and with torch's default (one per core). The demo's ``reid.threads`` follows
these numbers; on a machine shared with other jobs the default oversubscribes the cores and can be far slower."""

from __future__ import annotations

import warnings

import torch

from advreid.models.reid import build_reid_model
from advreid.reid.engine import ReIDEngine

from .common import Measurement, best_time

ARCHS = ("small_cnn", "osnet_x0_25")
P, K = 8, 4
HEIGHT, WIDTH = 128, 64


def _images_per_second(arch: str, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "trained from scratch" is the point here
            model = build_reid_model(arch, num_classes=32)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4)
        engine = ReIDEngine(model, optimizer, device=torch.device("cpu"))
        model.train()
        images = torch.rand(P * K, 3, HEIGHT, WIDTH, generator=generator)
        labels = torch.arange(P).repeat_interleave(K)
        seconds = best_time(lambda: engine.forward_backward((images, labels)), repeats=3, warmup=1)
    finally:
        torch.set_num_threads(previous)
    return P * K / seconds


def run() -> list[Measurement]:
    default = torch.get_num_threads()
    out = []
    for arch in ARCHS:
        for threads in sorted({1, default}):
            rate = _images_per_second(arch, threads)
            note = f"{HEIGHT}x{WIDTH}, batch {P}x{K}, best of 3 steps"
            out.append(Measurement(f"train {arch}, {threads} thread(s)", rate, "images/s", note))
    return out
