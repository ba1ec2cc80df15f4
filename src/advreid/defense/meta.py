"""The updates of MP-SNN: the task losses V / P / PA, PGD adversarial images, Algorithm 2 (alternating updates of
(theta, phi_a) and phi) and Algorithm 3 (meta-train / meta-test over the tasks, eqs. 5.8-5.11).

The optimizer has two parameter groups, in this order: (theta, phi_a) with learning rate alpha and phi with beta
(:func:`parameter_groups`). After every update phi is clamped and phi_a re-projected (``model.project()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from advreid.attacks.gradient import attack
from advreid.attacks.objectives import cross_entropy
from advreid.defense.losses import TASKS, LossSettings, mix_loss, total_loss, vanilla_loss
from advreid.defense.noise import StochasticReIDModel, noise_enabled

ALTERNATE = ("sequential", "simultaneous")
Parameters = dict[str, Tensor]


@dataclass(frozen=True)
class PGDSettings:
    """Madry et al.'s untargeted L-inf PGD on the training-identity cross-entropy, in [0, 1] pixel units."""

    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 7
    random_start: bool = True


class ClassifierLogits(nn.Module):
    """The logits of a Re-ID model in its current mode: eval mode (BN statistics fixed, noise on) for PGD."""

    def __init__(self, model: StochasticReIDModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.vanilla.head.classifier(self.model(x))


def adversarial_images(model: StochasticReIDModel, images: Tensor, labels: Tensor, pgd: PGDSettings) -> Tensor:
    """PGD images against ``model`` with BN in eval mode and noise on (spec B7); the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return attack(
            ClassifierLogits(model),
            images,
            cross_entropy(labels),
            method="pgd",
            eps=pgd.eps,
            step=pgd.step,
            steps=pgd.steps,
            random_start=pgd.random_start,
        )
    finally:
        model.train(was_training)


def parameter_groups(model: StochasticReIDModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """((theta, phi_a), phi): the trainable vanilla weights with phi_a, and the isotropic sigma-maps."""
    theta = [p for p in model.vanilla.parameters() if p.requires_grad]
    phi_a = [model.anisotropic.phi_a] if model.anisotropic is not None else []
    return theta + phi_a, list(model.sigmas())


def task_loss(
    model: StochasticReIDModel,
    task: str,
    images: Tensor,
    labels: Tensor,
    settings: LossSettings,
    epoch: int,
    adversarial: Tensor | None = None,
    params: Parameters | None = None,
) -> Tensor:
    """The loss of a task (spec B6): V = L_V with noise off (5.1), P = L_Mix (5.6), PA = L_Tot (5.7), the model in
    train mode; ``params`` evaluates it at other parameter values (functional_call on copies of the buffers)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    if params is None:
        forward: Callable[[Tensor], object] = model
        sigmas = list(model.sigmas())
        phi_a = model.anisotropic.phi_a if model.anisotropic is not None else None
    else:
        buffers = {name: b.clone() for name, b in model.named_buffers()}

        def forward(x: Tensor) -> object:
            return functional_call(model, {**params, **buffers}, (x,))

        sigmas = [params[f"isotropic.{i}.sigma"] for i in range(len(model.isotropic))]
        phi_a = params.get("anisotropic.phi_a")
    if task == "V":
        with noise_enabled(model, False):
            output = forward(images)
        _take_clean_embedding(model)
        return vanilla_loss(output, labels, settings)
    output = forward(images)
    clean = _take_clean_embedding(model)
    mix = mix_loss(output, labels, settings, sigmas, epoch, clean, phi_a)
    if task == "P":
        return mix
    if adversarial is None:
        raise ValueError("task PA needs the adversarial images")
    adversarial_output = forward(adversarial)
    _take_clean_embedding(model)
    return total_loss(mix, adversarial_output, labels, settings)


def apply_gradients(
    model: StochasticReIDModel, optimizer: torch.optim.Optimizer, gradients: dict[int, Tensor | None], group: int | None
) -> None:
    """One optimizer step with ``gradients`` (keyed by ``id(parameter)``) on parameter group ``group`` (None:
    all groups); the other groups get no gradient, so SGD leaves them (and their momentum) untouched."""
    optimizer.zero_grad(set_to_none=True)
    for index, param_group in enumerate(optimizer.param_groups):
        if group is not None and index != group:
            continue
        for p in param_group["params"]:
            g = gradients.get(id(p))
            if g is not None:
                p.grad = g.detach().clone()
    optimizer.step()
    model.project()


def alternating_update(
    model: StochasticReIDModel,
    optimizer: torch.optim.Optimizer,
    gradient_fn: Callable[[], dict[int, Tensor | None]],
    alternate: str = "sequential",
) -> None:
    """Algorithm 2: update (theta, phi_a) with phi fixed, then phi with (theta, phi_a) fixed, each by gradient
    descent; ``sequential`` recomputes the gradient after the first sub-step, ``simultaneous`` takes one
    gradient for both groups (Learn2Perturb's code). ``gradient_fn()`` returns {id(parameter): gradient}."""
    if alternate not in ALTERNATE:
        raise ValueError(f"alternate must be one of {list(ALTERNATE)}, got {alternate!r}")
    has_phi = bool(optimizer.param_groups[1]["params"]) if len(optimizer.param_groups) > 1 else False
    if alternate == "simultaneous" or not has_phi:
        apply_gradients(model, optimizer, gradient_fn(), None)
        return
    apply_gradients(model, optimizer, gradient_fn(), 0)
    apply_gradients(model, optimizer, gradient_fn(), 1)


def loss_step(
    model: StochasticReIDModel,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], Tensor],
    alternate: str = "sequential",
) -> float:
    """Algorithm 2 on the loss ``loss_fn()`` (recomputed for each sub-step); returns its first value."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []

    def gradient_fn() -> dict[int, Tensor | None]:
        loss = loss_fn()
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return {id(p): g for p, g in zip(params, grads, strict=True)}

    alternating_update(model, optimizer, gradient_fn, alternate)
    return losses[0]


def split_by_identity(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Meta-train / meta-test rows of a P x K batch: the first half of its identities and the rest (spec B6 ii)."""
    identities = list(dict.fromkeys(labels.tolist()))
    if len(identities) < 4:
        raise ValueError(f"the meta split needs a batch of >= 4 identities (2 per side for triplets), got {identities}")
    train_ids = torch.tensor(identities[: len(identities) // 2], device=labels.device)
    in_train = torch.isin(labels, train_ids)
    return torch.nonzero(in_train).flatten(), torch.nonzero(~in_train).flatten()


@dataclass(frozen=True)
class MetaBatch:
    """One meta iteration's data: the meta-test task, the identity-disjoint split and the PGD images (vs Theta)."""

    task: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    train_adversarial: Tensor | None
    test_adversarial: Tensor | None


def meta_gradients(
    model: StochasticReIDModel,
    batch: MetaBatch,
    settings: LossSettings,
    epoch: int,
    learning_rates: dict[int, float],
    meta_order: int = 1,
) -> tuple[dict[int, Tensor | None], float]:
    """Gradient (keyed by ``id(parameter)``) and value of L_meta(Theta) = L_t(Theta; X_te) + L_t(Theta'; X_te)
    (eq. 5.11), Theta' = Theta - lr grad L_mtr (eq. 5.8: the sum of the other tasks' losses on X_tr), projected
    (clamp phi, tril phi_a). ``meta_order`` 1: first order, Theta' a copy (the gradient at Theta' is added to the
    one at Theta); 2: through Theta'(Theta)."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    values = list(named.values())
    meta_train_tasks = [t for t in TASKS if t != batch.task]
    train = (batch.train_images, batch.train_labels)
    mtr = sum(
        task_loss(model, t, *train, settings, epoch, batch.train_adversarial if t == "PA" else None)
        for t in meta_train_tasks
    )
    grads = torch.autograd.grad(mtr, values, create_graph=meta_order == 2, allow_unused=True)
    prime = {}
    for (name, p), g in zip(named.items(), grads, strict=True):
        value = p if g is None else p - learning_rates[id(p)] * g
        if name.startswith("isotropic."):
            value = value.clamp(min=model.config.iso_min)
        elif name == "anisotropic.phi_a":
            value = value.tril()
        prime[name] = value if meta_order == 2 else value.detach().requires_grad_(True)
    test = (batch.test_images, batch.test_labels, settings, epoch, batch.test_adversarial)
    loss_theta = task_loss(model, batch.task, *test)
    loss_prime = task_loss(model, batch.task, *test, params=prime)
    if meta_order == 2:
        total = torch.autograd.grad(loss_theta + loss_prime, values, allow_unused=True)
    else:
        at_theta = torch.autograd.grad(loss_theta, values, allow_unused=True)
        at_prime = torch.autograd.grad(loss_prime, list(prime.values()), allow_unused=True)
        total = [_add(a, b) for a, b in zip(at_theta, at_prime, strict=True)]
    return {id(p): g for p, g in zip(values, total, strict=True)}, float((loss_theta + loss_prime).detach())


def make_meta_batch(
    model: StochasticReIDModel, images: Tensor, labels: Tensor, task: str, pgd: PGDSettings
) -> MetaBatch:
    """Split a batch for Algorithm 3 and make the PGD images its tasks need (against the current Theta)."""
    train_rows, test_rows = split_by_identity(labels)
    xtr, ytr, xte, yte = images[train_rows], labels[train_rows], images[test_rows], labels[test_rows]
    adv_tr = adversarial_images(model, xtr, ytr, pgd) if task != "PA" else None  # PA is then a meta-train task
    adv_te = adversarial_images(model, xte, yte, pgd) if task == "PA" else None
    return MetaBatch(task, xtr, ytr, xte, yte, adv_tr, adv_te)


def meta_step(
    model: StochasticReIDModel,
    optimizer: torch.optim.Optimizer,
    batch: MetaBatch,
    settings: LossSettings,
    epoch: int,
    meta_order: int = 1,
    alternate: str = "sequential",
) -> float:
    """Algorithm 3, one iteration on ``batch``, applied with Algorithm 2's split of the parameter groups;
    returns L_meta before the update."""
    learning_rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    losses: list[float] = []

    def gradient_fn() -> dict[int, Tensor | None]:
        gradients, loss = meta_gradients(model, batch, settings, epoch, learning_rates, meta_order)
        losses.append(loss)
        return gradients

    alternating_update(model, optimizer, gradient_fn, alternate)
    return losses[0]


def _take_clean_embedding(model: StochasticReIDModel) -> Tensor | None:
    """The embedding before the anisotropic noise of the last forward; cleared (it holds the graph)."""
    if model.anisotropic is None:
        return None
    clean, model.anisotropic.clean_embedding = model.anisotropic.clean_embedding, None
    return clean


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
