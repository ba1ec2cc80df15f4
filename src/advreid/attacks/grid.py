"""The chapter-4 attack grid and WMA's sweeps (thesis Tables 4.1-4.4 and 4.6, Figs. 4.6-4.7): the ``attack``
params section, the clean splits with their features, every attack at every budget scored under the model's
protocol, the saved adversarial payloads and the CMC table.

Every attack of ``attack.attacks`` (an optimiser and a Re-ID objective, :class:`AttackConfig`) runs at every budget of
``attack.budgets`` on the query split (AMA on its gallery split) and is scored by
:func:`advreid.attacks.evaluation.attack_split` under the model's evaluation protocol: CMC rank-1/5/10, mAP and mINP
before and after, SSIM, MMD between clean and adversarial features. Features are single forward passes (no
mirror-image averaging), so the scored model is the attacked one; the adversarial images are rounded to 8 bits inside
the L-inf ball (WMA's, inside its Wasserstein ball, to the nearest 8-bit level) before they are scored and saved.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from advreid.attacks.evaluation import AttackConfig, AttackOutcome, ReIDSplit, attack_split, evenly_spaced, rank_scores
from advreid.data.torch_data import ManifestImages, load_split
from advreid.io import atomic_path
from advreid.params import ParamsError, build, require, require_counts
from advreid.progress import progress
from advreid.reid.evaluation import EvalSettings
from advreid.reid.features import extract_features
from advreid.reid.metrics import RankResult, evaluate_rank


@dataclass(frozen=True)
class Budget:
    """``attack.budgets.<name>``: L-inf radius and step size in 1/255 pixel units, and the number of steps."""

    eps: float
    step: float
    steps: int

    def check(self, where: str) -> Budget:
        # eps and step are in 1/255 units: (0, 255] is (0, 1] in pixel units
        require(
            0 < self.eps <= 255, f"{where}.eps", "in (0, 255] (1/255 pixel units, so at most 1 in pixels)", self.eps
        )
        require(0 <= self.step <= 255, f"{where}.step", "in [0, 255] (1/255 pixel units)", self.step)
        require_counts(self, where, ("steps",))
        return self

    def pixels(self) -> dict[str, float | int]:
        """The keyword arguments of :func:`attack_split`, in [0, 1] pixel units."""
        return {"eps": self.eps / 255, "step": self.step / 255, "steps": self.steps}


@dataclass(frozen=True)
class SweepSettings:
    """``attack.sweep``: WMA (the ``attack`` entry) on ``queries`` evenly spaced queries of ``model``, ``steps`` steps
    of ``budget``; each lambda (Fig. 4.6), then each kernel size at each L-inf radius of ``eps`` (Fig. 4.7)."""

    model: str
    attack: str = "wma"
    budget: str = "eps8"
    steps: int = 3
    queries: int = 12
    lambdas: tuple[float, ...] = (1.0, 30.0, 300.0, 3000.0)
    kernel_sizes: tuple[int, ...] = (3, 5, 7, 9)
    eps: tuple[float, ...] = (4.0, 8.0)  # 1/255
    images: int = 2  # queries shown in the lambda figure

    def check(self) -> SweepSettings:
        require_counts(self, "attack.sweep", ("steps", "queries"))
        require_counts(self, "attack.sweep", ("images",), minimum=0)
        for index, eps in enumerate(self.eps):
            require(0 < eps <= 255, f"attack.sweep.eps[{index}]", "in (0, 255] (1/255 pixel units)", eps)
        for index, size in enumerate(self.kernel_sizes):
            require(size >= 1, f"attack.sweep.kernel_sizes[{index}]", ">= 1", size)
        if not self.lambdas or not self.kernel_sizes or not self.eps:
            raise ParamsError("attack.sweep: lambdas, kernel_sizes and eps must each list at least one value")
        return self


@dataclass(frozen=True)
class Cell:
    """One grid cell: ``<attack>-<budget>``."""

    attack: str
    config: AttackConfig
    budget_name: str
    budget: Budget

    @property
    def name(self) -> str:
        return f"{self.attack}-{self.budget_name}"


@dataclass(frozen=True)
class AttackParams:
    """The ``attack`` section."""

    budgets: dict = field(default_factory=dict)
    attacks: dict = field(default_factory=dict)
    batch_size: int = 72  # images attacked at once
    seed: int = 0  # random starts and targeted-attack identities
    sweep: dict = field(default_factory=dict)  # SweepSettings
    report: dict = field(default_factory=dict)  # read by attack_report
    replicates: dict = field(default_factory=dict)  # attack_seed@<k>: advreid.attacks.replicates

    def check(self) -> AttackParams:
        if not self.budgets or not self.attacks:
            raise ParamsError("attack: name at least one entry under budgets and one under attacks")
        for name in [*self.budgets, *self.attacks]:
            if not str(name).replace("_", "").isalnum():
                raise ParamsError(f"attack: {name!r} is not a valid name (letters, digits and '_': it names files)")
        if self.batch_size < 1:
            raise ParamsError(f"attack.batch_size: must be >= 1, got {self.batch_size}")
        self.grid()
        return self

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise ParamsError(f"attack.budgets has no '{name}'; known: {sorted(self.budgets)}")
        return build(Budget, self.budgets[name], f"attack.budgets.{name}").check(f"attack.budgets.{name}")

    def config(self, name: str) -> AttackConfig:
        if name not in self.attacks:
            raise ParamsError(f"attack.attacks has no '{name}'; known: {sorted(self.attacks)}")
        where = f"attack.attacks.{name}"
        try:
            return build(AttackConfig, self.attacks[name], where).check(where)
        except ParamsError:
            raise
        except ValueError as err:
            raise ParamsError(str(err)) from err

    def grid(self) -> list[Cell]:
        """Every attack at every budget, attacks in params order."""
        return [Cell(a, self.config(a), b, self.budget(b)) for a in self.attacks for b in self.budgets]


def load_source(
    model: nn.Module, processed_dir: Path, size: tuple[int, int], batch_size: int, device: torch.device, root: Path
) -> dict[str, ReIDSplit]:
    """Query and gallery of a processed dataset at ``size`` (H, W), with their clean features."""
    splits = {}
    for split in ("query", "gallery"):
        frame, raw_root = load_split(processed_dir, split, root)
        images = ManifestImages(frame, raw_root, size=size)
        loader = DataLoader(images, batch_size=batch_size, shuffle=False)
        features, labels, cameras = extract_features(model, loader, device, flip=False)
        splits[split] = ReIDSplit(images, features, labels, cameras)
    return splits


def clean_result(splits: dict[str, ReIDSplit], settings: EvalSettings, rows: Tensor | None = None) -> RankResult:
    """Retrieval of the clean queries (``rows`` of them, default all) against the clean gallery."""
    query, gallery = splits["query"], splits["gallery"]
    rows = torch.arange(len(query.labels)) if rows is None else rows
    return evaluate_rank(
        query.features[rows],
        gallery.features,
        query.labels[rows],
        gallery.labels,
        query.cameras[rows],
        gallery.cameras,
        metric=settings.metric,
        ap_convention=settings.ap_convention,
    )


def cell_payload(outcome: AttackOutcome, attacked: ReIDSplit, **info: Any) -> dict[str, Any]:
    """The contents of ``data/adversarial/<model>/<cell>.pt``: plain types only, for ``weights_only`` loading."""
    frame = attacked.images.frame  # ManifestImages: one manifest row per image, in split order
    return {
        "images": outcome.images,
        "path": frame["path"].astype(str).tolist(),
        "sha256": frame["sha256"].astype(str).tolist(),
        "label": [int(v) for v in frame["label"]],
        "camera": [int(v) for v in frame["camera"]],
        **info,
    }


def attack_grid(
    model: nn.Module,
    splits: dict[str, ReIDSplit],
    params: AttackParams,
    settings: EvalSettings,
    out_dir: Path,
    *,
    device: torch.device,
    model_name: str,
    dataset: str,
    on_cell: Callable[[str, AttackOutcome], None] | None = None,
) -> tuple[dict[str, Any], dict[str, RankResult]]:
    """Run every cell of the grid and save its adversarial images in ``out_dir`` (written as one directory, atomically).

    Returns the metrics JSON and the ranking results (``clean`` and one per cell); ``on_cell(name, outcome)`` is
    called after each cell."""
    options = {"metric": settings.metric, "ap_convention": settings.ap_convention}
    clean = clean_result(splits, settings)
    cells, results = {}, {"clean": clean}
    grid = params.grid()
    with atomic_path(out_dir, is_dir=True) as tmp:
        for cell in progress(grid, desc=f"attack {model_name}", unit="cell"):
            outcome = attack_split(
                model,
                cell.config,
                splits,
                **cell.budget.pixels(),
                device=device,
                batch_size=params.batch_size,
                seed=params.seed,
                **options,
            )
            info = {"model": model_name, "dataset": dataset, "split": cell.config.side, "attack": cell.attack}
            info.update(budget=cell.budget_name, budget_values=asdict(cell.budget), config=cell.config.record())
            torch.save(cell_payload(outcome, splits[cell.config.side], **info), tmp / f"{cell.name}.pt")
            cells[cell.name] = {
                "attack": cell.attack,
                "budget": cell.budget_name,
                "method": cell.config.method,
                "objective": cell.config.objective,
                "eps": cell.budget.eps,
                "steps": cell.budget.steps,
                **outcome.metrics,
            }
            results[cell.name] = outcome.result
            if on_cell is not None:
                on_cell(cell.name, outcome)
    protocol = {"distance": settings.metric, "ap_convention": settings.ap_convention, "flip": False}
    metrics = {
        "model": model_name,
        "dataset": dataset,
        "protocol": protocol,
        "clean": rank_scores(clean),
        "cells": cells,
    }
    return metrics, results


def cmc_csv(results: dict[str, RankResult], max_rank: int = 20) -> str:
    """CSV text: rank, then one CMC column (values in [0, 1]) per result, e.g. clean and every cell."""
    length = min(max_rank, *(len(result.cmc) for result in results.values()))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", *results])
    for i in range(length):
        writer.writerow([i + 1, *(f"{float(result.cmc[i]):.6f}" for result in results.values())])
    return buffer.getvalue()


def wma_sweep(
    model: nn.Module,
    splits: dict[str, ReIDSplit],
    params: AttackParams,
    sweep: SweepSettings,
    settings: EvalSettings,
    *,
    device: torch.device,
) -> tuple[dict[str, Any], dict[float, AttackOutcome], Tensor]:
    """WMA at each lambda (Fig. 4.6) and at each kernel size x L-inf radius (Fig. 4.7) on a subset of queries.

    Returns the metrics JSON, the lambda outcomes (for the figure) and the attacked query rows."""
    base = params.config(sweep.attack)
    if base.method != "wma":
        raise ParamsError(f"attack.sweep.attack: '{sweep.attack}' is a {base.method!r} attack; the sweeps vary WMA")
    budget = replace(params.budget(sweep.budget), steps=sweep.steps)
    rows = evenly_spaced(sweep.queries, len(splits["query"].labels))
    options = {"metric": settings.metric, "ap_convention": settings.ap_convention, "rows": rows}
    common = {"device": device, "batch_size": params.batch_size, "seed": params.seed, **options}
    runs = [(lam, replace(base, lam=lam).check("attack.sweep"), budget) for lam in sweep.lambdas]
    runs += [
        ((k, e), replace(base, kernel_size=k).check("attack.sweep"), replace(budget, eps=e))
        for k in sweep.kernel_sizes
        for e in sweep.eps
    ]
    outcomes = {}
    for key, config, b in progress(runs, desc="attack sweep", unit="run"):
        outcomes[key] = attack_split(model, config, splits, **b.pixels(), **common)
    lambdas = {lam: outcomes[lam] for lam in sweep.lambdas}
    metrics = {
        "model": sweep.model,
        "queries": len(rows),
        "budget": {"name": sweep.budget, **asdict(budget)},
        "wma": asdict(base),
        "clean": rank_scores(clean_result(splits, settings, rows)),
        "lambda": {f"{lam:g}": outcome.metrics for lam, outcome in lambdas.items()},
        "kernel": {f"k{k}": {f"eps{e:g}": outcomes[(k, e)].metrics for e in sweep.eps} for k in sweep.kernel_sizes},
    }
    return metrics, lambdas, rows


def convergence_warnings(cells: dict[str, dict[str, Any]]) -> list[str]:
    """One line per WMA cell (``cells``: name -> metrics) whose projections did not all reach the tolerance."""
    return [
        f"{name}: {m['unconverged']} of {m['projections']} Wasserstein projections did not converge within max_iter "
        f"(largest mass error {m['mass_error_max']:.2e}); raise max_iter or lower lam"
        for name, m in cells.items()
        if m.get("unconverged", 0) > 0
    ]
