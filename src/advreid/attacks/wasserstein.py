"""Wasserstein metric attack (thesis chapter 4): projected Sinkhorn onto a local Wasserstein ball, and WMA.

The projection solves thesis eq. 4.6 through its dual, eqs. 4.7-4.9 (Wong, Schmidt & Kolter 2019). The
thesis names the dual variables x, y, z; here they are ``alpha``, ``beta`` and ``psi`` so that x stays the
image. Everything is kept in the scaling form ``u = exp(alpha)``, ``v = exp(beta)``,
``K = exp(-psi * C - 1)``, with the local transport applied as a convolution (or unfold), so no n x n matrix
is ever formed and no exponential of a large number is ever taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    converged: Tensor  # (B,) bool, primal residuals below tol before max_iter
    mass_error: Tensor  # (B,) sum |T 1 - x| / sum x: the plan's row-marginal violation, relative to the mass
    scaling: Tensor  # (B, C, H, W) v = exp(beta / ...), the column scaling; with ``multiplier`` a warm start


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
    tol: float = 1e-5,
    unit_mass: bool = True,
    initial: tuple[Tensor, Tensor] | None = None,
) -> ProjectionResult:
    """Project ``x_adv`` onto the Wasserstein ball of radius ``eps_w`` around ``x_clean`` (eqs. 4.5-4.9).

    Entropy-regularised projection (eq. 4.6) solved by block coordinate ascent on its dual (eq. 4.8):
    closed-form alpha (Sinkhorn) update, Lambert-W beta update, and a Newton step on psi >= 0 with
    backtracking that keeps psi non-negative. The plan of an iteration is T = diag(u) K(psi) diag(v); its
    columns sum to the returned image by construction, so what is left to check are its primal residuals:
    the row marginal (mass error ``sum |T 1 - x| / sum x``) and the ball constraint with complementary
    slackness (``|<T, C> - eps_w| <= tol * eps_w`` while psi > 0, ``<T, C> <= (1 + tol) eps_w`` at psi = 0).
    Each image stops (its state frozen) once both are below ``tol``; the loop ends when all have stopped or
    after ``max_iter``. The entropy term spreads mass, so even a point inside the ball moves slightly; less so
    for larger lam.

    Scale of lam: eq. 4.6 weighs the squared distance against ``1/lam`` times the entropy, so what matters
    is lam times the mass of a pixel. Wong et al. work where that product is O(1-10); the thesis' lam = 3000
    on unit-mass 128 x 64 x 3 images (pixel mass ~1/24576) is 0.12, on raw [0, 1] intensities (pixel mass
    ~0.4) 1200. With ``unit_mass=False`` (raw intensities) lam = 3-30 gives the O(1-10) regime; a unit-mass
    lam equals a raw lam times the image's total intensity M.

    Mass moves only within a channel and within a ``kernel_size`` window, at Euclidean pixel-distance cost.

    Args:
        x_clean: (B, C, H, W) non-negative centre of the ball (H and W need not be equal).
        x_adv: (B, C, H, W) point to project, e.g. after a gradient step.
        eps_w: ball radius, scalar or (B,), in (mass moved) x (pixels moved); the mass unit is set by
            ``unit_mass``.
        lam: entropy regularisation lambda of eq. 4.6; larger is sharper and slower to converge.
        kernel_size: odd side of the local transport window.
        max_iter: iteration cap.
        tol: tolerance on the relative primal residuals (mass error and ball constraint); 0 runs max_iter.
        unit_mass: True: mass is the fraction of the clean image's total (thesis 4.2, Wong et al.).
            False: mass is raw [0, 1] intensity, which is the same problem with ``lam * M`` and ``eps_w / M``
            for an image of total intensity M.
        initial: warm start ``(multiplier, scaling)`` of an earlier result for the same clean images (e.g. the
            previous attack step); default psi = 1, v = 1.
    Returns:
        :class:`ProjectionResult`; ``images`` is non-negative with the mass of ``x_clean`` in each channel up
        to ``mass_error``.
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
    if tol < 0:
        raise ValueError(f"tol must be non-negative (0: run max_iter iterations), got {tol}")
    batch = x_clean.shape[0]
    eps = torch.as_tensor(eps_w, dtype=x_clean.dtype, device=x_clean.device)
    if eps.dim() > 1 or eps.numel() not in (1, batch):
        raise ValueError(f"eps_w must be a scalar or one radius per image ({batch},), got shape {tuple(eps.shape)}")
    eps = eps.expand(batch)
    if (eps < 0).any():
        raise ValueError(f"eps_w must be non-negative, got {eps_w}")
    cost = local_transport_cost(kernel_size, device=x_clean.device, dtype=x_clean.dtype)
    tiny = torch.finfo(x_clean.dtype).tiny

    # Reading of thesis 4.2 ("vectorized images ... normalized such that sum_i I_i = 1"), as in Wong et al.:
    # both images are divided by the clean image's total mass over all channels (not per channel), and
    # transport stays within each channel, so each channel keeps its clean mass. An all-zero clean image has
    # no mass to move: scale 1 keeps w finite and the projection is then 0.
    mass = _per_image_sum(x_clean)
    empty = mass <= 0
    mass = torch.where(empty, torch.ones_like(mass), mass)
    scale = mass.view(-1, 1, 1, 1)
    x = x_clean / scale
    w = x_adv / scale
    lam_b = x.new_full((batch,), float(lam)) if unit_mass else lam * mass  # (B,), in unit-mass units
    eps = eps if unit_mass else eps / mass
    lam_px = lam_b.view(-1, 1, 1, 1)

    if initial is None:
        psi, v = x.new_ones(batch), torch.ones_like(x)
    else:
        psi, v = initial
        if psi.shape != (batch,) or v.shape != x.shape:
            raise ValueError(
                f"initial must be (multiplier ({batch},), scaling {tuple(x.shape)}), got "
                f"{tuple(psi.shape)} and {tuple(v.shape)}"
            )
        psi, v = psi.to(x), v.to(x)
    z = torch.zeros_like(x)
    transport = x.new_zeros(batch)
    mass_error = x.new_full((batch,), math.inf)
    iterations = torch.zeros(batch, dtype=torch.long, device=x.device)
    active = torch.ones(batch, dtype=torch.bool, device=x.device)
    eps_floor = eps.clamp(min=tiny)

    for _ in range(max_iter):
        kernel = torch.exp(-psi.view(-1, 1, 1, 1) * cost - 1.0)  # (B, 1, k, k)
        # alpha step: rows of the plan sum to x. u = 0 where x = 0, so no log of zero is ever needed.
        kv = _apply_kernels(kernel, v)[:, :, 0]
        u = torch.where(x > 0, x / kv.clamp(min=tiny), torch.zeros_like(x))
        # beta step: beta/lam + a e^beta = w with a = K^T u; z = e^beta a = W(lam a e^{lam w}) / lam.
        a = _apply_kernels(kernel, u)[:, :, 0]
        z_new = wright_omega(torch.log(a) + torch.log(lam_px) + lam_px * w) / lam_px
        v_new = torch.where(a > 0, z_new / a.clamp(min=tiny), torch.zeros_like(a))
        # The plan diag(u) K diag(v_new): columns sum to z_new; its row sums, cost and second moment.
        moments = _apply_kernels(torch.cat([kernel, kernel * cost, kernel * cost**2], dim=1), v_new)
        row_error = _per_image_sum((u * moments[:, :, 0] - x).abs())  # x sums to 1 (or 0 for an empty image)
        plan_cost = _per_image_sum(u * moments[:, :, 1])
        plan_cost2 = _per_image_sum(u * moments[:, :, 2])
        # psi step: Newton on the concave dual F(psi) of eq. 4.8; dF = <T, C> - eps, d2F = -<T, C^2>.
        delta = (plan_cost - eps) / plan_cost2.clamp(min=tiny)
        step = torch.ones_like(psi)
        for _ in range(7):  # halve the step (to 1/128) while it would make psi negative
            step = torch.where(psi + step * delta < 0, step / 2, step)
        psi_new = (psi + step * delta).clamp(min=0.0)

        slack = (plan_cost - eps) / eps_floor
        ball = torch.where(psi > 0, slack.abs(), slack.clamp(min=0.0))
        done = (row_error <= tol) & (ball <= tol)
        iterations = iterations + active.long()
        keep = active.view(-1, 1, 1, 1)
        v = torch.where(keep, v_new, v)
        z = torch.where(keep, z_new, z)
        transport = torch.where(active, plan_cost, transport)
        mass_error = torch.where(active, row_error, mass_error)
        # a converged image keeps the psi of its plan, so that a warm start from it reproduces the plan
        psi = torch.where(active & ~done, psi_new, psi)
        active = active & ~done
        if not active.any():
            break

    return ProjectionResult(
        images=z * scale,
        transport_cost=transport if unit_mass else transport * mass,
        multiplier=psi,
        iterations=iterations,
        converged=~active,
        mass_error=torch.where(empty, torch.zeros_like(mass_error), mass_error),
        scaling=v,
    )


class WMAResult(NamedTuple):
    """Output of :func:`wasserstein_metric_attack`; per query unless said otherwise."""

    images: Tensor  # (B, C, H, W) adversarial images in [0, 1]
    eps_w: Tensor  # (B,) Wasserstein radius of each query's last projection (grown while it was not fooled)
    fooled: Tensor  # (B,) bool, the success test at the returned images (all False without one)
    steps: Tensor  # (B,) long, attack steps taken (a fooled query takes no more)
    iterations: Tensor  # (B,) long, Sinkhorn iterations summed over the query's projections
    unconverged: Tensor  # (B,) long, projections that hit max_iter before tol
    mass_error: Tensor  # (B,) largest mass error of the query's projections
    transport_cost: Tensor  # (B,) <T, C> of the last projection's plan, in the units of eps_w


def _gradient_and_output(model: nn.Module, x: Tensor, objective: Objective) -> tuple[Tensor, Tensor]:
    """Input gradient of the summed objective and the model output it was taken at (the success test reads the
    same forward pass, so WMA costs one forward-backward per step like PGD)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        output = model(x_in)
        loss = objective(output)
        if loss.shape != x.shape[:1]:
            raise ValueError(
                f"objective must return one loss per sample, shape ({x.shape[0]},), got {tuple(loss.shape)}"
            )
        (grad,) = torch.autograd.grad(loss.sum(), x_in)
    return grad, output.detach()


def wasserstein_metric_attack(
    model: nn.Module,
    images: Tensor,
    objective: Objective,
    *,
    eps_w: float = 0.01,
    eps: float | None = 8 / 255,
    step: float = 1 / 255,
    steps: int = 10,
    lam: float = 3000.0,
    kernel_size: int = 7,
    max_iter: int = 200,
    tol: float = 1e-5,
    unit_mass: bool = True,
    growth: float = 1.0,
    grow_every: int = 10,
    fooled: Callable[[Tensor], Tensor] | None = None,
) -> WMAResult:
    """Wasserstein metric attack, thesis Algorithm 1 with Wong et al.'s (2019) driver.

    Each step, for the queries not yet fooled: sign-gradient step on the objective (eq. 4.4), the optional
    clip Gamma to the L-inf ball of radius ``eps``, the projection onto the Wasserstein ball of radius ``eps_w``
    around the clean image (eq. 4.5; warm-started from the query's previous projection), then [0, 1].
    Gamma comes before the projection, so the projected image is in the Wasserstein ball by construction
    (within the projection's tolerance); its L-inf distance is not bounded by ``eps`` any more. The final
    [0, 1] clamp only lowers pixels above 1 (the projection keeps them >= 0): it removes mass there, a small
    change that the attack stage measures with the exact distance of the output. Every ``grow_every`` steps
    the radius of the queries not yet fooled grows by ``growth`` (Wong et al.: 1.1 every 10 steps).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to whatever ``objective`` takes (e.g. Re-ID features).
        images: (B, C, H, W) clean images in [0, 1].
        objective: per-sample loss to increase, e.g. :func:`advreid.attacks.objectives.reid_non_targeted`.
        eps_w: initial Wasserstein radius, in mass x pixels (see :func:`projected_sinkhorn`).
        eps: L-inf radius of the clip Gamma in [0, 1] pixel units; None: no clip.
        step: sign-step size alpha of eq. 4.4, in [0, 1] pixel units.
        steps: number of iterations N.
        lam, kernel_size, max_iter, tol, unit_mass: passed to :func:`projected_sinkhorn`.
        growth, grow_every: radius growth factor (>= 1) and period in steps.
        fooled: model output -> (B,) bool, True where the attack already succeeded (e.g. rank-1 is wrong);
            None: every query takes every step.
    Returns:
        :class:`WMAResult`.
    """
    if steps < 0 or step < 0 or growth < 1 or grow_every < 1:
        raise ValueError(
            f"need steps >= 0, step >= 0, growth >= 1, grow_every >= 1; got {steps}, {step}, {growth}, {grow_every}"
        )
    if eps is not None and eps < 0:
        raise ValueError(f"eps must be non-negative or None, got {eps}")
    if not images.is_floating_point() or images.dim() != 4 or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be a float (B, C, H, W) batch in [0, 1]; normalisation belongs to the model")
    clean = images.detach()
    batch = clean.shape[0]
    x = clean.clone()
    radius = torch.as_tensor(eps_w, dtype=clean.dtype, device=clean.device).expand(batch).clone()
    multiplier, scaling = clean.new_ones(batch), torch.ones_like(clean)
    counts = {name: torch.zeros(batch, dtype=torch.long, device=clean.device) for name in ("steps", "iter", "bad")}
    mass_error = clean.new_zeros(batch)
    transport = clean.new_zeros(batch)
    success = torch.zeros(batch, dtype=torch.bool, device=clean.device)
    for t in range(steps):
        grad, output = _gradient_and_output(model, x, objective)
        if fooled is not None:
            success = fooled(output).to(clean.device)
        active = ~success
        if not active.any():
            break
        if t > 0 and t % grow_every == 0:
            radius = torch.where(active, radius * growth, radius)
        with torch.no_grad():
            rows = active.nonzero().flatten()
            stepped = x[rows] + step * grad[rows].sign()
            if eps is not None:
                stepped = torch.minimum(torch.maximum(stepped, clean[rows] - eps), clean[rows] + eps)
            projection = projected_sinkhorn(
                clean[rows],
                stepped,
                radius[rows],
                lam=lam,
                kernel_size=kernel_size,
                max_iter=max_iter,
                tol=tol,
                unit_mass=unit_mass,
                initial=(multiplier[rows], scaling[rows]),
            )
            x[rows] = projection.images.clamp(0.0, 1.0)
            multiplier[rows], scaling[rows] = projection.multiplier, projection.scaling
            counts["steps"][rows] += 1
            counts["iter"][rows] += projection.iterations
            counts["bad"][rows] += (~projection.converged).long()
            mass_error[rows] = torch.maximum(mass_error[rows], projection.mass_error)
            transport[rows] = projection.transport_cost
    if fooled is not None:
        with torch.no_grad():
            success = fooled(model(x)).to(clean.device)
    return WMAResult(
        images=x,
        eps_w=radius,
        fooled=success,
        steps=counts["steps"],
        iterations=counts["iter"],
        unconverged=counts["bad"],
        mass_error=mass_error,
        transport_cost=transport,
    )


def wma(model: nn.Module, images: Tensor, objective: Objective, **options: Any) -> Tensor:
    """The images of :func:`wasserstein_metric_attack` (the attack registry's signature)."""
    return wasserstein_metric_attack(model, images, objective, **options).images


def exact_wasserstein_distance(clean: Tensor, other: Tensor, *, pool: int = 1) -> Tensor:
    """Exact 1-Wasserstein distance (POT's network simplex, ``ot.emd2``) of each image from its clean image,
    in raw intensity x pixels (the units of ``eps_w`` with ``unit_mass=False``), summed over channels.

    The ground cost is the full Euclidean pixel distance (no window), so it is at most the windowed distance
    that the projection bounds. Mass moves within a channel; ``other``'s channel is rescaled to the clean
    channel's mass (the [0, 1] clamp and 8-bit rounding change it slightly; callers report that change).
    An exact dense LP at 128 x 64 does not finish in useful time (n^2 = 67M costs per channel), so ``pool > 1``
    solves it on images average-pooled by ``pool`` (cost between block centres, times ``pool``): a documented
    approximation that ignores movement within a block.

    Args:
        clean, other: (B, C, H, W) non-negative, H and W divisible by ``pool``.
    Returns:
        (B,) float64 on the CPU.
    """
    import ot  # POT is needed only here; importing it lazily keeps the attack modules light

    if clean.shape != other.shape or clean.dim() != 4:
        raise ValueError(f"need two (B, C, H, W) batches of one shape, got {tuple(clean.shape)}, {tuple(other.shape)}")
    if pool < 1 or clean.shape[-2] % pool or clean.shape[-1] % pool:
        raise ValueError(f"pool must be >= 1 and divide the image size {tuple(clean.shape[-2:])}, got {pool}")
    a_all = F.avg_pool2d(clean.detach().double().cpu(), pool) * pool**2
    b_all = F.avg_pool2d(other.detach().double().cpu(), pool) * pool**2
    height, width = a_all.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], 1).double().numpy()
    cost = ot.dist(positions, positions, metric="euclidean") * pool
    distances = []
    for a_img, b_img in zip(a_all, b_all, strict=True):
        total = 0.0
        for a, b in zip(a_img.flatten(1).numpy(), b_img.flatten(1).numpy(), strict=True):
            if a.sum() <= 0 or b.sum() <= 0:
                continue
            total += a.sum() * float(ot.emd2(a / a.sum(), b / b.sum(), cost, numItermax=10**7))
        distances.append(total)
    return torch.tensor(distances, dtype=torch.float64)
