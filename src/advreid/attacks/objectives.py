"""Attack objectives: per-sample losses that an attack INCREASES.

Each builder takes the reference tensors (labels, gallery / clean / target features) and returns a callable
``objective(model_output) -> (B,) loss``, so the attack loop only ever calls ``objective(model(x_adv))``.
Distances are Euclidean in the model's feature space (thesis eq. 4.3); if the Re-ID model L2-normalises its
features, that normalisation belongs to the model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

Objective = Callable[[Tensor], Tensor]


def feature_distance(features: Tensor, reference: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Euclidean distance from each feature vector to its reference feature vectors (thesis eq. 4.3).

    Args:
        features: (B, D).
        reference: (B, D) one reference per sample, or (B, G, D) several.
        mask: optional (B, G) bool, which of the G references count (rows may hold different numbers).
    Returns:
        (B,) distances.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (B, D), got shape {tuple(features.shape)}")
    if reference.shape[0] != features.shape[0] or reference.shape[-1] != features.shape[-1]:
        raise ValueError(
            f"reference features {tuple(reference.shape)} do not match model features {tuple(features.shape)}"
        )
    if reference.dim() == 2:
        return torch.linalg.vector_norm(features - reference, dim=-1)
    distances = torch.linalg.vector_norm(features.unsqueeze(1) - reference, dim=-1)  # (B, G)
    if mask is None:
        return distances.mean(dim=1)
    weights = mask.to(distances.dtype)
    return (distances * weights).sum(dim=1) / weights.sum(dim=1)


def _checked_reference(reference: Tensor, mask: Tensor | None, name: str) -> tuple[Tensor, Tensor | None]:
    if reference.dim() not in (2, 3):
        raise ValueError(f"{name} must be (B, D) or (B, G, D), got shape {tuple(reference.shape)}")
    if mask is not None:
        if reference.dim() != 3 or mask.shape != reference.shape[:2]:
            raise ValueError(
                f"mask must be (B, G) = {tuple(reference.shape[:2])} for {name} of shape "
                f"{tuple(reference.shape)}, got {tuple(mask.shape)}"
            )
        if not mask.any(dim=1).all():
            raise ValueError(f"mask leaves some sample with no {name}")
        mask = mask.bool()
    return reference.detach(), mask


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _distance(features: Tensor, reference: Tensor, mask: Tensor | None, sign: float) -> Tensor:
    return sign * feature_distance(features, reference, mask)


def cross_entropy(labels: Tensor) -> Objective:
    """Untargeted classification objective: cross-entropy of the logits against the true ``labels`` (B,)."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be (B,) class indices, got shape {tuple(labels.shape)}")
    return partial(_cross_entropy, labels=labels)


def reid_non_targeted(gallery_features: Tensor, mask: Tensor | None = None) -> Objective:
    """Non-targeted Re-ID metric attack on queries (thesis eq. 4.3): push the adversarial query's features
    away from the features of the same-identity gallery images, ``gallery_features`` (B, D) or (B, G, D)."""
    reference, mask = _checked_reference(gallery_features, mask, "gallery_features")
    return partial(_distance, reference=reference, mask=mask, sign=1.0)


def reid_targeted(target_features: Tensor, mask: Tensor | None = None) -> Objective:
    """Targeted Re-ID attack (thesis Fig. 4.2b): pull the query's features toward those of a target identity
    of another person; the objective is minus the distance, so increasing it decreases the distance."""
    reference, mask = _checked_reference(target_features, mask, "target_features")
    return partial(_distance, reference=reference, mask=mask, sign=-1.0)


def self_metric_attack(clean_features: Tensor) -> Objective:
    """SMA (Bouniot et al. 2020): push the query's features away from its own clean features (B, D).

    The distance has zero gradient at the clean image, so run it with ``random_start=True`` (or a stochastic
    model) or the first sign step is zero.
    """
    reference, _ = _checked_reference(clean_features, None, "clean_features")
    return partial(_distance, reference=reference, mask=None, sign=1.0)


def adversarial_metric_attack(query_features: Tensor, mask: Tensor | None = None) -> Objective:
    """AMA (Bai et al. 2020): attack GALLERY images, pushing their features away from the features of the
    queries of the same identity, ``query_features`` (B, D) or (B, G, D) per gallery image."""
    reference, mask = _checked_reference(query_features, mask, "query_features")
    return partial(_distance, reference=reference, mask=mask, sign=1.0)


def opposite_direction_feature_attack(clean_features: Tensor, scale: float = 1.0) -> Objective:
    """ODFA (Zheng et al. 2018): pull the feature toward the guide ``-scale * f_clean``, opposite to the clean
    feature (B, D); the objective is minus the distance to the guide.

    The guide is not re-normalised against the adversarial feature: on the unit sphere the clean feature is the
    point farthest from its opposite, where the gradient vanishes and only rounding noise would move a sign step.
    """
    reference, _ = _checked_reference(clean_features, None, "clean_features")
    if reference.dim() != 2:
        raise ValueError(f"clean_features must be (B, D), got shape {tuple(reference.shape)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return partial(_distance, reference=-scale * reference, mask=None, sign=-1.0)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "cross_entropy": cross_entropy,
    "reid_non_targeted": reid_non_targeted,
    "reid_targeted": reid_targeted,
    "sma": self_metric_attack,
    "ama": adversarial_metric_attack,
    "odfa": opposite_direction_feature_attack,
}


def build_objective(name: str, *references: Tensor, **options) -> Objective:
    """Build the objective registered as ``name`` from its reference tensors (see each builder)."""
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](*references, **options)
