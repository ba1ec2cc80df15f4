"""Chapter-5 costs on the CPU at the demo's 128x64, small_cnn, P x K = 4 x 4, one torch thread: one MP-SNN
meta-iteration (Algorithm 3, sequential Algorithm-2 updates) relative to one PGD-AT iteration on the same batch, both
with the thesis' 7-step PGD (the thesis calls MP-SNN's overhead "minor", 5.3.4), and the eval-mode forward rate
(images/s) of the defended model (both noises on) relative to the vanilla model."""

from __future__ import annotations

import copy
import warnings

import torch

from advreid.defense.losses import TASKS
from advreid.defense.meta import make_meta_batch, meta_step
from advreid.defense.noise import NoiseConfig, build_stochastic_model
from advreid.defense.training import DefenseEngine, DefenseSettings, build_optimizer
from advreid.models.reid import build_reid_model

from .common import Measurement, best_time

P, K, HEIGHT, WIDTH = 4, 4, 128, 64


class _Epoch:
    epoch = 0


def _pgd_at_seconds(settings: DefenseSettings, vanilla, images, labels) -> float:
    model = build_stochastic_model(copy.deepcopy(vanilla), settings.noise(), (HEIGHT, WIDTH)).train()
    engine = DefenseEngine(
        model, build_optimizer(model, settings), device=torch.device("cpu"), defense=settings, epoch_source=_Epoch()
    )
    return best_time(lambda: engine.forward_backward((images, labels)), repeats=3, warmup=1)


def _meta_seconds(settings: DefenseSettings, vanilla, images, labels) -> dict[str, float]:
    """Seconds of one Algorithm-3 iteration per meta-test task (the task is drawn uniformly in training)."""
    model = build_stochastic_model(copy.deepcopy(vanilla), settings.noise(), (HEIGHT, WIDTH)).train()
    optimizer = build_optimizer(model, settings)

    def iteration(task: str) -> None:
        batch = make_meta_batch(model, images, labels, task, settings.pgd())
        meta_step(model, optimizer, batch, settings.loss(), 1, settings.meta_order, settings.alternate)

    return {task: best_time(lambda t=task: iteration(t), repeats=2, warmup=1) for task in TASKS}


def run() -> list[Measurement]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vanilla = build_reid_model("small_cnn", num_classes=32)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(P * K, 3, HEIGHT, WIDTH, generator=generator)
        labels = torch.arange(P).repeat_interleave(K)
        pgd_at = DefenseSettings(method="pgd_at", isotropic=False, anisotropic=False, pgd_steps=7)
        mp_snn = DefenseSettings(method="mp_snn", pgd_steps=7)
        t_pgd = _pgd_at_seconds(pgd_at, vanilla, images, labels)
        per_task = _meta_seconds(mp_snn, vanilla, images, labels)
        t_meta = sum(per_task.values()) / len(per_task)
        defended = build_stochastic_model(copy.deepcopy(vanilla), NoiseConfig(), (HEIGHT, WIDTH)).eval()
        vanilla.eval()
        batch = torch.rand(64, 3, HEIGHT, WIDTH, generator=generator)
        rates = {}
        for name, model in (("vanilla", vanilla), ("defended", defended)):
            with torch.no_grad():
                rates[name] = len(batch) / best_time(lambda m=model: m(batch), repeats=3, warmup=1)
    finally:
        torch.set_num_threads(previous)
    note = f"small_cnn {HEIGHT}x{WIDTH}, batch {P}x{K}, PGD 7 steps, 1 thread, best of 3"
    return [
        Measurement("PGD-AT iteration", t_pgd, "s", note),
        *(Measurement(f"MP-SNN meta-iteration, test task {t}", v, "s", note) for t, v in per_task.items()),
        Measurement("MP-SNN meta-iteration", t_meta, "s", "mean over the 3 equally likely meta-test tasks"),
        Measurement("MP-SNN / PGD-AT iteration", t_meta / t_pgd, "ratio", "thesis: a minor increase"),
        Measurement("vanilla forward", rates["vanilla"], "images/s", "eval mode, batch 64"),
        Measurement("defended / vanilla forward", rates["defended"] / rates["vanilla"], "ratio", "noise on"),
    ]
