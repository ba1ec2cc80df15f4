"""WMA's cost (thesis Algorithm 1 with Wong et al.'s driver): one attack per query against PGD with the same number of
steps, and the projected Sinkhorn's iterations to a mass error below 1e-5 at each entropy scale lambda.

Both attacks run on the same untrained ``small_cnn`` (the cost does not depend on the weights) and the same batch of
synthetic 128x64 demo images with the eq. 4.3 objective; WMA with the demo's projection settings (raw intensity
units, 7x7 window, Gamma before the projection, no early stop on success so every query takes every step). The
Sinkhorn rows project one 2/255 sign step of the same images (raw units, 7x7) to tol 1e-5, cold and then warm-started
from the previous step's duals. Run with ``python -m benchmarks bench_wma``.
"""

from __future__ import annotations

import time

import torch

from advreid.attacks.gradient import attack
from advreid.attacks.objectives import reid_non_targeted
from advreid.attacks.wasserstein import projected_sinkhorn, wasserstein_metric_attack
from advreid.models.reid import build_reid_model

from .bench_attacks import demo_batch
from .common import Measurement, best_time

STEPS = 4  # the demo budget's steps
WMA = {"eps_w": 3000.0, "lam": 10.0, "kernel_size": 7, "max_iter": 100, "tol": 1e-5, "unit_mass": False}
LAMBDAS = (3.0, 10.0, 30.0)
SINKHORN_BATCH = 8


def attack_costs(images: torch.Tensor) -> list[Measurement]:
    model = build_reid_model("small_cnn", num_classes=100).eval()
    with torch.no_grad():
        objective = reid_non_targeted(model(images.flip(0)))
    step = {"eps": 8 / 255, "step": 2 / 255, "steps": STEPS}
    pgd = best_time(lambda: attack(model, images, objective, method="pgd", **step), repeats=2)
    results = []

    def wma() -> None:
        results.append(wasserstein_metric_attack(model, images, objective, **step, **WMA))

    seconds = best_time(wma, repeats=1)
    per_projection = results[-1].iterations.double().mean().item() / STEPS
    batch = len(images)
    note = f"small_cnn, {batch}x3x128x64, {STEPS} steps"
    return [
        Measurement("PGD per query", 1000 * pgd / batch, "ms", note),
        Measurement("WMA per query", 1000 * seconds / batch, "ms", f"{note}, lambda 10, {per_projection:.0f} it/step"),
        Measurement("WMA / PGD", seconds / pgd, "x", "same steps; the projection is the difference"),
    ]


def sinkhorn_iterations(images: torch.Tensor) -> list[Measurement]:
    x = images[:SINKHORN_BATCH]
    g = torch.Generator().manual_seed(0)
    first = (x + 2 / 255 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    second = (first + 2 / 255 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    out = []
    for lam in LAMBDAS:
        options = {"lam": lam, "max_iter": 3000, "tol": 1e-5, "unit_mass": False}
        start = time.perf_counter()
        cold = projected_sinkhorn(x, first, WMA["eps_w"], **options)
        seconds = time.perf_counter() - start
        warm = projected_sinkhorn(x, second, WMA["eps_w"], initial=(cold.multiplier, cold.scaling), **options)
        again = projected_sinkhorn(x, second, WMA["eps_w"], **options)
        note = (
            f"{SINKHORN_BATCH}x3x128x64 raw, eps_w {WMA['eps_w']:g}; {int(cold.converged.sum())} converged, "
            f"largest mass error {cold.mass_error.max().item():.1e}; {seconds:.1f} s"
        )
        out += [
            Measurement(
                f"Sinkhorn iterations to 1e-5, lambda {lam:g}", cold.iterations.double().mean().item(), "it", note
            ),
            Measurement(
                f"warm-started next step, lambda {lam:g}",
                warm.iterations.double().mean().item() / max(again.iterations.double().mean().item(), 1.0),
                "x cold",
                f"{warm.iterations.double().mean().item():.0f} vs {again.iterations.double().mean().item():.0f} it",
            ),
        ]
    return out


def run() -> list[Measurement]:
    torch.manual_seed(0)
    images = demo_batch()
    return attack_costs(images) + sinkhorn_iterations(images)
