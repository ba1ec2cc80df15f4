"""Heatmaps of the robustness matrix: models x attacks, colour = robust rank-1 (certified accuracy for chapter 6)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from advreid.plots import save_figure
from advreid.robustness.matrix import Cell, grid

# task -> (metric coloured, title)
HEATMAPS = {
    "attack": ("rank1", "Chapter 4: rank-1 under each attack (white-box)"),
    "transfer": ("rank1", "Table 4.5: rank-1 on adversarial images crafted on another model"),
    "defense": ("rank1", "Chapter 5: robust rank-1 of each defense (adaptive attacks; mean over draws)"),
    "adaptation": ("rank1", "Chapter 3: target rank-1, direct transfer vs IPES-GAN (mean over seeds)"),
    "certify": ("certified_accuracy", "Chapter 6: certified accuracy per method x sigma x radius"),
}


def heatmap(cells: list[Cell], task: str, path: str | os.PathLike) -> Path:
    """One heatmap per task; a missing cell is drawn grey with no number."""
    import matplotlib.pyplot as plt  # here, not at import: the params check and the claims need HEATMAPS only

    metric, title = HEATMAPS[task]
    rows, columns, values = grid(cells, task, metric)
    if not rows:
        raise ValueError(f"heatmap: the matrix has no {task!r} cell with {metric!r}")
    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(columns) + 2.5), max(2.0, 0.42 * len(rows) + 1.4)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(data[i, j]):
                colour = "black" if data[i, j] > 0.6 else "white"
                ax.text(j, i, f"{100 * data[i, j]:.0f}", ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.03, label=metric.replace("_", " "))
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
