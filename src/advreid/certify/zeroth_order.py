"""Zeroth-order gradient estimators (thesis eqs. 6.15-6.19) and their chaining into autograd.

The estimators see the black-box part of the pipeline only through ``loss_fn``, a closure mapping a
batch of query points ``(N, ...)`` to per-sample losses ``(N,)``. Each estimator builds all its query
points for the whole batch and sends them to ``loss_fn`` in one call, laid out block-major: row
``k * B + b`` is the k-th query of sample ``b`` (so ``targets.repeat(N // B)`` lines per-sample data up
with the rows). The returned estimate has the shape of ``z``; row ``b`` estimates the gradient of
sample ``b``'s own loss with respect to ``z[b]``, so samples are estimated independently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

LossFn = Callable[[Tensor], Tensor]


def rge_gradient(
    loss_fn: LossFn,
    z: Tensor,
    q: int,
    mu: float = 0.005,
    generator: torch.Generator | None = None,
    base_loss: Tensor | None = None,
) -> Tensor:
    """Randomized gradient estimate (thesis eq. 6.16), per sample of a batch.

    ``g_b = d / (mu q) * sum_k (l_b(z_b + mu u_k) - l_b(z_b)) u_k`` with ``u_k`` drawn independently
    and uniformly from the unit sphere of R^d, d = numel(z_b) (the d factor goes with unit-sphere
    directions; Algorithm 4's Gaussian directions would drop it). Costs q + 1 queries per sample in one
    call whose block 0 is ``z`` itself (so that a ``loss_fn`` needing the black box's outputs at ``z``, like
    eq. 6.13's MMD reference batch, reads them there), or q when ``base_loss`` is given.

    Args:
        loss_fn: ``(N, ...) -> (N,)`` per-sample losses of query points, rows block-major.
        z: ``(B, ...)`` points at which to estimate (detached; the estimate carries no graph).
        q: number of random directions per sample.
        mu: smoothing radius (thesis: 0.005).
        generator: source of the directions; must live on ``z``'s device.
        base_loss: ``(B,)`` losses at ``z`` when the caller already has them; skips those B queries.

    Returns:
        ``(B, ...)`` gradient estimates, same shape and dtype as ``z``.
    """
    if q < 1:
        raise ValueError(f"q must be >= 1, got {q}")
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    z = _check_batch(z)
    batch, dim = z.shape[0], z[0].numel()
    flat = z.reshape(batch, dim)
    if base_loss is not None and base_loss.shape != (batch,):
        raise ValueError(f"base_loss must have shape ({batch},), got {tuple(base_loss.shape)}")
    directions = torch.randn((q, batch, dim), generator=generator, device=z.device, dtype=z.dtype)
    directions.div_(directions.norm(dim=2, keepdim=True))  # (q, B, d) on the unit sphere, in place
    # the query points are written once into the batch the black box receives: no temporaries of size (q, B, d)
    skip = 0 if base_loss is None else 1
    queries = torch.empty((q + 1 - skip, batch, dim), device=z.device, dtype=z.dtype)
    if base_loss is None:
        queries[0] = flat
    torch.add(flat[None], directions, alpha=mu, out=queries[1 - skip :])
    losses = _call(loss_fn, queries.reshape(-1, *z.shape[1:])).reshape(q + 1 - skip, batch)  # ((q+1) B, ...)
    base, moved = (losses[0], losses[1:]) if base_loss is None else (base_loss.detach().to(z.dtype), losses)
    differences = moved - base[None]  # (q, B)
    grad = torch.einsum("kb,kbd->bd", differences, directions).mul_(dim / (mu * q))  # sum_k diff_k u_k, (B, d)
    return grad.reshape(z.shape)


def cge_gradient(loss_fn: LossFn, z: Tensor, mu: float = 0.005, with_center: bool = False) -> Tensor:
    """Coordinate-wise gradient estimate (thesis eq. 6.19), per sample of a batch.

    ``g_b = sum_j (l_b(z_b + mu e_j) - l_b(z_b - mu e_j)) / (2 mu) e_j``: central differences along
    every coordinate, 2d queries per sample. Eq. 6.19 prints the denominator as mu; the 2 mu used
    here (as in Zhang et al. 2022's code) makes the estimate converge to the gradient itself.

    Args:
        loss_fn: ``(N, ...) -> (N,)`` per-sample losses of query points, rows block-major
            (the first d blocks are ``+mu e_j``, the next d blocks ``-mu e_j``).
        z: ``(B, ...)`` points at which to estimate, typically a low-dimensional latent.
        mu: finite-difference step (thesis: 0.005).
        with_center: put ``z`` itself first, as block 0 of the same call (2d + 1 queries per sample), for a
            ``loss_fn`` that needs the black box's outputs at ``z`` (eq. 6.13's MMD reference batch); the
            estimate does not use those losses.

    Returns:
        ``(B, ...)`` gradient estimates, same shape and dtype as ``z``.
    """
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    z = _check_batch(z)
    batch, dim = z.shape[0], z[0].numel()
    flat = z.reshape(batch, dim)
    steps = mu * torch.eye(dim, device=z.device, dtype=z.dtype)[:, None, :]  # (d, 1, d), row j = mu e_j
    # the query points are written once into the batch the black box receives, [z,] z + mu e_j, then z - mu e_j
    first = int(with_center)
    queries = torch.empty((first + 2 * dim, batch, dim), device=z.device, dtype=z.dtype)
    if with_center:
        queries[0] = flat
    torch.add(flat[None], steps, out=queries[first : first + dim])
    torch.sub(flat[None], steps, out=queries[first + dim :])
    losses = _call(loss_fn, queries.reshape(-1, *z.shape[1:]))[first * batch :].reshape(2, dim, batch)
    grad = (losses[0] - losses[1]) / (2 * mu)  # (d, B)
    return grad.transpose(0, 1).reshape(z.shape)


def zo_backward(white_box_output: Tensor, grad_estimate: Tensor, reduction: str = "mean") -> None:
    """Chain a zeroth-order estimate into the white-box part by autograd (thesis eqs. 6.15 and 6.18).

    ``d L / d theta ~ (d z / d theta)^T g`` with ``z = white_box_output`` (the denoiser output, or the
    encoder latent in the AE variants) and ``g`` the estimate of d l_b / d z_b per sample. Gradients
    accumulate into the parameters' ``.grad`` like ``Tensor.backward``, so white-box loss terms may be
    back-propagated separately before the optimizer step.

    Args:
        white_box_output: ``(B, ...)`` tensor attached to the white-box graph.
        grad_estimate: ``(B, ...)`` per-sample gradient estimates (from ``rge_gradient``/``cge_gradient``).
        reduction: ``"mean"`` chains the gradient of the batch-mean loss (estimate / B), ``"sum"`` of the sum.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if not white_box_output.requires_grad:
        raise ValueError("white_box_output does not require grad: it must come from the trainable white box")
    if grad_estimate.shape != white_box_output.shape:
        raise ValueError(
            f"grad_estimate shape {tuple(grad_estimate.shape)} != white_box_output shape "
            f"{tuple(white_box_output.shape)}"
        )
    scale = 1.0 / white_box_output.shape[0] if reduction == "mean" else 1.0
    white_box_output.backward(grad_estimate.detach().to(white_box_output.dtype) * scale)


def _check_batch(z: Tensor) -> Tensor:
    if z.dim() < 2 or z.shape[0] == 0 or z[0].numel() == 0:
        raise ValueError(f"z must be a non-empty batch (B, ...) with B >= 1 and d >= 1, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z must be floating point, got {z.dtype}")
    return z.detach()


def _call(loss_fn: LossFn, queries: Tensor) -> Tensor:
    with torch.no_grad():
        losses = loss_fn(queries)
    if losses.shape != (queries.shape[0],):
        raise ValueError(
            f"loss_fn must return per-sample losses of shape ({queries.shape[0]},), got {tuple(losses.shape)}"
        )
    return losses.detach().to(queries.dtype)
