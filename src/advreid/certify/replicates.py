"""Training-seed replicates of chapter 6's claim cells (issue 12: a claim needs the spread over training seeds).

The main stages train each method's defense once per noise level (``train_denoiser@<method>``: sigma index ``i``
with seed ``seed + i``) and certify it with ``seed`` (``certify@<method>``). :func:`replicate_seed` repeats what the
chapter-6 claims compare for one more seed ``k``: each method of ``certify.replicates.methods`` is trained at
``certify.replicates.sigma`` exactly as ``train_denoiser`` trains it with ``seed: k`` (the same settings, the
black box's labels as targets) and certified exactly as ``certify`` does with ``seed: k`` (the same test points,
n0, n, alpha). The black-box classifier is the pipeline's one: the claims compare defenses of a given target.
With the main stages' seed these are the per-seed values the claims pair by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.certification import CertifySettings, certify_method, evenly_spaced
from advreid.certify.defenses import DefenseSettings, load_defense, train_one
from advreid.certify.params import CertifyParams, DenoiserParams
from advreid.certify.training import CLASSIFICATION, DefenseMethod, black_box_scores, get_method
from advreid.params import ParamsError, build, require_replicate_seeds
from advreid.progress import progress


@dataclass(frozen=True)
class CertifyReplicateSettings:
    """``certify.replicates``: the extra seeds and what each replicates (the chapter-6 claims' cells)."""

    seeds: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    sigma: float = 0.25

    def check(self, where: str, methods: tuple[str, ...], training_sigmas: tuple[float, ...],
              certify_sigmas: tuple[float, ...], main_seed: int) -> CertifyReplicateSettings:  # fmt: skip
        """Raise ParamsError naming the key: seeds distinct non-negative integers other than the main stages'
        ``seed``, methods trained ones (``train_denoiser.methods``), sigma one the main stages train and certify."""
        require_replicate_seeds(self.seeds, where, {"seed": main_seed})
        unknown = sorted(set(self.methods) - set(methods))
        if unknown or not self.methods:
            got = f"{unknown} not in train_denoiser.methods {list(methods)}" if unknown else "an empty list"
            raise ParamsError(f"{where}.methods: need trained methods, got {got}")
        for key, sigmas in (("train_denoiser.settings.sigmas", training_sigmas), ("certify.settings.sigmas",
                                                                                  certify_sigmas)):  # fmt: skip
            if not any(np.isclose(self.sigma, s) for s in sigmas):
                raise ParamsError(f"{where}.sigma: {self.sigma:g} is not in {key} {list(sigmas)}")
        return self


@dataclass(frozen=True)
class CertifyReplicatePlan:
    """Everything :func:`replicate_seed` needs (checked): the methods, the training and certification settings,
    ``sigma_index`` (the sigma's position in ``train_denoiser.settings.sigmas``: its training seed offset)."""

    methods: tuple[DefenseMethod, ...]
    training: DefenseSettings
    certify: CertifySettings
    num_points: int
    sigma: float
    sigma_index: int
    replicates: CertifyReplicateSettings


def replicate_plan(
    replicates: dict, training: DenoiserParams, certify: CertifyParams, methods: tuple[str, ...], main_seed: int,
    seed: int | None = None,
) -> CertifyReplicatePlan:  # fmt: skip
    """The checked plan of ``certify.replicates`` (``replicates``) for the checked ``train_denoiser.settings``
    (``training``), ``certify.settings`` (``certify``), ``train_denoiser.methods`` and the main stages' ``seed``;
    with ``seed``, it must be one of its seeds (ParamsError)."""
    where = "certify.replicates"
    settings = build(CertifyReplicateSettings, replicates, where).check(
        where, methods, training.sigmas, certify.sigmas, main_seed
    )
    if seed is not None and seed not in settings.seeds:
        raise ParamsError(f"{where}.seeds: {seed} is not one of {list(settings.seeds)}")
    index = next(i for i, s in enumerate(training.sigmas) if np.isclose(s, settings.sigma))
    return CertifyReplicatePlan(
        tuple(get_method(name) for name in settings.methods),
        DefenseSettings(**{f.name: getattr(training, f.name) for f in fields(DefenseSettings)}),
        CertifySettings(**{f.name: getattr(certify, f.name) for f in fields(CertifySettings)}),
        certify.num_points, settings.sigma, index, settings,
    )  # fmt: skip


@dataclass(frozen=True)
class CertifyReplicate:
    """What :func:`replicate_seed` returns."""

    seed: int
    points: int
    cells: dict[str, dict[str, float]]  # method -> sca, rca_<r> (certified accuracy at each radius), abstain, ...
    seconds: dict[str, float]  # per method: training and certification (MLflow only)


def replicate_seed(
    seed: int,
    plan: CertifyReplicatePlan,
    classifier: nn.Module,
    train_images: Tensor,
    test: tuple[Tensor, Tensor],
    num_classes: int,
    out_dir: Path,
) -> CertifyReplicate:
    """Train and certify every method of ``plan`` with ``seed`` (see the module doc); each defense is written to
    ``out_dir/<method>.pt`` (the format of ``train_denoiser``)."""
    import time

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = black_box_scores(BlackBox(classifier), train_images)  # the black box's labels, as train_method
    test_x, test_y = test
    points = evenly_spaced(test_x.shape[0], plan.num_points)
    grid = np.asarray(sorted(plan.certify.radii), dtype=float)
    cells, seconds = {}, {}
    for method in progress(plan.methods, desc=f"certify seed {seed}", unit="method"):
        started = time.perf_counter()
        path = out_dir / f"{method.name}.pt"
        train_one(method, plan.training, classifier, CLASSIFICATION, train_images, targets, plan.sigma,
                  seed + plan.sigma_index, path)  # fmt: skip
        seconds[f"{method.name}.train"] = time.perf_counter() - started
        defense = load_defense(path, test_x.device)[0]
        started = time.perf_counter()
        rows, _, _ = certify_method(
            lambda sigma, d=defense: nn.Sequential(d, classifier), test_x, test_y, points, num_classes,
            (plan.sigma,), plan.certify, grid, seed, method.name,
        )  # fmt: skip
        seconds[f"{method.name}.certify"] = time.perf_counter() - started
        cells[method.name] = {k: float(v) for k, v in rows[f"{plan.sigma:g}"].items()}
    return CertifyReplicate(seed, len(points), cells, seconds)
