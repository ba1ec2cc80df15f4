"""Ranked-list pictures like thesis Figs. 4.2 and 5.2: a query and its top-k gallery images, each framed green
(same identity: a correct prediction) or red (another identity).

The ranking follows the evaluation protocol of :mod:`advreid.reid.metrics`: gallery images of the query's
identity taken by the query's camera, and junk images (label -1), are left out, so the picture shows the
ranks that CMC and mAP score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advreid.plots import image_grid

MATCH_COLOUR = "#2ca02c"  # green
MISMATCH_COLOUR = "#d62728"  # red


def ranked_gallery(
    distances: Tensor,
    query_labels: Tensor,
    query_cameras: Tensor,
    gallery_labels: Tensor,
    gallery_cameras: Tensor,
    top_k: int = 10,
) -> tuple[Tensor, Tensor]:
    """The ``top_k`` nearest gallery entries of each query under the evaluation protocol.

    Args:
        distances: (Q, G) query x gallery distances (smaller = more similar).
        query_labels, query_cameras: (Q,) identities and cameras; gallery_labels, gallery_cameras: (G,).
        top_k: ranks to return; every query needs at least this many gallery entries left after the removal.

    Returns:
        indices (Q, top_k) int64 into the gallery, nearest first (ties keep gallery order), and
        matches (Q, top_k) bool, True where the entry has the query's identity.
    """
    if distances.ndim != 2 or distances.shape != (len(query_labels), len(gallery_labels)):
        raise ValueError(
            f"ranked_gallery: distances {tuple(distances.shape)} must be (Q, G) = "
            f"({len(query_labels)}, {len(gallery_labels)})"
        )
    if top_k < 1:
        raise ValueError(f"ranked_gallery: top_k must be >= 1, got {top_k}")
    q_lab, q_cam = query_labels.long().unsqueeze(1), query_cameras.long().unsqueeze(1)
    g_lab, g_cam = gallery_labels.long().unsqueeze(0), gallery_cameras.long().unsqueeze(0)
    removed = ((g_lab == q_lab) & (g_cam == q_cam)) | (g_lab == -1)  # (Q, G)
    kept = (~removed).sum(1)
    if bool((kept < top_k).any()):
        row = int(torch.nonzero(kept < top_k)[0])
        raise ValueError(
            f"ranked_gallery: query {row} has {int(kept[row])} gallery entries after removing its own camera's "
            f"images of its identity and junk, fewer than top_k={top_k}"
        )
    masked = distances.float().masked_fill(removed, float("inf"))
    indices = torch.sort(masked, dim=1, stable=True).indices[:, :top_k]
    matches = gallery_labels.long()[indices] == q_lab
    return indices, matches


def border_colours(matches: Tensor) -> list[list[str]]:
    """Frame colour per ranked entry: :data:`MATCH_COLOUR` for a true match, :data:`MISMATCH_COLOUR` otherwise."""
    return [[MATCH_COLOUR if bool(m) else MISMATCH_COLOUR for m in row] for row in matches]


def ranked_list_figure(
    query_images: Sequence[np.ndarray],
    ranked_images: Sequence[Sequence[np.ndarray]],
    matches: Tensor,
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One row per query: the query (unframed), then its ranked gallery images framed by :func:`border_colours`.

    Args:
        query_images: Q uint8 (H, W, 3) images.
        ranked_images: Q rows of k uint8 (H, W, 3) images, nearest first.
        matches: (Q, k) bool, as returned by :func:`ranked_gallery`.
    """
    if len(query_images) != len(ranked_images) or tuple(matches.shape) != (
        len(ranked_images),
        len(ranked_images[0]) if ranked_images else 0,
    ):
        raise ValueError(
            f"ranked_list_figure: {len(query_images)} queries, {len(ranked_images)} ranked rows and matches "
            f"{tuple(matches.shape)} do not agree"
        )
    if any(len(row) != matches.shape[1] for row in ranked_images):
        raise ValueError(f"ranked_list_figure: every ranked row must hold {matches.shape[1]} images")
    colours = border_colours(matches)
    rows = [[query, *ranked] for query, ranked in zip(query_images, ranked_images, strict=True)]
    borders: list[list[str | None]] = [[None, *row] for row in colours]
    top_k = matches.shape[1]
    return image_grid(
        rows,
        path,
        row_labels=row_labels,
        col_labels=["query", *(str(r) for r in range(1, top_k + 1))],
        borders=borders,
        title=title,
    )
