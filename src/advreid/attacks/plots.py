"""Figures of the chapter-4 attack stages: WMA's lambda sweep (Fig. 4.6) and kernel sweep (Fig. 4.7), CMC before and
after every attack, and the clean / perturbation / adversarial grids (Figs. 4.4-4.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from advreid.attacks.evaluation import AttackOutcome, ReIDSplit, evenly_spaced
from advreid.attacks.grid import SweepSettings
from advreid.attacks.report import load_adversarial
from advreid.plots import image_grid, save_figure, to_uint8_image


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


def plot_cmc(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """CMC before (black) and after each attack, one panel per model."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    for ax, (model, columns) in zip(axes[0], curves.items(), strict=True):
        ranks = columns["rank"]
        colours = plt.get_cmap("tab20").colors  # twenty distinct colours: the default cycle repeats after ten
        for i, (name, values) in enumerate((n, v) for n, v in columns.items() if n != "rank"):
            clean = name == "clean"
            colour = "black" if clean else colours[(i - 1) % len(colours)]
            ax.plot(ranks, values, color=colour, linewidth=2.5 if clean else 1, label=name)
        ax.set_title(model)
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate")
        ax.set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("CMC before and after each attack", fontsize=9)
    return save_figure(fig, path)


def sample_grid(model: str, result: dict[str, Any], root: Path, count: int, path: Path) -> Path:
    """Figs. 4.4-4.5: one row per cell: for ``count`` evenly spaced attacked images, clean | perturbation
    (+-eps spans black to white) | adversarial."""
    from advreid.data.torch_data import ManifestImages, load_split

    processed = root / "data" / "processed" / result["dataset"]
    rows, labels, frames = [], [], {}
    for cell, metrics in result["cells"].items():
        saved = load_adversarial(root / "data" / "adversarial" / model / f"{cell}.pt")
        if saved["split"] not in frames:
            frames[saved["split"]] = load_split(processed, saved["split"], root)
        frame, raw_root = frames[saved["split"]]
        images = ManifestImages(frame, raw_root, size=tuple(saved["images"].shape[-2:]))
        row = []
        for i in evenly_spaced(count, len(saved["images"])).tolist():
            clean = images.image(i)
            adversarial = saved["images"][i].float() / 255
            noise = 0.5 + (adversarial - clean) * (0.5 / max(metrics["eps"] / 255, 1e-12))
            row += [to_uint8_image(clean), to_uint8_image(noise), to_uint8_image(adversarial)]
        rows.append(row)
        labels.append(f"{cell}\n({saved['split']})")
    columns = ["clean", "perturbation", "adversarial"] * count
    title = f"{model}: clean + perturbation = adversarial (rank-1 / mAP in tables.md)"
    return image_grid(rows, path, row_labels=labels, col_labels=columns, title=title)
