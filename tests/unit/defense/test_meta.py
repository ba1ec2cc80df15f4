"""Algorithms 2 and 3 on a tiny model: the meta step against a manual computation, the alternating sub-steps, EOT."""

from __future__ import annotations

import copy

import pytest
import torch

from advreid.attacks.gradient import _gradient
from advreid.defense.losses import LossSettings
from advreid.defense.meta import (
    MetaBatch,
    PGDSettings,
    adversarial_images,
    loss_step,
    meta_step,
    split_by_identity,
    task_loss,
)
from advreid.defense.noise import NoiseConfig, build_stochastic_model
from advreid.defense.training import DefenseSettings, build_optimizer
from advreid.models.reid import build_reid_model

SIZE = (16, 8)
LOSS = LossSettings()
PGD = PGDSettings(eps=8 / 255, step=2 / 255, steps=1, random_start=False)


def tiny(noise: NoiseConfig = NoiseConfig()):
    torch.manual_seed(0)
    return build_stochastic_model(build_reid_model("small_cnn", 4, channels=(4, 8)), noise, SIZE).train()


def batch():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(16, 3, *SIZE, generator=generator), torch.arange(4).repeat_interleave(4)


def plain_sgd(model, alpha=0.05, beta=0.5):
    settings = DefenseSettings(alpha=alpha, beta=beta, momentum=0.0, weight_decay=0.0, alternate="simultaneous")
    return build_optimizer(model, settings)


def test_split_by_identity_is_disjoint():
    labels = torch.tensor([5, 5, 7, 7, 1, 1, 2, 2])
    train, test = split_by_identity(labels)
    assert train.tolist() == [0, 1, 2, 3] and test.tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("task", ["P", "PA"])
def test_first_order_meta_step_equals_a_manual_two_step_computation(task):
    images, labels = batch()
    model = tiny()
    manual = copy.deepcopy(model)
    optimizer = plain_sgd(model)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    xtr, ytr, xte, yte = images[:8], labels[:8], images[8:], labels[8:]
    torch.manual_seed(11)
    adv_tr = adversarial_images(model, xtr, ytr, PGD) if task != "PA" else None
    adv_te = adversarial_images(model, xte, yte, PGD) if task == "PA" else None
    mb = MetaBatch(task, xtr, ytr, xte, yte, adv_tr, adv_te)
    torch.manual_seed(12)
    meta_step(model, optimizer, mb, LOSS, epoch=1, meta_order=1, alternate="simultaneous")

    # by hand: Theta' = Theta - lr grad L_mtr on a deep copy, then the sum of the meta-test gradients at both
    torch.manual_seed(12)
    lrs = {n: lr[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    others = [t for t in ("V", "P", "PA") if t != task]
    for p in manual.parameters():
        p.grad = None
    sum(task_loss(manual, t, xtr, ytr, LOSS, 1, adv_tr) for t in others).backward()
    prime = copy.deepcopy(manual)
    with torch.no_grad():
        for (name, p), q in zip(manual.named_parameters(), prime.parameters(), strict=True):
            if p.requires_grad and p.grad is not None:
                q -= lrs[name] * p.grad
        prime.project()
    for m in (manual, prime):
        for p in m.parameters():
            p.grad = None
    task_loss(manual, task, xte, yte, LOSS, 1, adv_te).backward()
    task_loss(prime, task, xte, yte, LOSS, 1, adv_te).backward()
    with torch.no_grad():
        for (name, p), q in zip(manual.named_parameters(), prime.parameters(), strict=True):
            if p.requires_grad and (p.grad is not None or q.grad is not None):
                g = (p.grad if p.grad is not None else 0) + (q.grad if q.grad is not None else 0)
                p -= lrs[name] * g
        manual.project()
    for (name, a), b in zip(model.named_parameters(), manual.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert not torch.equal(model.anisotropic.phi_a, copy.deepcopy(tiny()).anisotropic.phi_a)


def test_second_order_meta_gradient_differs_from_the_first_order_one():
    images, labels = batch()
    results = []
    for order in (1, 2):
        model = tiny()
        torch.manual_seed(5)
        adversarial = adversarial_images(model, images[8:], labels[8:], PGD)
        mb = MetaBatch("PA", images[:8], labels[:8], images[8:], labels[8:], None, adversarial)
        meta_step(model, plain_sgd(model, alpha=0.5, beta=0.5), mb, LOSS, 1, meta_order=order, alternate="simultaneous")
        results.append(model.vanilla.head.classifier.weight.detach().clone())
    assert not torch.allclose(*results)


def test_each_alternating_sub_step_changes_only_its_parameter_group():
    images, labels = batch()
    model = tiny()
    optimizer = build_optimizer(model, DefenseSettings(alpha=0.05, beta=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    changed: list[set[str]] = []

    def record_after_each_step():
        changed.append({n for n, p in model.named_parameters() if not torch.equal(p, before[n])})
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})

    original_project = model.project

    def project():  # apply_gradients projects after every optimizer step
        original_project()
        record_after_each_step()

    model.project = project
    loss_step(model, optimizer, lambda: task_loss(model, "P", images, labels, LOSS, 1), "sequential")
    first, second = changed
    assert first and all(not n.startswith("isotropic.") for n in first) and "anisotropic.phi_a" in first
    assert second and all(n.startswith("isotropic.") for n in second)


def test_eot_gradients_see_the_noise():
    images, _ = batch()
    model = tiny().eval()
    objective = lambda features: features.pow(2).sum(1)  # noqa: E731
    one = _gradient(model, images[:2], objective, 1, 1)
    two = _gradient(model, images[:2], objective, 1, 1)
    averaged = _gradient(model, images[:2], objective, 1, 8)
    assert not torch.allclose(one, two)
    assert not torch.allclose(averaged, one)


def test_bad_defense_settings_name_the_parameter():
    with pytest.raises(ValueError, match="method"):
        DefenseSettings(method="magic").check("defense.variants.x")
    with pytest.raises(ValueError, match="lambda_r"):
        DefenseSettings(lambda_r=-1.0).check("defense.train")
    with pytest.raises(ValueError, match="pgd_eps"):
        DefenseSettings(pgd_eps=-8).check("defense.train")
