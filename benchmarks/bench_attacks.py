"""Attack costs on a Re-ID model: one PGD iteration against its physical floor, and the projected Sinkhorn of WMA.

The floor of a gradient attack is one forward and one backward pass to the input per iteration; the ratio
``PGD iteration / (forward + backward)`` is the loop's overhead (goal: <= 1.05). Both are timed on the same model
(OSNet x0.25, eval mode, untrained weights: the cost does not depend on them) and the same batch of 32 synthetic
128x64 demo images, with the eq. 4.3 metric objective. The projected Sinkhorn (thesis eqs. 4.6-4.9) is timed on the
same 32 images after one 2/255 sign step, per iteration (tol 0, so every iteration runs) for both mass units, and
to convergence for unit mass (raw intensity units do not converge within a few hundred iterations at lambda 3000).
CPU always; CUDA too when a GPU is present. Run with ``python -m benchmarks bench_attacks``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from advreid.attacks.gradient import attack
from advreid.attacks.objectives import reid_non_targeted
from advreid.attacks.wasserstein import projected_sinkhorn
from advreid.data.images import load_image
from advreid.data.synthetic import DemoSpec, generate_domain
from advreid.models.reid import build_reid_model

from .common import Measurement, best_time

BATCH = 32
STEPS = 5  # PGD iterations per timed call (the per-iteration time is the call's time / STEPS)
ROUNDS = 6  # best of this many interleaved timings of each
SINKHORN_ITERATIONS = 10
SPEC = DemoSpec(num_train_ids=8, num_test_ids=4, cameras=2, images_per_camera=2)  # 64 images, 128x64


def demo_batch() -> torch.Tensor:
    """(32, 3, 128, 64) synthetic Re-ID images in [0, 1]."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        generate_domain(root, "a", SPEC, progress=False)
        paths = sorted(root.rglob("*.jpg"))[:BATCH]
        pixels = np.stack([load_image(p) for p in paths])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)


def _synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def pgd_overhead(images: torch.Tensor, device: torch.device) -> list[Measurement]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no pretrained_path given.*")
        model = build_reid_model("osnet_x0_25", num_classes=100).to(device).eval()
    x = images.to(device)
    with torch.no_grad():
        reference = model(x.flip(0))  # another image's features as each query's "gallery"
    objective = reid_non_targeted(reference)

    def forward_backward() -> None:
        point = x.detach().requires_grad_(True)
        torch.autograd.grad(objective(model(point)).sum(), point)

    def pgd() -> None:
        attack(model, x, objective, method="pgd", eps=8 / 255, step=2 / 255, steps=STEPS)

    # interleaved, so that a burst of load on a shared machine hits both sides alike
    floors, iterations = [], []
    for _ in range(ROUNDS):
        floors.append(best_time(_synchronized(forward_backward, device), repeats=1, warmup=1))
        iterations.append(best_time(_synchronized(pgd, device), repeats=1, warmup=0) / STEPS)
    floor, iteration = min(floors), min(iterations)
    where = f"osnet_x0_25, {BATCH}x3x128x64, {device.type}"
    return [
        Measurement(f"forward+backward ({device.type})", 1000 * floor, "ms", where),
        Measurement(f"PGD iteration ({device.type})", 1000 * iteration, "ms", f"{where}, {STEPS}-step call / {STEPS}"),
        Measurement(f"PGD / floor ({device.type})", iteration / floor, "x", "goal <= 1.05"),
    ]


def sinkhorn_costs(images: torch.Tensor, device: torch.device) -> list[Measurement]:
    x = images.to(device)
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).to(device) * 2.0 - 1.0
    stepped = (x + 2 / 255 * sign).clamp(0, 1)
    out = []
    for unit_mass, eps_w in ((True, 0.01), (False, 100.0)):
        units = "unit mass" if unit_mass else "raw intensity"

        def fixed(unit_mass: bool = unit_mass, eps_w: float = eps_w) -> None:
            projected_sinkhorn(x, stepped, eps_w, max_iter=SINKHORN_ITERATIONS, tol=0.0, unit_mass=unit_mass)

        seconds = best_time(_synchronized(fixed, device), repeats=2) / SINKHORN_ITERATIONS
        note = f"{BATCH}x3x128x64, lambda 3000, 7x7, eps_w {eps_w:g}"
        out.append(Measurement(f"Sinkhorn iteration, {units} ({device.type})", 1000 * seconds, "ms", note))
    result = []

    def converge() -> None:
        result.append(projected_sinkhorn(x, stepped, 0.01, unit_mass=True))

    seconds = best_time(_synchronized(converge, device), repeats=1)
    iterations = result[-1].iterations.float().mean().item()
    note = f"{BATCH}x3x128x64, lambda 3000, 7x7, eps_w 0.01, tol 1e-5: {iterations:.0f} iterations on average"
    out.append(Measurement(f"projected Sinkhorn to convergence, unit mass ({device.type})", seconds, "s", note))
    return out


def run() -> list[Measurement]:
    images = demo_batch()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = []
    for device in devices:
        out += pgd_overhead(images, device)
        out += sinkhorn_costs(images, device)
    return out
