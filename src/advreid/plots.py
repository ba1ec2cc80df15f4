"""Figures saved under reports/ (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from advreid.io import atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically (deterministic metadata) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def to_uint8_image(image) -> np.ndarray:
    """A (3, H, W) float tensor in [0, 1] -> an (H, W, 3) uint8 array for drawing."""
    return image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    borders: Sequence[Sequence[str | None]] | None = None,
    title: str | None = None,
    cell: tuple[float, float] = (0.9, 1.6),
) -> Path:
    """A grid of uint8 (H, W, 3) images; ``borders`` gives an optional frame colour per cell."""
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell[0] * n_cols, cell[1] * n_rows), squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(rows[i]):
                ax.axis("off")
                continue
            ax.imshow(rows[i][j])
            colour = borders[i][j] if borders is not None else None
            for spine in ax.spines.values():
                spine.set_visible(colour is not None)
                if colour is not None:
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
            if col_labels is not None and i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
            if row_labels is not None and j == 0:
                ax.set_ylabel(row_labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
