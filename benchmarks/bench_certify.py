"""Chapter-6 overheads: CERTIFY against the base model's plain forward, one ZO step against its queries alone.

- certification throughput / plain forward throughput on the same number of noisy samples (goal >= 0.9x): what
  Cohen et al.'s CERTIFY adds to the forward passes (noise draws, counting, the Clopper-Pearson bound, the
  black-box wrapper). Models: the CPU demo's 8x8 digits, ``resnet_digits`` behind a small RDUNet.
- one ZO training step / the one batched forward of its (q + 1) B queries through the black box (goal <= 1.1x):
  what the estimator, the loss closure, the white-box denoiser's forward and backward and Adam add to the queries
  themselves; and the same without the denoiser's own forward + backward, i.e. the zeroth-order machinery alone.
  Step, forward and denoiser pass are timed in interleaved rounds (on CPU in this process's CPU seconds, which
  other processes on a shared machine do not inflate) and the ratios taken within each round; the value is the
  median over the rounds, the note gives min/median/max and the ratio of the minima. Sizes: the demo's
  (params.yaml train_denoiser: q 8, batch 64, 8x8 digits, tiny RDUNet and DnCNN), the thesis q (192) on 8x8, and
  CIFAR-sized 3x32x32 inputs with q 20, where the black box dominates.

Weights are untrained and inputs random: timings do not depend on them. Runs on CUDA when present.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.smoothing import Smooth
from advreid.certify.training import DefenseTrainer, black_box_scores, build_defense, get_method
from advreid.device import select_device
from advreid.models.classifiers import build_classifier

from .common import Measurement, best_time, interleaved_times, spread

N0, N, BATCH, POINTS = 100, 2000, 1000, 4
ROUNDS = 7


@dataclass(frozen=True)
class StepSize:
    """One ZO step configuration: method, q, batch, input shape, classifier width, denoiser arguments, and how
    many calls of each function one timing takes."""

    label: str
    method: str
    q: int
    batch: int
    channels: int
    side: int
    classifier_width: int
    denoiser: dict = field(default_factory=dict)
    number: int = 1


STEP_SIZES = (
    StepSize("demo", "zo_ruds", 8, 64, 1, 8, 8, {"base_width": 4}, number=10),
    StepSize("demo", "zo_ds", 8, 64, 1, 8, 8, {"depth": 4, "width": 8}, number=10),
    StepSize("thesis q", "zo_ruds", 192, 32, 1, 8, 16, {"base_width": 8}),
    StepSize("cifar-sized", "zo_ruds", 20, 32, 3, 32, 16, {"base_width": 4}),
)


def run() -> list[Measurement]:
    device = select_device("auto")
    torch.manual_seed(0)
    classifier = build_classifier("resnet_digits", 10, [0.3], [0.3], 8, width=16).to(device).eval()
    defense = build_defense(get_method("zo_ruds"), 1, (8, 8), 8, {"base_width": 8}).to(device)
    images = torch.rand(POINTS, 1, 8, 8, device=device)
    note = f"{device.type}, resnet_digits(16) behind RDUNet(8), 8x8"
    return [
        _certify_ratio(nn.Sequential(defense.eval(), classifier), images, note),
        *(ratio for size in STEP_SIZES for ratio in _zo_step_ratios(size, device)),
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


def _zo_step_ratios(size: StepSize, device: torch.device) -> list[Measurement]:
    torch.manual_seed(0)
    shape = (size.channels, size.side, size.side)
    method = get_method(size.method)
    classifier = build_classifier("resnet_digits", 10, [0.3] * size.channels, [0.3] * size.channels, size.side,
                                  width=size.classifier_width).to(device).eval()  # fmt: skip
    defense = build_defense(method, size.channels, shape[1:], size.q, size.denoiser).to(device)
    images = torch.rand(size.batch, *shape, device=device)
    trainer = DefenseTrainer(method, defense, classifier, sigma=0.25, q=size.q,
                             generator=torch.Generator(device).manual_seed(0))  # fmt: skip
    optimizer = torch.optim.Adam(defense.trainable_parameters(), lr=1e-4, foreach=True)  # as train_defense
    targets = black_box_scores(BlackBox(classifier), images)
    defense.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        trainer.forward_backward(images, targets)
        optimizer.step()
        _sync(device)

    queries = torch.rand((size.q + 1) * size.batch, *shape, device=device)
    black_box = BlackBox(classifier)

    def forward() -> None:  # what the step cannot do without: its (q + 1) B queries, sent as the step sends them
        black_box.probs(queries)
        _sync(device)

    def white_box() -> None:
        defense.white_box(trainer.noisy(images))[1].sum().backward()
        _sync(device)

    # on CPU, this process's CPU seconds: other work on a shared machine then barely moves the ratios
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    rounds = interleaved_times([step, forward, white_box], repeats=ROUNDS, clock=clock, number=size.number)
    total = spread([s / f for s, f, _ in rounds])
    machinery = spread([(s - w) / f for s, f, w in rounds])
    fastest_step, fastest_forward, fastest_white_box = (min(times) for times in zip(*rounds, strict=True))
    minima = (fastest_step / fastest_forward, (fastest_step - fastest_white_box) / fastest_forward)
    denoiser = ", ".join(f"{k} {v}" for k, v in size.denoiser.items())
    shape_text = "x".join(map(str, shape))
    clock_name = "wall" if device.type == "cuda" else "CPU"
    detail = (
        f"{size.label}: {size.method}, q={size.q}, batch {size.batch}, {shape_text}; "
        f"{device.type}, resnet_digits({size.classifier_width}) behind {method.denoiser}({denoiser})"
    )
    return [
        Measurement(
            f"ZO step / (q+1) fwd, {size.label} {size.method}",
            total[1],
            "x",
            f"goal <= 1.1; {_spread_note(total, clock_name)}, ratio of minima {minima[0]:.3f}; {detail}",
        ),
        Measurement(
            f"ZO step - denoiser / (q+1) fwd, {size.label} {size.method}",
            machinery[1],
            "x",
            f"estimator overhead; {_spread_note(machinery, clock_name)}, ratio of minima {minima[1]:.3f}; {detail}",
        ),
    ]


def _spread_note(values: tuple[float, float, float], clock: str) -> str:
    return f"min/median/max {values[0]:.3f}/{values[1]:.3f}/{values[2]:.3f} over {ROUNDS} rounds of {clock} time"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
