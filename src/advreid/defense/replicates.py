"""Training-seed replicates of chapter 5's claim cells (issue 12: a claim needs the spread over training seeds).

The main stages train and score one seed (``train_reid@<defense.model>``'s seed and ``defense.train.seed``) on the
whole protocol. :func:`replicate_seed` repeats what the claims compare for one more seed ``k``: it trains the
vanilla model with seed ``k`` (the ``reid.models.<defense.model>.train`` settings), fine-tunes each defense of
``defense.replicates.defenses`` from it with seed ``k``, and scores every model clean and under the claims' attacks
at the claims' budget with the main protocol's scoring (white-box with the noise on, EOT, mean over evaluation
draws). Together with the main stages' seed these are the per-seed values the claims pair by seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from advreid.defense.evaluation import EvalProtocol, attack_cells, evenly_spaced, load_split_tensors
from advreid.defense.noise import NoiseConfig, build_stochastic_model
from advreid.defense.training import DefenseParams, DefenseSettings, save_defended_model, train_defense
from advreid.params import ParamsError, build, require_replicate_seeds
from advreid.reid.checkpoint import ReIDParams, model_entry
from advreid.reid.engine import save_checkpoint
from advreid.reid.training import TrainSettings, train_reid

VANILLA = "vanilla"


@dataclass(frozen=True)
class ReplicateSettings:
    """``defense.replicates``: the extra training seeds and what each replicates (the claims' cells)."""

    seeds: tuple[int, ...] = ()
    defenses: tuple[str, ...] = ("mp_snn", "mp_snn_no_fca", "l_tot")
    attacks: tuple[str, ...] = ("pgd",)
    budget: str = "eps8"

    def check(
        self, where: str, defenses: tuple[str, ...], protocol: EvalProtocol, main_seeds: Mapping[str, int]
    ) -> ReplicateSettings:
        """Raise ParamsError naming the key: the seeds must be distinct non-negative integers other than the main
        stages' (``main_seeds``: key -> seed), the defenses trained ones, the attacks and budget the protocol's."""
        require_replicate_seeds(self.seeds, where, main_seeds)
        unknown = sorted(set(self.defenses) - set(defenses))
        if unknown or not self.defenses:
            got = f"{unknown} not in defense.defenses {list(defenses)}" if unknown else "an empty list"
            raise ParamsError(f"{where}.defenses: need trained defenses, got {got}")
        unknown = sorted(set(self.attacks) - set(protocol.attacks))
        if unknown:
            raise ParamsError(f"{where}.attacks: {unknown} not in defense.eval.attacks {sorted(protocol.attacks)}")
        if self.budget not in protocol.budgets:
            raise ParamsError(f"{where}.budget: {self.budget!r} not in defense.eval.budgets {sorted(protocol.budgets)}")
        return self


@dataclass(frozen=True)
class ReplicatePlan:
    """Everything :func:`replicate_seed` needs, from the ``reid`` and ``defense`` params sections (checked)."""

    arch: str
    reid_settings: TrainSettings
    protocol: EvalProtocol
    replicates: ReplicateSettings
    defense_settings: dict[str, DefenseSettings]


def replicate_plan(reid: ReIDParams, params: DefenseParams, seed: int | None = None) -> ReplicatePlan:
    """The checked plan of ``defense.replicates``; with ``seed``, it must be one of its seeds (ParamsError)."""
    entry = model_entry(reid.models, params.model)
    where = f"reid.models.{params.model}.train"
    reid_settings = build(TrainSettings, entry.get("train", {}), where).check(where)
    protocol = params.protocol()
    main_seeds = {f"{where}.seed": reid_settings.seed, "defense.train.seed": params.train.get("seed", 0)}
    replicates = build(ReplicateSettings, params.replicates, "defense.replicates").check(
        "defense.replicates", params.defenses, protocol, main_seeds
    )
    if seed is not None and seed not in replicates.seeds:
        raise ParamsError(f"defense.replicates.seeds: {seed} is not one of {list(replicates.seeds)}")
    settings = {name: params.settings(name) for name in replicates.defenses}
    return ReplicatePlan(entry["arch"], reid_settings, protocol, replicates, settings)


@dataclass(frozen=True)
class Replicate:
    """What :func:`replicate_seed` returns: the scored cells per model."""

    seed: int
    queries: int  # scored queries (evenly spaced, defense.eval.queries)
    cells: dict[str, dict[str, dict[str, Any]]]  # model -> cell name (clean, pgd-eps8, ...) -> scores
    seconds: dict[str, float]  # attack cells' wall-clock seconds (MLflow only)


def replicate_seed(
    seed: int, plan: ReplicatePlan, source_dir: Path, out_dir: Path, *, device: torch.device, root: Path
) -> Replicate:
    """Train vanilla and every defense of ``plan`` with ``seed`` and score them (see the module doc); the models
    are written to ``out_dir/<model>.pt``."""
    arch, reid_settings, protocol, replicates = plan.arch, plan.reid_settings, plan.protocol, plan.replicates
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = train_reid(arch, replace(reid_settings, seed=seed), source_dir, None, device=device, root=root)
    vanilla_path = out_dir / f"{VANILLA}.pt"
    save_checkpoint(vanilla_path, trained.model, epoch=len(trained.history), history=trained.history,
                    meta=trained.meta)  # fmt: skip
    vanilla = build_stochastic_model(trained.model.eval(), NoiseConfig(isotropic=False, anisotropic=False), (1, 1))
    models = {VANILLA: vanilla}
    for name, settings in plan.defense_settings.items():
        defended = train_defense(
            name, replace(settings, seed=seed), vanilla_path, arch, source_dir, None, device=device, root=root
        )
        save_defended_model(out_dir / f"{name}.pt", defended)
        models[name] = defended.model
    size = (reid_settings.height, reid_settings.width)
    query = load_split_tensors(source_dir, "query", size, root)
    gallery = load_split_tensors(source_dir, "gallery", size, root)
    rows = evenly_spaced(protocol.queries, len(query.labels))
    cells = protocol.budget_cells(replicates.attacks, replicates.budget)
    scored, seconds = {}, {}
    for name, model in models.items():
        results = attack_cells(model, vanilla, query, gallery, rows, cells, protocol.scoring_settings(), device)
        for cell, values in results.items():
            if "seconds" in values:
                seconds[f"{name}.{cell}"] = values.pop("seconds")
        scored[name] = results
    return Replicate(seed, len(rows), scored, seconds)
