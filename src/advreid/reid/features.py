"""Feature extraction for retrieval: the model's eval-mode output f_i for every image of a loader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from advreid.device import unwrap
from advreid.progress import progress


def embed(model: nn.Module, images: Tensor, flip: bool = False) -> Tensor:
    """Features (B, D) of images (B, 3, H, W); with ``flip``, the mean over the image and its horizontal mirror."""
    features = model(images)
    if flip:
        features = (features + model(images.flip(3))) / 2
    return features


def extract_features(
    model: nn.Module,
    loader: Iterable[Sequence[Any]],
    device: torch.device,
    flip: bool = False,
    normalize: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``model`` in eval mode without gradients over ``loader`` batches (images, labels, cameras, ...).

    Args:
        flip: average the features of each image and its horizontal flip.
        normalize: L2-normalise each feature row (after flip averaging).

    Returns:
        features (N, D) float32, labels (N,) int64 and cameras (N,) int64, on the CPU in loader order.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    features, labels, cameras = [], [], []
    try:
        with torch.no_grad():
            for batch in progress(loader, desc="features", unit="batch"):
                images = batch[0].to(device, non_blocking=True)
                features.append(embed(model, images, flip).float().cpu())
                labels.append(torch.as_tensor(batch[1]).long().cpu())
                cameras.append(torch.as_tensor(batch[2]).long().cpu())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("extract_features: the loader yielded no batches")
    out = torch.cat(features)
    if normalize:
        out = F.normalize(out, dim=1)
    return out, torch.cat(labels), torch.cat(cameras)
