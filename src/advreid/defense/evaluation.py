"""Clean and attacked CMC / mAP of a (stochastic) defended Re-ID model (thesis 5.3.1-5.3.3), adaptively:

* white-box with the noise on, each gradient EOT-averaged over ``eot_samples`` draws (WMA, thesis Algorithm 1,
  takes no EOT: one draw per step);
* transfer: adversarial images made on the vanilla model, scored on the defense;
* every score is the mean +- std over ``draws`` evaluation draws (fresh noise for the gallery, the clean queries
  and the adversarial images); a deterministic model is scored once;
* a gradient-masking check: white-box PGD rank-1 against eps up to 64/255 must fall towards 0, and white-box
  must not be weaker than transfer.

The attacks are :func:`advreid.attacks.evaluation.attack_split`, the same optimisers, objectives and 8-bit
rounding as the attack stage; the attacker's reference features (the objectives' gallery / clean features) are one
stochastic pass of the defended model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advreid.attacks.evaluation import AttackConfig, AttackOutcome, ReIDSplit, attack_split
from advreid.data.torch_data import ManifestImages, load_split
from advreid.defense.noise import StochasticReIDModel
from advreid.progress import progress
from advreid.reid.metrics import evaluate_rank
from advreid.reid.reranking import k_reciprocal_rerank


@dataclass(frozen=True)
class AttackCell:
    """One attack at one budget (eps, step in [0, 1] pixel units); ``rerank`` also scores with re-ranking."""

    name: str
    config: AttackConfig
    eps: float
    step: float
    steps: int
    rerank: bool = False
    transfer: bool = False  # made on the vanilla model


@dataclass(frozen=True)
class ScoringSettings:
    """How a defense is scored: evaluation draws, EOT draws per attack step, query subset, re-ranking."""

    draws: int = 5
    eot_samples: int = 10
    batch_size: int = 64
    seed: int = 0
    metric: str = "euclidean"
    ap_convention: str = "noninterp"
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def check(self, where: str) -> ScoringSettings:
        if self.draws < 1 or self.eot_samples < 1 or self.batch_size < 1:
            raise ValueError(f"{where}: draws, eot_samples and batch_size must be >= 1")
        return self


class TensorImages:
    """Images held in memory, served like :class:`advreid.data.torch_data.ManifestImages` (``image(i)``)."""

    def __init__(self, images: Tensor):
        self.images = images

    def image(self, index: int) -> Tensor:
        return self.images[index]


@dataclass
class Split:
    """Clean images (N, 3, H, W) in [0, 1] with their labels and cameras (N,)."""

    images: Tensor
    labels: Tensor
    cameras: Tensor


def load_split_tensors(processed: Path, split: str, size: tuple[int, int], root: Path) -> Split:
    """One split of a processed dataset as image, label and camera tensors at ``size`` (height, width)."""
    frame, raw_root = load_split(processed, split, root)
    images = ManifestImages(frame, raw_root, size=size)
    stacked = torch.stack([images.image(i) for i in range(len(images))])
    return Split(stacked, torch.tensor(images.labels).long(), torch.tensor(images.cameras).long())


def is_stochastic(model: StochasticReIDModel) -> bool:
    return bool(model.noise_modules())


def embed_draw(model: StochasticReIDModel, images: Tensor, seed: int, batch_size: int, device: torch.device) -> Tensor:
    """Eval-mode features (N, D) on the CPU, every noise drawn from a generator seeded with ``seed``."""
    model.eval()
    model.set_generator(torch.Generator(device=device).manual_seed(seed))
    try:
        with torch.no_grad():
            return torch.cat([model(b.to(device)).float().cpu() for b in images.split(batch_size)])
    finally:
        model.set_generator(None)


def attack_cells(
    model: StochasticReIDModel,
    vanilla: StochasticReIDModel,
    query: Split,
    gallery: Split,
    query_rows: Tensor,
    cells: list[AttackCell],
    settings: ScoringSettings,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Score ``clean`` and every cell; {cell: {rank1, mAP, rank1_std, mAP_std, draws[, rank1_rerank, ...]}}."""
    stochastic = is_stochastic(model)
    draws = settings.draws if stochastic else 1
    embed = {"batch_size": settings.batch_size, "device": device}
    reference_seed = settings.seed * 1_000_003
    attacked_model = {
        False: _splits(model, query, gallery, reference_seed, embed),
        True: _splits(vanilla, query, gallery, reference_seed, embed) if any(c.transfer for c in cells) else None,
    }
    gallery_draws = [embed_draw(model, gallery.images, reference_seed + 1 + r, **embed) for r in range(draws)]
    query_draws = [embed_draw(model, query.images[query_rows], reference_seed + 101 + r, **embed) for r in range(draws)]
    rerank = any(cell.rerank for cell in cells)
    results = {"clean": _score(query_draws, gallery_draws, query, gallery, query_rows, settings, rerank)}
    # On a stochastic model every white-box attack is EOT-averaged, so e.g. EOT-FGSM and FGSM become one attack:
    # a cell whose effective attack equals an earlier cell's is not recomputed but reported with ``same_as``.
    computed: dict[tuple, str] = {}
    for index, cell in enumerate(progress(cells, desc="defense cells", unit="cell")):
        config = cell.config
        if stochastic and not cell.transfer and config.method != "wma":
            config = replace(config, eot_samples=max(config.eot_samples, settings.eot_samples))
        key = (config, cell.eps, cell.step, cell.steps, cell.rerank, cell.transfer)
        if key in computed:
            results[cell.name] = {**results[computed[key]], "same_as": computed[key]}
            continue
        computed[key] = cell.name
        source = vanilla if cell.transfer else model
        splits = attacked_model[cell.transfer]
        side = config.side
        rows = query_rows if side == "query" else _gallery_rows(query, gallery, query_rows)
        noise_seed = reference_seed + 10_000 * (index + 1) + 5_000
        outcome = attack_with_noise_seed(source, config, cell, splits, rows, settings, device, noise_seed)
        adversarial = outcome.images.float() / 255
        seeds = [reference_seed + 10_000 * (index + 1) + r for r in range(draws)]
        adv_draws = [embed_draw(model, adversarial, s, **embed) for s in seeds]
        if side == "query":
            scored = _score(adv_draws, gallery_draws, query, gallery, query_rows, settings, cell.rerank)
        else:
            replaced = []
            for g, a in zip(gallery_draws, adv_draws, strict=True):
                g = g.clone()
                g[rows] = a
                replaced.append(g)
            scored = _score(query_draws, replaced, query, gallery, query_rows, settings, cell.rerank)
        results[cell.name] = {**scored, "eps": cell.eps * 255, "steps": cell.steps, "eot_samples": config.eot_samples,
                              "transfer": cell.transfer, "seconds": outcome.seconds}  # fmt: skip
    return results


def attack_with_noise_seed(
    source: StochasticReIDModel, config: AttackConfig, cell: AttackCell, splits: dict[str, ReIDSplit], rows: Tensor,
    settings: ScoringSettings, device: torch.device, noise_seed: int,
) -> AttackOutcome:  # fmt: skip
    """``cell``'s attack (with ``config``) on ``source``, every noise draw of the attack (EOT) from a generator seeded
    with ``noise_seed``, not torch's global one (seeded from the OS in every process): a cell repeats run after run,
    whatever ran before it."""
    source.set_generator(torch.Generator(device=device).manual_seed(noise_seed))
    try:
        return attack_split(
            source, config, splits, eps=cell.eps, step=cell.step, steps=cell.steps, device=device,
            seed=settings.seed, rows=rows, metric=settings.metric, ap_convention=settings.ap_convention,
            batch_size=settings.batch_size,
        )  # fmt: skip
    finally:
        source.set_generator(None)


def masking_check(
    results: dict[str, dict[str, Any]], sweep: dict[float, str], whitebox: str, transfer: str | None,
    max_rank1: float, tolerance: float,
) -> dict[str, Any]:  # fmt: skip
    """The gradient-masking sanity check: ``sweep`` maps eps (1/255) to its white-box cell; the largest eps must
    bring rank-1 to at most ``max_rank1``, and the ``whitebox`` cell must not score above the ``transfer`` cell by
    more than ``tolerance`` (rank-1 fraction)."""
    largest = max(sweep)
    final = results[sweep[largest]]["rank1"]
    check: dict[str, Any] = {
        "eps_max": largest,
        "rank1_at_eps_max": final,
        "falls_to_zero": bool(final <= max_rank1),
    }
    if transfer is not None:
        w, t = results[whitebox]["rank1"], results[transfer]["rank1"]
        check.update(whitebox_rank1=w, transfer_rank1=t, whitebox_not_weaker=bool(w <= t + tolerance))
    check["passed"] = bool(check["falls_to_zero"] and check.get("whitebox_not_weaker", True))
    return check


def _splits(model, query: Split, gallery: Split, seed: int, embed: dict) -> dict[str, ReIDSplit]:
    return {
        "query": ReIDSplit(TensorImages(query.images), embed_draw(model, query.images, seed, **embed), query.labels,
                           query.cameras),
        "gallery": ReIDSplit(TensorImages(gallery.images), embed_draw(model, gallery.images, seed + 7, **embed),
                             gallery.labels, gallery.cameras),
    }  # fmt: skip


def _gallery_rows(query: Split, gallery: Split, query_rows: Tensor) -> Tensor:
    """AMA's attacked gallery rows: the gallery images of the identities of the scored queries."""
    identities = torch.unique(query.labels[query_rows])
    return torch.nonzero(torch.isin(gallery.labels, identities)).flatten()


def _score(
    query_draws: list[Tensor],
    gallery_draws: list[Tensor],
    query: Split,
    gallery: Split,
    query_rows: Tensor,
    settings: ScoringSettings,
    rerank: bool,
) -> dict[str, Any]:
    options = {"ap_convention": settings.ap_convention}
    labels = (query.labels[query_rows], gallery.labels, query.cameras[query_rows], gallery.cameras)
    scores: dict[str, list[float]] = {"rank1": [], "mAP": [], "rank1_rerank": [], "mAP_rerank": []}
    for qf, gf in zip(query_draws, gallery_draws, strict=True):
        result = evaluate_rank(qf, gf, *labels, metric=settings.metric, **options)
        scores["rank1"].append(result.rank(1))
        scores["mAP"].append(result.mAP)
        if rerank:
            distance = k_reciprocal_rerank(
                qf, gf, settings.k1, settings.k2, settings.lambda_value, metric=settings.metric
            )
            reranked = evaluate_rank(qf, gf, *labels, distance_fn=distance, **options)
            scores["rank1_rerank"].append(reranked.rank(1))
            scores["mAP_rerank"].append(reranked.mAP)
    out: dict[str, Any] = {"draws": len(query_draws)}
    for key, values in scores.items():
        if values:
            out[key] = float(np.mean(values))
            out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


@dataclass(frozen=True)
class EvalProtocol:
    """The evaluation of every chapter-5 model (params ``defense.eval``): ``attacks`` (name -> AttackConfig
    fields) at every budget of ``budgets`` (name -> eps, step in 1/255, steps, rerank, and optionally the list of
    ``attacks`` run at that budget; default all), the ``transfer`` attacks
    also made on the vanilla model at ``transfer_budget``, the masking sweep (``sweep_attack`` at each eps of
    ``sweep_eps`` with ``sweep_steps`` steps of 2.5 eps / steps, Madry et al.'s rule) and ``queries`` evenly
    spaced queries (0: all). ``model_attacks`` (model name -> attack names) limits a model's white-box cells to
    those attacks at every budget (the transfer cells and the sweep always run): the demo scores its ablations on
    the columns of Tables 5.6-5.7 only."""

    attacks: dict
    budgets: dict
    transfer: tuple[str, ...] = ("pgd",)
    transfer_budget: str = "eps8"
    sweep_attack: str = "pgd"
    sweep_eps: tuple[float, ...] = (2.0, 8.0, 16.0, 32.0, 64.0)
    sweep_steps: int = 7
    masking_max_rank1: float = 0.1
    masking_tolerance: float = 0.02
    queries: int = 0
    scoring: dict | None = None  # ScoringSettings fields
    model_attacks: dict | None = None  # model name -> the attack names of its white-box cells (default: all)

    def check(self, where: str, models: Iterable[str] | None = None) -> EvalProtocol:
        """Raise ValueError naming the key of what is wrong; ``models``: the evaluated model names, which the keys
        of ``model_attacks`` must be."""
        for name, budget in self.budgets.items():
            if set(budget) - {"eps", "step", "steps", "rerank", "attacks"} or not {"eps", "step", "steps"} <= set(
                budget
            ):
                raise ValueError(
                    f"{where}.budgets.{name}: needs eps, step, steps (and optional rerank, attacks), got {budget}"
                )
            if budget["eps"] < 0 or budget["step"] < 0 or budget["steps"] < 1:
                raise ValueError(f"{where}.budgets.{name}: need eps >= 0, step >= 0, steps >= 1, got {budget}")
            unknown = sorted(set(budget.get("attacks", ())) - set(self.attacks))
            if unknown:
                raise ValueError(
                    f"{where}.budgets.{name}.attacks: {unknown} not in {where}.attacks {sorted(self.attacks)}"
                )
        for name in (*self.transfer, self.sweep_attack):
            if name not in self.attacks:
                raise ValueError(f"{where}: attack {name!r} is not in {where}.attacks {sorted(self.attacks)}")
        if self.transfer_budget not in self.budgets:
            raise ValueError(f"{where}.transfer_budget: {self.transfer_budget!r} is not in {sorted(self.budgets)}")
        if not self.sweep_eps or min(self.sweep_eps) < 0 or self.sweep_steps < 1 or self.queries < 0:
            raise ValueError(f"{where}: need non-negative sweep_eps, sweep_steps >= 1 and queries >= 0")
        for name in self.attacks:
            self.config(name, where)
        for model, names in (self.model_attacks or {}).items():
            if models is not None and model not in models:
                raise ValueError(f"{where}.model_attacks: {model!r} is not an evaluated model {sorted(models)}")
            unknown = sorted(set(names) - set(self.attacks))
            if unknown or not names:
                got = f"unknown {unknown}" if unknown else "an empty list"
                raise ValueError(
                    f"{where}.model_attacks.{model}: need a non-empty list of {where}.attacks {sorted(self.attacks)}, "
                    f"got {got}"
                )
        self.scoring_settings().check(f"{where}.scoring")
        return self

    def config(self, name: str, where: str = "defense.eval") -> AttackConfig:
        return AttackConfig(**self.attacks[name]).check(f"{where}.attacks.{name}")

    def scoring_settings(self) -> ScoringSettings:
        return ScoringSettings(**(self.scoring or {}))

    def budget_cells(self, attacks: Iterable[str], budget: str) -> list[AttackCell]:
        """The white-box cells of ``attacks`` at ``budget`` alone (no transfer, no sweep), named as :meth:`cells`
        names them."""
        b = self.budgets[budget]
        return [AttackCell(f"{name}-{budget}", self.config(name), b["eps"] / 255, b["step"] / 255, b["steps"],
                           bool(b.get("rerank", False))) for name in attacks]  # fmt: skip

    def cells(self, stochastic: bool, model: str | None = None) -> tuple[list[AttackCell], dict[float, str]]:
        """Every attack x budget (of ``model_attacks[model]`` when given), the transfer cells (stochastic models
        only) and the sweep; and eps -> sweep cell."""
        cells = []
        only = (self.model_attacks or {}).get(model)
        for budget_name, b in self.budgets.items():
            for name in b.get("attacks", self.attacks):  # a budget may name its attacks (Table 5.5: MI-FGSM, SMA)
                if only is not None and name not in only:
                    continue
                cells.append(AttackCell(f"{name}-{budget_name}", self.config(name), b["eps"] / 255, b["step"] / 255,
                                        b["steps"], bool(b.get("rerank", False))))  # fmt: skip
        if stochastic:
            b = self.budgets[self.transfer_budget]
            for name in self.transfer:
                cells.append(AttackCell(f"transfer_{name}-{self.transfer_budget}", self.config(name), b["eps"] / 255,
                                        b["step"] / 255, b["steps"], transfer=True))  # fmt: skip
        sweep = {}
        for eps in self.sweep_eps:
            name = f"sweep_{self.sweep_attack}-eps{eps:g}"
            step = 2.5 * eps / self.sweep_steps / 255
            cells.append(AttackCell(name, self.config(self.sweep_attack), eps / 255, step, self.sweep_steps))
            sweep[float(eps)] = name
        return cells, sweep


def evenly_spaced(count: int, total: int) -> Tensor:
    """``count`` evenly spaced indices of ``range(total)`` (all of them when count is 0 or >= total)."""
    if count == 0 or count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long().unique()


def evaluate_defense(
    model: StochasticReIDModel,
    vanilla: StochasticReIDModel,
    query: Split,
    gallery: Split,
    protocol: EvalProtocol,
    device: torch.device,
    name: str | None = None,
) -> dict[str, Any]:
    """Clean, white-box, transfer and sweep cells of ``model`` (``name``: its key of ``protocol.model_attacks``)
    and its gradient-masking check (the metrics JSON)."""
    stochastic = is_stochastic(model)
    cells, sweep = protocol.cells(stochastic, name)
    rows = evenly_spaced(protocol.queries, len(query.labels))
    results = attack_cells(model, vanilla, query, gallery, rows, cells, protocol.scoring_settings(), device)
    whitebox = f"{protocol.sweep_attack}-{protocol.transfer_budget}"
    transfer = f"transfer_{protocol.sweep_attack}-{protocol.transfer_budget}" if stochastic else None
    if transfer is not None and transfer not in results:
        transfer = None
    masking = masking_check(
        results, sweep, whitebox if whitebox in results else sweep[max(sweep)], transfer,
        protocol.masking_max_rank1, protocol.masking_tolerance,
    )  # fmt: skip
    return {
        "stochastic": stochastic,
        "queries": len(rows),
        "gallery": len(gallery.labels),
        "cells": results,
        "sweep": {f"{eps:g}": results[name]["rank1"] for eps, name in sweep.items()},
        "masking": masking,
    }
