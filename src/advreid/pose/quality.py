"""How well an estimated pose matches annotated keypoints: joint detection rate and PCK.

PCK@alpha (Percentage of Correct Keypoints) counts an annotated joint as correct when the estimate has
it within ``alpha * h`` pixels (Euclidean, inclusive), where ``h`` is the person's height taken from the
annotation as the vertical extent of its visible keypoints (lowest minus highest y: roughly eyes or ears
to ankles). An annotated joint the estimator misses counts as wrong. Images with fewer than two visible
annotated joints, or a zero extent, have no defined height and are left out. Joints missing from the
annotation are never scored. Keypoints follow :mod:`advreid.pose.keypoints`: (N, 18, 3) ``(x, y, c)``,
missing = confidence 0 or NaN coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _present(keypoints: Tensor) -> Tensor:
    x, y, c = keypoints.unbind(-1)
    return (c > 0) & torch.isfinite(x) & torch.isfinite(y)


def _check(pred: Tensor, truth: Tensor) -> None:
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and truth must both be (N, J, 3), got {tuple(pred.shape)} and {tuple(truth.shape)}")


def person_height(truth: Tensor) -> Tensor:
    """Vertical extent (max y - min y) of each annotation's visible joints: (N, J, 3) -> (N,).

    NaN where fewer than two joints are visible or the extent is zero.
    """
    there = _present(truth)
    y = truth[..., 1]
    top = torch.where(there, y, torch.full_like(y, float("inf"))).amin(dim=-1)
    bottom = torch.where(there, y, torch.full_like(y, float("-inf"))).amax(dim=-1)
    height = bottom - top
    defined = (there.sum(dim=-1) >= 2) & (height > 0)
    return torch.where(defined, height, torch.full_like(height, float("nan")))


def pck(pred: Tensor, truth: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """PCK at ``alpha`` times the annotated person height.

    Args:
        pred, truth: (N, J, 3) estimated and annotated keypoints of the same N images.
        alpha: threshold as a fraction of the person height, > 0 (0.1 and 0.2 are usual).

    Returns:
        (per-joint fraction correct (J,), overall fraction correct over all scored joints ()), NaN where
        nothing was scored.
    """
    _check(pred, truth)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    height = person_height(truth)  # (N,)
    scored = _present(truth) & torch.isfinite(height)[:, None]  # (N, J)
    distance = torch.linalg.vector_norm(pred[..., :2] - truth[..., :2], dim=-1)  # (N, J); NaN where missing
    correct = scored & _present(pred) & (distance <= alpha * height[:, None])
    return _ratio(correct, scored)


def joint_detection_rate(pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Fraction of annotated joints the estimate has at all, wherever it puts them.

    Returns:
        (per joint (J,), overall ()), NaN where no joint is annotated.
    """
    _check(pred, truth)
    annotated = _present(truth)
    return _ratio(annotated & _present(pred), annotated)


def _ratio(hits: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
    hits_f, counted_f = hits.sum(dim=0, dtype=torch.float64), counted.sum(dim=0, dtype=torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=hits.device)
    per_joint = torch.where(counted_f > 0, hits_f / counted_f.clamp(min=1), nan)
    overall = hits_f.sum() / counted_f.sum() if counted_f.sum() > 0 else nan
    return per_joint, overall
