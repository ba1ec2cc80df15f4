"""Adversarial attacks: objectives, one gradient-attack loop, and the Wasserstein metric attack (WMA).

``ATTACKS[name](model, images, objective, **budget) -> adversarial images``; images are float in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor

from advreid.attacks.gradient import attack
from advreid.attacks.objectives import OBJECTIVES, Objective, build_objective
from advreid.attacks.wasserstein import projected_sinkhorn, wma

# The thesis 5.3.1 attack list; keyword arguments given at call time override these defaults.
ATTACKS: dict[str, Callable[..., Tensor]] = {
    "fgsm": partial(attack, method="fgsm"),
    "pgd": partial(attack, method="pgd", random_start=True),
    "pgd_l2": partial(attack, method="pgd", norm="l2", eps=0.5, step=0.1, random_start=True),
    "mi_fgsm": partial(attack, method="mi_fgsm"),
    "ni_fgsm": partial(attack, method="ni_fgsm"),
    "si_ni_fgsm": partial(attack, method="si_ni_fgsm"),
    "eot_fgsm": partial(attack, method="fgsm", eot_samples=10),
    "eot_pgd": partial(attack, method="pgd", random_start=True, eot_samples=10),
    "wma": wma,
}


def get_attack(name: str) -> Callable[..., Tensor]:
    """The attack registered as ``name``."""
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name]


__all__ = [
    "ATTACKS",
    "OBJECTIVES",
    "Objective",
    "attack",
    "build_objective",
    "get_attack",
    "projected_sinkhorn",
    "wma",
]
