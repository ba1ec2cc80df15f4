"""Gradient attacks as ONE loop with pluggable parts (thesis 5.3.1 attack list, and Algorithm 1's loop).

gradient source: plain, scale-invariant average (SI), EOT average over stochastic forward passes
step:            sign (L-inf) or L2-normalised direction, optionally on a momentum buffer (MI) taken at a
                 Nesterov look-ahead point (NI)
projection:      optional callable (e.g. the Wasserstein projection), then the L-inf or L2 ball, then [0, 1]

Images are float in [0, 1]; normalisation belongs to the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advreid.attacks.objectives import Objective

METHODS = ("fgsm", "pgd", "mi_fgsm", "ni_fgsm", "si_ni_fgsm")
NORMS = ("linf", "l2")
_MOMENTUM_METHODS = ("mi_fgsm", "ni_fgsm", "si_ni_fgsm")
_LOOK_AHEAD_METHODS = ("ni_fgsm", "si_ni_fgsm")

Projection = Callable[[Tensor, Tensor], Tensor]


def _broadcast(per_sample: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample (B,) quantity to broadcast over ``like`` (B, ...)."""
    return per_sample.view(-1, *([1] * (like.dim() - 1)))


def _l2_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def _direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for L-inf, grad / |grad|_2 for L2."""
    if norm == "linf":
        return grad.sign()
    tiny = torch.finfo(grad.dtype).tiny
    return grad / _broadcast(_l2_norm(grad).clamp(min=tiny), grad)


def _gradient(model: nn.Module, x: Tensor, objective: Objective, scales: int, samples: int) -> Tensor:
    """Gradient of the summed objective w.r.t. the input only (never the parameters' .grad), averaged over
    ``scales`` copies x / 2^i (SI, Lin et al. 2020) and ``samples`` stochastic forward passes (EOT)."""
    total = None
    with torch.enable_grad():
        for _ in range(samples):
            for i in range(scales):
                x_in = x.detach().requires_grad_(True)
                loss = objective(model(x_in if i == 0 else x_in / 2**i))
                if loss.shape != x.shape[:1]:
                    raise ValueError(
                        f"objective must return one loss per sample, shape ({x.shape[0]},), got {tuple(loss.shape)}"
                    )
                (grad,) = torch.autograd.grad(loss.sum(), x_in)
                total = grad if total is None else total.add_(grad)
    count = scales * samples
    return total if count == 1 else total.div_(count)


def _random_start(x: Tensor, norm: str, eps: float, generator: torch.Generator | None) -> Tensor:
    """Uniform noise in the L-inf ball, or a Gaussian direction at radius eps * U(0, 1) in the L2 ball."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * (2 * eps) - eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        noise = _direction(direction, "l2") * _broadcast(radius, x)
    return (x + noise).clamp_(0.0, 1.0)


def _check_arguments(
    images: Tensor, method: str, norm: str, eps: float, step: float, steps: int, scales: int, eot_samples: int
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps < 0 or step < 0:
        raise ValueError(f"eps and step must be non-negative, got eps={eps}, step={step}")
    if steps < 0 or scales < 1 or eot_samples < 1:
        raise ValueError(f"need steps >= 0, scales >= 1, eot_samples >= 1; got {steps}, {scales}, {eot_samples}")
    if not images.is_floating_point() or images.dim() < 2:
        raise ValueError(f"images must be a float batch (B, ...), got {images.dtype} {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1]; normalisation belongs to the model")


def attack(
    model: nn.Module,
    images: Tensor,
    objective: Objective,
    *,
    method: str = "pgd",
    norm: str = "linf",
    eps: float = 8 / 255,
    step: float = 2 / 255,
    steps: int = 10,
    random_start: bool = False,
    momentum: float = 1.0,
    scales: int = 5,
    eot_samples: int = 1,
    projection: Projection | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Maximise ``objective(model(x))`` over the ``norm`` ball of radius ``eps`` around ``images``.

    Methods (all one loop):
      - ``fgsm``: one step of size eps (Goodfellow et al. 2015); ``steps`` and ``step`` are ignored.
      - ``pgd``: ``steps`` steps of size ``step`` (I-FGSM, Kurakin et al. 2017; with ``random_start``, PGD,
        Madry et al. 2018).
      - ``mi_fgsm``: momentum g <- momentum * g + grad / mean|grad| (Dong et al. 2018; the mean |.| is the L1
        norm over the dimension, as in the authors' code, so the NI look-ahead below has pixel scale).
      - ``ni_fgsm``: as MI, gradient taken at the look-ahead x + step * momentum * g (Lin et al. 2020).
      - ``si_ni_fgsm``: as NI, gradient averaged over the ``scales`` copies x / 2^i, i = 0..scales-1.
    ``eot_samples > 1`` averages each gradient over that many forward passes (EOT, Athalye et al. 2018); the
    model stays in the mode it is in, so a stochastic defence keeps its noise on.

    Args:
        model: maps images in [0, 1] to the objective's input (logits or features).
        images: (B, ...) clean images in [0, 1]; not modified.
        objective: callable, model output -> (B,) loss to increase (see :mod:`advreid.attacks.objectives`).
        method, norm: see above; ``norm`` is ``"linf"`` (sign steps) or ``"l2"`` (L2-normalised steps).
        eps: ball radius in [0, 1] pixel units; step: step size; steps: iterations.
        random_start: start from a random point of the ball (drawn with ``generator``).
        momentum: decay of the MI / NI momentum buffer.
        scales: number of SI scale copies (used by ``si_ni_fgsm`` only).
        eot_samples: forward passes averaged per gradient.
        projection: optional ``(clean, x) -> x`` applied after each step, before the ball and [0, 1] clip.
        generator: torch.Generator on the images' device, for the random start.
    Returns:
        (B, ...) adversarial images in [0, 1], within ``eps`` of ``images`` in ``norm``.
    """
    _check_arguments(images, method, norm, eps, step, steps, scales, eot_samples)
    if method == "fgsm":
        steps, step = 1, eps
    uses_momentum = method in _MOMENTUM_METHODS
    look_ahead = method in _LOOK_AHEAD_METHODS
    n_scales = scales if method == "si_ni_fgsm" else 1

    x_clean = images.detach()
    if norm == "linf":
        # Clip bounds computed once: one clamp per step keeps x in the ball and in [0, 1].
        low, high = (x_clean - eps).clamp_(min=0.0), (x_clean + eps).clamp_(max=1.0)
    x = _random_start(x_clean, norm, eps, generator) if random_start else x_clean.clone()
    velocity = torch.zeros_like(x) if uses_momentum else None

    for _ in range(steps):
        point = x + (step * momentum) * velocity if look_ahead else x
        grad = _gradient(model, point, objective, n_scales, eot_samples)
        with torch.no_grad():
            if uses_momentum:
                mean_abs = grad.abs().flatten(1).mean(dim=1).clamp_(min=torch.finfo(grad.dtype).tiny)
                grad = velocity.mul_(momentum).add_(grad / _broadcast(mean_abs, grad))
            x = x.add_(_direction(grad, norm), alpha=step)
            if projection is not None:
                x = projection(x_clean, x)
            if norm == "linf":
                x = x.clamp_(low, high)
            else:
                delta = x - x_clean
                shrink = (eps / _l2_norm(delta).clamp(min=torch.finfo(x.dtype).tiny)).clamp_(max=1.0)
                x = (x_clean + delta * _broadcast(shrink, delta)).clamp_(0.0, 1.0)
    return x
