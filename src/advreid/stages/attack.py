"""Stage ``attack@<model>``: white-box attacks on a trained Re-ID model, a grid of attacks x budgets (thesis chapter 4,
Tables 4.1-4.4 and 4.6, and the chapter-5 attack list); with ``--sweep``, stage ``attack_sweep``: WMA's lambda and
transport-kernel sweeps (Figs. 4.6-4.7) on ``attack.sweep.model``.

Every attack of ``attack.attacks`` (an optimiser and a Re-ID objective, :class:`AttackConfig`) runs at every budget of
``attack.budgets`` on the query split of ``reid.source`` (AMA on its gallery split) and is scored under the model's
evaluation protocol: CMC rank-1/5/10, mAP and mINP before and after, SSIM to the clean images, MMD between clean and
adversarial features. Features are single forward passes (no mirror-image averaging), so the scored model is the
attacked one; the adversarial images are rounded to 8 bits inside the L-inf ball before they are scored and saved.

Outputs: ``data/adversarial/<model>/<attack>-<budget>.pt`` per cell, a dict for ``torch.load(weights_only=True)``:
``images`` uint8 (N, 3, H, W), the manifest rows they replace (``path``, ``sha256``, ``label``, ``camera``, in
order), ``split``, ``dataset``, ``model``, ``attack``, ``budget`` (name), ``budget_values`` and ``config``;
``reports/metrics/attack/<model>.json``; ``reports/attack/cmc/<model>.csv`` (rank, clean, one CMC column per cell).
The sweep writes ``reports/metrics/attack_sweep.json``, ``reports/attack/lambda_sweep.png`` and
``reports/attack/kernel_sweep.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from advreid.attacks.evaluation import AttackConfig, AttackOutcome, ReIDSplit, attack_split, rank_scores
from advreid.data.torch_data import ManifestImages, load_split
from advreid.device import select_device, set_threads
from advreid.io import atomic_path, write_json, write_text
from advreid.params import ParamsError, build, load_params, require, require_counts
from advreid.plots import image_grid, save_figure, to_uint8_image
from advreid.reid.checkpoint import ReIDParams, load_trained_model, model_entry
from advreid.reid.evaluation import EvalSettings
from advreid.reid.features import extract_features
from advreid.reid.metrics import RankResult, evaluate_rank
from advreid.settings import apply_environment


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
        for cell in tqdm(grid, desc=f"attack {model_name}", unit="cell", disable=not sys.stderr.isatty()):
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
            info.update(budget=cell.budget_name, budget_values=asdict(cell.budget), config=asdict(cell.config))
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


def evenly_spaced(count: int, total: int) -> Tensor:
    """``count`` evenly spaced indices of ``range(total)`` (all of them when count >= total)."""
    if count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long().unique()


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
    for key, config, b in tqdm(runs, desc="attack sweep", unit="run", disable=not sys.stderr.isatty()):
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


def lambda_figure(
    query: ReIDSplit, rows: Tensor, outcomes: dict[float, AttackOutcome], eps: float, count: int, path: Path
) -> Path:
    """Fig. 4.6: for ``count`` queries, the original and the WMA image at each lambda, and under them the
    perturbations (+-eps spans black to white)."""
    grid, labels = [], []
    for i in range(min(count, len(rows))):
        clean = query.images.image(int(rows[i]))
        adversarial = [outcome.images[i].float() / 255 for outcome in outcomes.values()]
        grid.append([to_uint8_image(clean), *(to_uint8_image(a) for a in adversarial)])
        grid.append([to_uint8_image(0.5 + (a - clean) * (0.5 / max(eps, 1e-12))) for a in adversarial])
        labels += [f"query {int(rows[i])}", "perturbation"]
    # the perturbation rows are one image shorter: shift them under their adversarial images
    grid = [row if i % 2 == 0 else [np.full_like(row[0], 255), *row] for i, row in enumerate(grid)]
    columns = ["original", *(f"λ = {lam:g}" for lam in outcomes)]
    title = "WMA: adversarial images and perturbations for different entropy regularisations lambda"
    return image_grid(grid, path, row_labels=labels, col_labels=columns, title=title)


def kernel_figure(metrics: dict[str, Any], sweep: SweepSettings, path: Path) -> Path:
    """Fig. 4.7: rank-1 and mAP after WMA against the L-inf radius, one line per transport-plan size."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, title in zip(axes, ("rank1", "mAP"), ("CMC rank-1", "mAP"), strict=True):
        for k in sweep.kernel_sizes:
            values = [metrics["kernel"][f"k{k}"][f"eps{e:g}"][key] for e in sweep.eps]
            ax.plot(sweep.eps, values, marker="o", label=f"{k}x{k}")
        ax.axhline(metrics["clean"][key], color="grey", linestyle="--", label="clean")
        ax.set_xlabel("L-inf radius eps (1/255)")
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
    axes[0].legend(title="transport plan", fontsize=7)
    fig.suptitle(f"WMA on {sweep.model}: attack performance for different transport sizes", fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid attack", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a key of reid.models in params.yaml")
    parser.add_argument("--sweep", action="store_true", help="run WMA's lambda and kernel-size sweeps (attack.sweep)")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(AttackParams, load_params("attack", root / "params.yaml"), "attack").check()
    where = f"reid.models.{args.model}.eval"
    settings = build(EvalSettings, model_entry(reid.models, args.model).get("eval", {}), where).check(where)
    sweep = build(SweepSettings, params.sweep, "attack.sweep").check() if args.sweep else None
    if sweep is not None and sweep.model != args.model:
        raise ParamsError(f"attack.sweep.model is '{sweep.model}', not '{args.model}'")
    set_threads(reid.threads, "reid.threads")
    device = select_device(reid.device)
    model, meta = load_trained_model(root / "models" / "reid" / args.model / "model.pt", device)
    if meta["source"] != reid.source:
        raise ParamsError(f"reid.source is '{reid.source}' but model '{args.model}' was trained on '{meta['source']}'")

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    processed = root / "data" / "processed" / reid.source
    manifests = {f"{reid.source}/{s}": processed / f"{s}.parquet" for s in ("query", "gallery")}
    stage = "attack_sweep" if sweep is not None else f"attack@{args.model}"
    logged = {"model": args.model, "source": reid.source, "device": str(device), **asdict(params)}
    with stage_run(stage, logged, manifests=manifests) as run:
        splits = load_source(model, processed, (meta["height"], meta["width"]), params.batch_size, device, root)
        if sweep is not None:
            return _sweep(model, splits, params, sweep, settings, device, root, run)
        metrics, results = attack_grid(
            model,
            splits,
            params,
            settings,
            root / "data" / "adversarial" / args.model,
            device=device,
            model_name=args.model,
            dataset=reid.source,
            on_cell=lambda name, outcome: run.log_metrics({f"seconds.{name}": outcome.seconds}),
        )
        metrics_path = root / "reports" / "metrics" / "attack" / f"{args.model}.json"
        write_json(metrics_path, metrics)
        cmc_path = root / "reports" / "attack" / "cmc" / f"{args.model}.csv"
        write_text(cmc_path, cmc_csv(results))
        run.log_metrics(numeric_leaves({"clean": metrics["clean"], "cells": metrics["cells"]}))
        run.log_artifact(metrics_path, "attack")
        run.log_artifact(cmc_path, "attack")
    clean = metrics["clean"]
    print(f"{stage}: clean rank-1 {clean['rank1']:.3f}, mAP {clean['mAP']:.3f}")
    for name, cell in metrics["cells"].items():
        print(
            f"{stage}: {name:<22} rank-1 {cell['rank1']:.3f}, mAP {cell['mAP']:.3f}, SSIM {cell['ssim']:.3f}, "
            f"L-inf {cell['linf']:.0f}/255"
        )
    return 0


def _sweep(model, splits, params, sweep, settings, device, root: Path, run) -> int:
    metrics, lambdas, rows = wma_sweep(model, splits, params, sweep, settings, device=device)
    metrics_path = root / "reports" / "metrics" / "attack_sweep.json"
    write_json(metrics_path, metrics)
    eps = metrics["budget"]["eps"] / 255
    out = root / "reports" / "attack"
    figures = [
        lambda_figure(splits["query"], rows, lambdas, eps, sweep.images, out / "lambda_sweep.png"),
        kernel_figure(metrics, sweep, out / "kernel_sweep.png"),
    ]
    from advreid.tracking.mlflow_run import numeric_leaves

    run.log_metrics(numeric_leaves({key: metrics[key] for key in ("clean", "lambda", "kernel")}))
    for path in [metrics_path, *figures]:
        run.log_artifact(path, "attack")
    for lam, cell in metrics["lambda"].items():
        print(
            f"attack_sweep: lambda {lam:>5}: rank-1 {cell['rank1']:.3f}, mAP {cell['mAP']:.3f}, "
            f"smoothness {cell['smoothness']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
