"""Wasserstein metric attack (thesis chapter 4): projected Sinkhorn onto a local Wasserstein ball, and WMA.

The projection solves thesis eq. 4.6 through its dual, eqs. 4.7-4.9 (Wong, Schmidt & Kolter 2019). The
thesis names the dual variables x, y, z; here they are ``alpha``, ``beta`` and ``psi`` so that x stays the
image. Everything is kept in the scaling form ``u = exp(alpha)``, ``v = exp(beta)``,
``K = exp(-psi * C - 1)``, with the local transport applied as a convolution (or unfold), so no n x n matrix
is ever formed and no exponential of a large number is ever taken.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advreid.attacks.gradient import attack
from advreid.attacks.objectives import Objective

# Below this argument W(exp(s)) equals exp(s) to double precision (the next term of the series is exp(2 s)).
_OMEGA_SERIES_BELOW = -40.0
_OMEGA_NEWTON_STEPS = 5


def wright_omega(s: Tensor) -> Tensor:
    """Wright omega function omega(s) = W_0(exp(s)), the principal Lambert W of exp(s), for real s.

    Working with the log of the Lambert-W argument keeps the beta update of projected Sinkhorn finite when
    ``lam * w`` is large (exp would overflow). Newton's method on ``t + log t = s`` (concave in t, so the
    iterates are monotone after the first step) from ``exp(s)`` (s <= 1) or ``s - log s`` (s > 1).

    Args:
        s: any real tensor; ``-inf`` maps to 0.
    Returns:
        omega(s), same shape and dtype, >= 0.
    """
    s_safe = s.clamp(min=_OMEGA_SERIES_BELOW - 10.0)
    large = s_safe > 1.0
    t = torch.where(large, s_safe - torch.log(s_safe.clamp(min=1.0)), torch.exp(s_safe.clamp(max=1.0)))
    for _ in range(_OMEGA_NEWTON_STEPS):
        t = t * (1.0 + s_safe - torch.log(t)) / (1.0 + t)
    return torch.where(s < _OMEGA_SERIES_BELOW, torch.exp(s), t)


def local_transport_cost(
    kernel_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Cost of moving unit mass from the centre of a ``k x k`` window to each of its pixels.

    The Euclidean distance between pixel positions, so ``<T, C>`` is the 1-Wasserstein cost (thesis 4.4.1).

    Returns:
        (k, k) tensor, 0 at the centre.
    """
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    offsets = torch.arange(kernel_size, device=device, dtype=dtype) - kernel_size // 2
    return torch.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)


class ProjectionResult(NamedTuple):
    """Output of :func:`projected_sinkhorn`; every field is per image of the batch."""

    images: Tensor  # (B, C, H, W) projection, in the input's scale
    transport_cost: Tensor  # (B,) <T, C> of the entropic plan, in the units of eps_w
    multiplier: Tensor  # (B,) psi, the Lagrange multiplier of the ball constraint (0: constraint inactive)
    iterations: Tensor  # (B,) long, Sinkhorn iterations run before the image stopped
    converged: Tensor  # (B,) bool, the dual objective stopped changing before max_iter


# Below this many unfolded elements the unfold path is used: CPU grouped convolutions carry milliseconds of
# fixed overhead per call, which dominates on small images; above it the convolution saves the k*k memory.
_UNFOLD_BELOW = 1 << 20


def _apply_kernels(weights: Tensor, mass: Tensor) -> Tensor:
    """Sum of each kernel over each pixel's k x k neighbourhood: (K m)_i = sum_j K_ij m_j for a local K.

    Args:
        weights: (B, m, k, k) m kernels per image, each symmetric so that K^T = K.
        mass: (B, C, H, W); mass never leaves its channel and the zero padding keeps it inside the image.
    Returns:
        (B, C, m, H, W).
    """
    b, c, h, w = mass.shape
    n_kernels, k = weights.shape[1], weights.shape[-1]
    if mass.numel() * k * k < _UNFOLD_BELOW:
        patches = F.unfold(mass.reshape(b * c, 1, h, w), k, padding=k // 2)  # (B*C, k*k, H*W)
        out = torch.einsum("bcpn,bmp->bcmn", patches.view(b, c, k * k, h * w), weights.flatten(2))
        return out.view(b, c, n_kernels, h, w)
    kernels = weights.unsqueeze(1).expand(b, c, n_kernels, k, k).reshape(b * c * n_kernels, 1, k, k)
    out = F.conv2d(mass.reshape(1, b * c, h, w), kernels, padding=k // 2, groups=b * c)
    return out.view(b, c, n_kernels, h, w)


def _per_image_sum(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


def projected_sinkhorn(
    x_clean: Tensor,
    x_adv: Tensor,
    eps_w: float | Tensor,
    *,
    lam: float = 3000.0,
    kernel_size: int = 7,
    max_iter: int = 200,
    tol: float = 1e-6,
    unit_mass: bool = True,
) -> ProjectionResult:
    """Project ``x_adv`` onto the Wasserstein ball of radius ``eps_w`` around ``x_clean`` (eqs. 4.5-4.9).

    Entropy-regularised projection (eq. 4.6) solved by block coordinate ascent on its dual (eq. 4.8):
    closed-form alpha (Sinkhorn) update, Lambert-W beta update, and a Newton step on psi >= 0 with
    backtracking that keeps psi non-negative. Each image stops (its state frozen) once its dual objective
    changes by less than ``tol * (1 + |F|)``; the loop ends when all have stopped or after ``max_iter``.
    The entropy term spreads mass, so even a point inside the ball moves slightly; less so for larger lam.

    Mass moves only within a channel and within a ``kernel_size`` window, at Euclidean pixel-distance cost.

    Args:
        x_clean: (B, C, H, W) non-negative centre of the ball (H and W need not be equal).
        x_adv: (B, C, H, W) point to project, e.g. after a gradient step.
        eps_w: ball radius, scalar or (B,), in (mass moved) x (pixels moved); the mass unit is set by
            ``unit_mass``.
        lam: entropy regularisation lambda of eq. 4.6; larger is sharper and slower to converge.
        kernel_size: odd side of the local transport window.
        max_iter: iteration cap.
        tol: relative tolerance on the dual objective.
        unit_mass: True: mass is the fraction of the clean image's total (thesis 4.2, Wong et al.).
            False: mass is raw [0, 1] intensity, which is the same problem with ``lam * M`` and ``eps_w / M``
            for an image of total intensity M.
    Returns:
        :class:`ProjectionResult`; ``images`` is non-negative with the mass of ``x_clean`` in each channel.
    """
    if x_clean.dim() != 4 or x_clean.shape != x_adv.shape:
        raise ValueError(
            f"x_clean and x_adv must both be (B, C, H, W) of one shape, got {tuple(x_clean.shape)} "
            f"and {tuple(x_adv.shape)}"
        )
    if (x_clean < 0).any():
        raise ValueError("x_clean must be non-negative: it is a mass distribution")
    if lam <= 0:
        raise ValueError(f"lam must be positive, got {lam}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    batch = x_clean.shape[0]
    eps = torch.as_tensor(eps_w, dtype=x_clean.dtype, device=x_clean.device)
    if eps.dim() > 1 or eps.numel() not in (1, batch):
        raise ValueError(f"eps_w must be a scalar or one radius per image ({batch},), got shape {tuple(eps.shape)}")
    eps = eps.expand(batch)
    if (eps < 0).any():
        raise ValueError(f"eps_w must be non-negative, got {eps_w}")
    cost = local_transport_cost(kernel_size, device=x_clean.device, dtype=x_clean.dtype)

    # Reading of thesis 4.2 ("vectorized images ... normalized such that sum_i I_i = 1"), as in Wong et al.:
    # both images are divided by the clean image's total mass over all channels (not per channel), and
    # transport stays within each channel, so each channel keeps its clean mass. An all-zero clean image has
    # no mass to move: scale 1 keeps w finite and the projection is then 0.
    mass = _per_image_sum(x_clean)
    mass = torch.where(mass > 0, mass, torch.ones_like(mass))
    scale = mass.view(-1, 1, 1, 1)
    x = x_clean / scale
    w = x_adv / scale
    lam_b = x.new_full((batch,), float(lam)) if unit_mass else lam * mass  # (B,), in unit-mass units
    eps = eps if unit_mass else eps / mass
    lam_px = lam_b.view(-1, 1, 1, 1)

    psi = x.new_ones(batch)
    v = torch.ones_like(x)
    z = torch.zeros_like(x)
    transport = x.new_zeros(batch)
    objective = x.new_full((batch,), -math.inf)
    iterations = torch.zeros(batch, dtype=torch.long, device=x.device)
    active = torch.ones(batch, dtype=torch.bool, device=x.device)

    for _ in range(max_iter):
        kernel = torch.exp(-psi.view(-1, 1, 1, 1) * cost - 1.0)  # (B, 1, k, k)
        # alpha step: rows of the plan sum to x. u = 0 where x = 0, so no log of zero is ever needed.
        kv = _apply_kernels(kernel, v)[:, :, 0]
        u = torch.where(x > 0, x / kv.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(x))
        # beta step: beta/lam + a e^beta = w with a = K^T u; z = e^beta a = W(lam a e^{lam w}) / lam.
        a = _apply_kernels(kernel, u)[:, :, 0]
        z_new = wright_omega(torch.log(a) + torch.log(lam_px) + lam_px * w) / lam_px
        v_new = torch.where(a > 0, z_new / a.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(a))
        # Dual objective F (eq. 4.8) with beta = lam (w - z), which is also its maximiser where a = 0.
        beta = lam_px * (w - z_new)
        dual = (
            -_per_image_sum(beta**2) / (2 * lam_b)
            - psi * eps
            + _per_image_sum(torch.xlogy(x, u))
            + _per_image_sum(beta * w)
            - _per_image_sum(z_new)
        )
        # psi step: Newton on the concave F(psi); dF = <T, C> - eps, d2F = -<T, C^2>.
        moments = _apply_kernels(torch.cat([kernel * cost, kernel * cost**2], dim=1), v_new)
        plan_cost = _per_image_sum(u * moments[:, :, 0])
        plan_cost2 = _per_image_sum(u * moments[:, :, 1])
        delta = (plan_cost - eps) / plan_cost2.clamp(min=torch.finfo(x.dtype).tiny)
        step = torch.ones_like(psi)
        for _ in range(7):  # halve the step (to 1/128) while it would make psi negative
            step = torch.where(psi + step * delta < 0, step / 2, step)
        psi_new = (psi + step * delta).clamp(min=0.0)

        done = (dual - objective).abs() <= tol * (1.0 + dual.abs())
        iterations = iterations + active.long()
        keep = active.view(-1, 1, 1, 1)
        v = torch.where(keep, v_new, v)
        z = torch.where(keep, z_new, z)
        transport = torch.where(active, plan_cost, transport)
        psi = torch.where(active, psi_new, psi)
        objective = torch.where(active, dual, objective)
        active = active & ~done
        if not active.any():
            break

    return ProjectionResult(
        images=z * scale,
        transport_cost=transport if unit_mass else transport * mass,
        multiplier=psi,
        iterations=iterations,
        converged=~active,
    )


def wma(
    model: nn.Module,
    images: Tensor,
    objective: Objective,
    *,
    eps_w: float = 0.01,
    eps: float = 8 / 255,
    step: float = 1 / 255,
    steps: int = 10,
    lam: float = 3000.0,
    kernel_size: int = 7,
    max_iter: int = 200,
    tol: float = 1e-6,
    unit_mass: bool = True,
) -> Tensor:
    """Wasserstein metric attack, thesis Algorithm 1.

    Each iteration: sign-gradient step on the objective (eq. 4.4), projection onto the Wasserstein ball of
    radius ``eps_w`` around the clean images (eq. 4.5), then the clip Gamma to the L-inf ball of radius
    ``eps`` and to [0, 1]. ``eps`` has the name it has in every other attack of the registry.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to whatever ``objective`` takes (e.g. Re-ID features).
        images: (B, C, H, W) clean images in [0, 1].
        objective: per-sample loss to increase, e.g. :func:`advreid.attacks.objectives.reid_non_targeted`.
        eps_w: Wasserstein radius, in mass x pixels (see :func:`projected_sinkhorn`).
        eps: L-inf radius of the clip Gamma, in [0, 1] pixel units.
        step: sign-step size alpha of eq. 4.4, in [0, 1] pixel units.
        steps: number of iterations N.
        lam, kernel_size, max_iter, tol, unit_mass: passed to :func:`projected_sinkhorn`.
    Returns:
        (B, C, H, W) adversarial images in [0, 1].
    """

    def projection(clean: Tensor, x: Tensor) -> Tensor:
        return projected_sinkhorn(
            clean, x, eps_w, lam=lam, kernel_size=kernel_size, max_iter=max_iter, tol=tol, unit_mass=unit_mass
        ).images

    return attack(
        model,
        images,
        objective,
        method="pgd",
        norm="linf",
        eps=eps,
        step=step,
        steps=steps,
        projection=projection,
    )
