"""Per-unit values behind an attack cell's numbers, re-scored from the adversarial images the attack stage saved:
per-query AP and rank-1 hit (the units of mAP and CMC rank-1) and per-image SSIM, so that the matrix can give
bootstrap intervals over queries and the claims paired differences on the same queries.

The attack stage stores only the means; its saved images are exactly what it scored (8-bit, inside the ball), so
re-scoring them reproduces its mAP (checked against its metrics file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from advreid.attacks.evaluation import ssim
from advreid.data.torch_data import ManifestImages
from advreid.reid.metrics import evaluate_rank


def per_query_scores(
    query_features: Tensor,
    gallery_features: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    query_cameras: Tensor,
    gallery_cameras: Tensor,
    *,
    metric: str = "euclidean",
    ap_convention: str = "noninterp",
) -> tuple[Tensor, Tensor]:
    """Per-query AP (Q,) and rank-1 hit (Q,) under the standard protocol; their means are evaluate_rank's mAP and
    rank-1. Raises ValueError when a query has no valid gallery match (it has no AP and no rank)."""
    result = evaluate_rank(query_features, gallery_features, query_labels, gallery_labels, query_cameras,
                           gallery_cameras, metric=metric, ap_convention=ap_convention)  # fmt: skip
    if result.num_valid_queries != len(query_labels):
        raise ValueError(f"{len(query_labels) - result.num_valid_queries} queries have no valid gallery match")
    return result.per_query_ap.double(), (result.per_query_first_match == 0).double()


@torch.no_grad()
def adversarial_features(model: nn.Module, levels: Tensor, device: torch.device, batch_size: int = 64) -> Tensor:
    """Features (N, D) of saved 8-bit adversarial images (N, 3, H, W) uint8, one forward pass each (no flip)."""
    out = [model(batch.to(device).float() / 255).float().cpu() for batch in levels.split(batch_size)]
    return torch.cat(out)


def per_image_ssim(clean: Tensor, levels: Tensor) -> Tensor:
    """SSIM (N,) of each saved adversarial image (uint8) to its clean image (float in [0, 1])."""
    return ssim(clean, levels.float() / 255)


@dataclass(frozen=True)
class CleanSplit:
    """One test split as the attack stage scores it: images, manifest paths, clean features (no flip)."""

    images: ManifestImages
    paths: list[str]
    features: Tensor
    labels: Tensor
    cameras: Tensor


def clean_splits(
    model: nn.Module, processed_dir: Path, size: tuple[int, int], device: torch.device, root: Path, batch_size: int = 64
) -> dict[str, CleanSplit]:
    """Query and gallery of a processed dataset at ``size`` (H, W) with single-pass clean features, as the attack
    stage loads them (:func:`advreid.attacks.grid.load_source`), plus their manifest paths."""
    from advreid.attacks.grid import load_source

    return {
        name: CleanSplit(s.images, s.images.frame["path"].astype(str).tolist(), s.features, s.labels, s.cameras)
        for name, s in load_source(model, processed_dir, size, batch_size, device, root).items()
    }
