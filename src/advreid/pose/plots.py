"""Pose figures: a grid of images with their skeletons, and per-joint PCK bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advreid.data.images import load_image
from advreid.pose.keypoints import JOINTS, draw_skeleton, frame_keypoints, missing_keypoints


def skeleton_grid(
    table: pd.DataFrame,
    estimates: pd.DataFrame,
    annotations: dict[str, np.ndarray],
    raw_root: Path,
    path: Path,
    count: int,
) -> Path:
    """Evenly spaced images with skeletons drawn: one row per available source (annotations, estimator)."""
    from advreid.plots import image_grid

    picks = table.iloc[np.linspace(0, len(table) - 1, min(count, len(table))).round().astype(int)]
    picks = picks[picks["status"] != "failed"]  # unreadable files have no picture; the report names them
    estimated = dict(zip(estimates["path"], frame_keypoints(estimates), strict=True))
    sources = [(name, kps) for name, kps in (("annotations", annotations), ("estimator", estimated)) if kps]
    pictures = [load_image(raw_root / p) for p in picks["path"]]
    rows = [
        [
            draw_skeleton(picture, kps.get(p, missing_keypoints()))
            for picture, p in zip(pictures, picks["path"], strict=True)
        ]
        for _, kps in sources
    ]
    return image_grid(
        rows or [pictures],
        path,
        row_labels=[name for name, _ in sources] or ["no keypoints"],
        col_labels=[Path(p).name[:12] for p in picks["path"]],
        title="Keypoints with OpenPose limbs (subject's right side red, left blue)",
    )


def pck_plot(evaluation: dict[str, Any] | None, path: Path, dataset: str) -> Path:
    """Per-joint PCK bars for each alpha (plus overall), or a figure saying why nothing was scored."""
    import matplotlib.pyplot as plt

    from advreid.plots import save_figure

    fig, ax = plt.subplots(figsize=(10, 3.2))
    if evaluation is None:
        ax.axis("off")
        ax.text(0.5, 0.5, f"{dataset}: PCK not measured (no images with both annotations and estimates)", ha="center")
        return save_figure(fig, path)
    keys = [k for k in evaluation if k.startswith("pck_")]
    names = [*JOINTS, "overall"]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [evaluation[key]["per_joint"][j] for j in JOINTS] + [evaluation[key]["overall"]]
        heights = [v if v is not None and not math.isnan(v) else 0.0 for v in values]
        ax.bar(
            np.arange(len(names)) + (i - (len(keys) - 1) / 2) * width,
            heights,
            width,
            label=key.replace("pck_", "PCK@"),
        )
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction correct")
    ax.set_title(f"{dataset}: MediaPipe vs annotations on {evaluation['images']} images (PCK of person height)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
