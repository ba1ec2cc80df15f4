"""Losses of the vanilla Re-ID model, L_V = L_CE + L_Tri (thesis Eq. 5.1).

L_CE is cross-entropy with label smoothing (Szegedy et al. 2016, as Re-ID baselines use it); L_Tri is the
batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss for Person Re-Identification").
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def cross_entropy_label_smoothing(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Mean over the batch of -sum_k q_k log p_k, q = (1 - epsilon) one_hot(y) + epsilon / K.

    Args:
        logits: (B, K) unnormalised class scores.
        targets: (B,) class indices in [0, K).
        epsilon: smoothing weight in [0, 1).
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    return F.cross_entropy(logits, targets, label_smoothing=epsilon)


def euclidean_distance_matrix(features: Tensor) -> Tensor:
    """(B, B) Euclidean distances between the rows of ``features`` (B, D)."""
    squared = features.pow(2).sum(1)
    d2 = squared.unsqueeze(1) + squared.unsqueeze(0) - 2.0 * features @ features.T
    # the clamp keeps sqrt's gradient finite for coincident points (and absorbs tiny negative rounding)
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.3, soft_margin: bool = False) -> Tensor:
    """Batch-hard triplet loss: for each anchor, its farthest positive and closest negative in the batch.

    loss_a = max(0, margin + max_p d(a, p) - min_n d(a, n)), or with ``soft_margin`` log(1 + exp(d_ap - d_an));
    d is the Euclidean distance. Averaged over anchors that have at least one positive (other than themselves)
    and one negative in the batch.

    Args:
        features: (B, D) embeddings f_t.
        labels: (B,) identity labels.
        margin: hinge margin (ignored with ``soft_margin``).
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"batch_hard_triplet_loss: features must be (B, D) and labels (B,), got {tuple(features.shape)} "
            f"and {tuple(labels.shape)}"
        )
    dist = euclidean_distance_matrix(_at_least_float32(features))
    positive, negative, valid = _triplet_masks(labels, "batch_hard_triplet_loss")
    hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(~negative, float("inf")).amin(1)
    gap = (hardest_positive - hardest_negative)[valid]
    if soft_margin:
        return F.softplus(gap).mean()
    return F.relu(gap + margin).mean()


def batch_hard_indices(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The batch-hard triplets of :func:`batch_hard_triplet_loss`, as indices (no gradient flows through them).

    Returns (positive, negative, valid): for each anchor the index of its farthest positive and of its closest
    negative by Euclidean distance, each (B,) long, and the (B,) mask of anchors that have both.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"batch_hard_indices: features must be (B, D) and labels (B,), got {tuple(features.shape)} "
            f"and {tuple(labels.shape)}"
        )
    positive, negative, valid = _triplet_masks(labels, "batch_hard_indices")
    with torch.no_grad():
        dist = euclidean_distance_matrix(_at_least_float32(features))
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(1)
    return hardest_positive, hardest_negative, valid


def _triplet_masks(labels: Tensor, caller: str) -> tuple[Tensor, Tensor, Tensor]:
    """(B, B) positive (same label, not self) and negative masks, and the (B,) anchors having both."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & not_self
    negative = ~same
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        raise ValueError(
            f"{caller}: no anchor has both a positive and a negative in the batch "
            "(labels need at least 2 identities with at least 2 images each, e.g. a P x K batch with K >= 2)"
        )
    return positive, negative, valid


def vanilla_reid_loss(
    logits: Tensor,
    feat_triplet: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 0.1,
    margin: float = 0.3,
    soft_margin: bool = False,
    triplet_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """L_V = L_CE + w L_Tri (thesis Eq. 5.1, w = 1); returns (L_V, L_CE, L_Tri), computed in float32 or wider."""
    loss_ce = cross_entropy_label_smoothing(_at_least_float32(logits), labels, epsilon)
    loss_triplet = batch_hard_triplet_loss(feat_triplet, labels, margin, soft_margin)
    return loss_ce + triplet_weight * loss_triplet, loss_ce, loss_triplet


def _at_least_float32(x: Tensor) -> Tensor:
    # autocast hands back float16 outputs; distances and log-softmax lose too much precision there
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
