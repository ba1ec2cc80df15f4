"""Certified black-box defense (thesis chapter 6): randomized smoothing, zeroth-order estimators, objectives."""

from advreid.certify.blackbox import BlackBox
from advreid.certify.objectives import (
    cosine_dissimilarity,
    cross_entropy_from_probs,
    denoised_smoothing_loss,
    mmd_rbf,
    mmd_rbf_per_sample,
    total_loss,
    total_loss_per_sample,
    zo_total_loss_closure,
)
from advreid.certify.smoothing import ABSTAIN, Smooth, certified_accuracy, clopper_pearson_lower
from advreid.certify.zeroth_order import cge_gradient, rge_gradient, zo_backward

__all__ = [
    "ABSTAIN",
    "BlackBox",
    "Smooth",
    "certified_accuracy",
    "cge_gradient",
    "clopper_pearson_lower",
    "cosine_dissimilarity",
    "cross_entropy_from_probs",
    "denoised_smoothing_loss",
    "mmd_rbf",
    "mmd_rbf_per_sample",
    "rge_gradient",
    "total_loss",
    "total_loss_per_sample",
    "zo_backward",
    "zo_total_loss_closure",
]
