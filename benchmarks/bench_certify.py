"""Chapter-6 overheads: CERTIFY against the base model's plain forward, one ZO step against its queries alone.

- certification throughput / plain forward throughput on the same number of noisy samples (goal >= 0.9x): what
  Cohen et al.'s CERTIFY adds to the forward passes (noise draws, counting, the Clopper-Pearson bound, the
  black-box wrapper).
- one ZO-RUDS (RGE) training step / (q + 1) batched forward passes of the black box (goal <= 1.1x): what the
  estimator, the loss closure and the white-box denoiser's forward and backward add to the queries themselves;
  and the same without the denoiser's own forward + backward, i.e. the zeroth-order machinery alone.

The models are the CPU demo's (8x8 digits, ``resnet_digits`` behind a small RDUNet) with untrained weights;
timings do not depend on the weights. Runs on CUDA when present.
"""

from __future__ import annotations

import torch
from torch import nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.smoothing import Smooth
from advreid.certify.training import DefenseTrainer, black_box_scores, build_defense, get_method
from advreid.device import select_device
from advreid.models.classifiers import build_classifier

from .common import Measurement, best_time

N0, N, BATCH, POINTS = 100, 2000, 1000, 4
Q, STEP_BATCH = 192, 32  # the thesis q


def run() -> list[Measurement]:
    device = select_device("auto")
    torch.manual_seed(0)
    classifier = build_classifier("resnet_digits", 10, [0.3], [0.3], 8, width=16).to(device).eval()
    defense = build_defense(get_method("zo_ruds"), 1, (8, 8), Q, {"base_width": 8}).to(device)
    images = torch.rand(POINTS, 1, 8, 8, device=device)
    note = f"{device.type}, resnet_digits(16) behind RDUNet(8), 8x8"
    return [
        _certify_ratio(nn.Sequential(defense.eval(), classifier), images, note),
        *_zo_step_ratios(defense, classifier, note),
    ]


def _certify_ratio(base: nn.Module, images: torch.Tensor, note: str) -> Measurement:
    smooth = Smooth(BlackBox(base, max_batch=BATCH), 10, sigma=0.25)

    def certify_all() -> None:
        generator = torch.Generator(images.device).manual_seed(0)
        for image in images:
            smooth.certify(image, N0, N, 0.001, BATCH, generator)
        _sync(images.device)

    noisy = [  # the same batches CERTIFY sends: n0 samples, then n in chunks of BATCH
        images[0] + 0.25 * torch.randn(size, *images.shape[1:], device=images.device)
        for size in [N0, *([BATCH] * (N // BATCH))]
    ]

    @torch.no_grad()
    def forward_all() -> None:
        for _ in range(images.shape[0]):
            for batch in noisy:
                base(batch)
        _sync(images.device)

    ratio = best_time(forward_all, repeats=5) / best_time(certify_all, repeats=5)
    return Measurement("certify / plain forward throughput", ratio, "x", f"goal >= 0.9; n0={N0}, n={N}; {note}")


def _zo_step_ratios(defense: nn.Module, classifier: nn.Module, note: str) -> list[Measurement]:
    images = torch.rand(STEP_BATCH, 1, 8, 8, device=next(defense.parameters()).device)
    trainer = DefenseTrainer(get_method("zo_ruds"), defense, classifier, sigma=0.25, q=Q,
                             generator=torch.Generator(images.device).manual_seed(0))  # fmt: skip
    optimizer = torch.optim.Adam(defense.trainable_parameters(), lr=1e-4, foreach=True)  # as train_defense
    targets = black_box_scores(BlackBox(classifier), images)
    defense.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        trainer.forward_backward(images, targets)
        optimizer.step()
        _sync(images.device)

    queries = torch.rand((Q + 1) * STEP_BATCH, 1, 8, 8, device=images.device)
    black_box = BlackBox(classifier)

    def forward() -> None:
        black_box.probs(queries[:STEP_BATCH])  # the reference batch, then all estimator queries at once
        black_box.probs(queries[STEP_BATCH:])
        _sync(images.device)

    def white_box() -> None:
        defense.white_box(trainer.noisy(images))[1].sum().backward()
        _sync(images.device)

    step_s, forward_s, white_box_s = (best_time(f, repeats=5) for f in (step, forward, white_box))
    detail = f"q={Q}, batch {STEP_BATCH}; {note}"
    return [
        Measurement("ZO step / (q+1) forwards", step_s / forward_s, "x", f"goal <= 1.1; {detail}"),
        Measurement(
            "ZO step - denoiser fwd/bwd / (q+1) fwd",
            (step_s - white_box_s) / forward_s,
            "x",
            f"estimator overhead; {detail}",
        ),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
