"""Training-seed replicates of chapter 4's claim cells (issue 12: a claim needs the spread over training seeds).

The main stages train every Re-ID model once (``reid.models.<m>.train.seed``) and attack it with the whole grid
(``attack@<m>``), then score every model on the others' adversarial images (``attack_report``, Table 4.5).
:func:`replicate_seed` repeats what the chapter-4 claims compare for one more training seed ``k``: each model of
``attack.replicates.models`` is retrained with seed ``k`` (its own ``train`` settings otherwise), attacked with
``attack.replicates.attacks`` at ``attack.replicates.budget`` exactly as the grid does (the same attack configs and
``attack.seed``), and scored clean, under each attack (rank-1, mAP, SSIM), and on every other replicated model's
adversarial images of ``attack.replicates.transfer``. With the main stages' seed these are the per-seed values the
claims pair by seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from advreid.attacks.evaluation import attack_split, rank_scores
from advreid.attacks.grid import AttackParams, clean_result, load_source
from advreid.attacks.report import features_of, score_with
from advreid.params import ParamsError, build, require_replicate_seeds
from advreid.progress import progress
from advreid.reid.checkpoint import ReIDParams, model_entry
from advreid.reid.engine import save_checkpoint
from advreid.reid.evaluation import EvalSettings
from advreid.reid.training import TrainSettings, train_reid

SCORES = ("rank1", "mAP", "ssim")


@dataclass(frozen=True)
class AttackReplicateSettings:
    """``attack.replicates``: the extra training seeds and what each replicates (the chapter-4 claims' cells)."""

    seeds: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ("pgd", "wma")
    budget: str = "eps8"
    transfer: tuple[str, ...] = ("wma",)  # attacks also scored on every other replicated model (Table 4.5)

    def check(self, where: str, reid: ReIDParams, params: AttackParams) -> AttackReplicateSettings:
        """Raise ParamsError naming the key: seeds distinct non-negative integers that no replicated model's main
        training uses, models of ``reid.models``, attacks and budget of the ``attack`` grid, transfer among attacks."""
        unknown = sorted(set(self.models) - set(reid.models))
        if unknown or not self.models:
            got = f"{unknown} not in reid.models {sorted(reid.models)}" if unknown else "an empty list"
            raise ParamsError(f"{where}.models: need Re-ID models, got {got}")
        main_seeds = {f"reid.models.{m}.train.seed": model_entry(reid.models, m).get("train", {}).get("seed", 0)
                      for m in self.models}  # fmt: skip
        require_replicate_seeds(self.seeds, where, main_seeds)
        unknown = sorted(set(self.attacks) - set(params.attacks))
        if unknown or not self.attacks:
            got = f"{unknown} not in attack.attacks {sorted(params.attacks)}" if unknown else "an empty list"
            raise ParamsError(f"{where}.attacks: need attacks of the grid, got {got}")
        if self.budget not in params.budgets:
            raise ParamsError(f"{where}.budget: {self.budget!r} not in attack.budgets {sorted(params.budgets)}")
        for name in self.attacks:
            if params.config(name).side != "query":
                raise ParamsError(f"{where}.attacks: {name!r} perturbs the gallery; the claims compare query attacks")
        unknown = sorted(set(self.transfer) - set(self.attacks))
        if unknown:
            raise ParamsError(f"{where}.transfer: {unknown} not in {where}.attacks {list(self.attacks)}")
        return self


@dataclass(frozen=True)
class ModelPlan:
    arch: str
    train: TrainSettings
    eval: EvalSettings


@dataclass(frozen=True)
class AttackReplicatePlan:
    """Everything :func:`replicate_seed` needs, from the ``reid`` and ``attack`` params sections (checked)."""

    models: dict[str, ModelPlan]
    params: AttackParams
    replicates: AttackReplicateSettings


def replicate_plan(reid: ReIDParams, params: AttackParams, seed: int | None = None) -> AttackReplicatePlan:
    """The checked plan of ``attack.replicates``; with ``seed``, it must be one of its seeds (ParamsError)."""
    replicates = build(AttackReplicateSettings, params.replicates, "attack.replicates").check(
        "attack.replicates", reid, params
    )
    if seed is not None and seed not in replicates.seeds:
        raise ParamsError(f"attack.replicates.seeds: {seed} is not one of {list(replicates.seeds)}")
    models = {}
    for name in replicates.models:
        entry = model_entry(reid.models, name)
        train_where, eval_where = f"reid.models.{name}.train", f"reid.models.{name}.eval"
        models[name] = ModelPlan(
            entry["arch"],
            build(TrainSettings, entry.get("train", {}), train_where).check(train_where),
            build(EvalSettings, entry.get("eval", {}), eval_where).check(eval_where),
        )
    return AttackReplicatePlan(models, params, replicates)


@dataclass(frozen=True)
class AttackReplicate:
    """What :func:`replicate_seed` returns."""

    seed: int
    queries: int
    cells: dict[str, dict[str, dict[str, float]]]  # model -> clean | <attack>-<budget> -> rank1, mAP (, ssim)
    transfer: dict[str, dict[str, dict[str, float]]]  # "A->B" -> <attack>-<budget> -> B's rank1, mAP
    seconds: dict[str, float]  # per model: training and attacks (MLflow only)


def replicate_seed(
    seed: int, plan: AttackReplicatePlan, source_dir: Path, out_dir: Path, *, device: torch.device, root: Path
) -> AttackReplicate:
    """Train every model of ``plan`` with ``seed``, attack and score it (see the module doc); the models are
    written to ``out_dir/<model>.pt`` (the format of ``train_reid``)."""
    import time

    params, replicates = plan.params, plan.replicates
    budget = params.budget(replicates.budget)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict[str, dict[str, float]]] = {}
    adversarial: dict[str, dict[str, torch.Tensor]] = {}
    scorers: dict[str, tuple[torch.nn.Module, dict, EvalSettings, tuple[int, int]]] = {}
    seconds: dict[str, float] = {}
    queries = set()
    for name, model_plan in progress(plan.models.items(), desc=f"attack seed {seed}", unit="model"):
        started = time.perf_counter()
        settings = replace(model_plan.train, seed=seed)
        trained = train_reid(model_plan.arch, settings, source_dir, None, device=device, root=root)
        save_checkpoint(out_dir / f"{name}.pt", trained.model, epoch=len(trained.history), history=trained.history,
                        meta={**trained.meta, "seed": seed})  # fmt: skip
        seconds[f"{name}.train"] = time.perf_counter() - started
        model = trained.model.eval()
        size = (settings.height, settings.width)
        splits = load_source(model, source_dir, size, params.batch_size, device, root)
        scorers[name] = (model, splits, model_plan.eval, size)
        queries.add(len(splits["query"].labels))
        cells[name] = {"clean": _scores(rank_scores(clean_result(splits, model_plan.eval)))}
        adversarial[name] = {}
        for attack in replicates.attacks:
            outcome = attack_split(
                model, params.config(attack), splits, **budget.pixels(), device=device, batch_size=params.batch_size,
                seed=params.seed, metric=model_plan.eval.metric, ap_convention=model_plan.eval.ap_convention,
            )  # fmt: skip
            cell = f"{attack}-{replicates.budget}"
            cells[name][cell] = _scores(outcome.metrics)
            seconds[f"{name}.{cell}"] = outcome.seconds
            if attack in replicates.transfer:
                adversarial[name][cell] = outcome.images
    transfer: dict[str, dict[str, dict[str, float]]] = {}
    for crafted_on, images in adversarial.items():
        for scored_on, (model, splits, settings, size) in scorers.items():
            if scored_on == crafted_on or not images:
                continue
            with torch.no_grad():
                transfer[f"{crafted_on}->{scored_on}"] = {
                    cell: _scores(
                        score_with(splits, "query", features_of(model, x, size, params.batch_size, device), settings)
                    )  # fmt: skip
                    for cell, x in images.items()
                }
    if len(queries) != 1:
        raise ValueError(f"{source_dir}: the replicated models scored different query counts {sorted(queries)}")
    return AttackReplicate(seed, queries.pop(), cells, transfer, seconds)


def _scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in SCORES if k in metrics}
