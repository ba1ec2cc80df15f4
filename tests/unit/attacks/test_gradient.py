"""The one attack loop: every method against a hand-computed step on a linear model, budgets, EOT, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advreid.attacks import ATTACKS, get_attack
from advreid.attacks.gradient import attack
from advreid.attacks.objectives import cross_entropy, reid_non_targeted

SHAPE = (3, 2, 4, 3)  # (B, C, H, W), 2:1-ish like Re-ID crops
N_IN = 2 * 4 * 3


def _linear_classifier(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(N_IN, classes, bias=False)).double()


def _weights(model: nn.Module) -> torch.Tensor:
    return model[1].weight.detach()


def _images(seed: int = 1, low: float = 0.2, high: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(SHAPE, generator=g, dtype=torch.float64)


def _ce_gradient(weights: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, scale: float = 1.0):
    """Closed form: d CE(W (x / scale), y) / dx = W^T (softmax(W x / scale) - onehot(y)) / scale."""
    flat = x.flatten(1)
    probs = torch.softmax(flat @ weights.T / scale, dim=1)
    onehot = F.one_hot(labels, weights.shape[0]).double()
    return ((probs - onehot) @ weights / scale).view_as(x)


def _clip(x, clean, eps):
    return torch.minimum(torch.maximum(x, clean - eps), clean + eps).clamp(0, 1)


def _mean_abs(g):
    return g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)


LABELS = torch.tensor([0, 3, 1])


def test_fgsm_is_one_signed_step_of_size_eps():
    model, x = _linear_classifier(), _images()
    adv = attack(model, x, cross_entropy(LABELS), method="fgsm", eps=0.05, steps=7, step=0.001)
    expected = (x + 0.05 * _ce_gradient(_weights(model), x, LABELS).sign()).clamp(0, 1)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    assert (adv - x).abs().max() == pytest.approx(0.05)


def test_pgd_two_steps_clip_to_the_ball():
    model, x = _linear_classifier(), _images()
    eps, step = 0.03, 0.02  # the second step overshoots the ball, so the clip binds
    adv = attack(model, x, cross_entropy(LABELS), method="pgd", eps=eps, step=step, steps=2)
    w = _weights(model)
    x1 = _clip(x + step * _ce_gradient(w, x, LABELS).sign(), x, eps)
    x2 = _clip(x1 + step * _ce_gradient(w, x1, LABELS).sign(), x, eps)
    torch.testing.assert_close(adv, x2, rtol=0, atol=1e-12)
    assert ((adv - x).abs() - eps).abs().min() < 1e-12


class _PullToward:
    """Objective -|x - c|^2 on an identity model: gradient -2 (x - c) changes sign across c, so every point
    where a gradient is taken shows in the signs."""

    def __init__(self, centre):
        self.centre = centre

    def __call__(self, out):
        return -((out - self.centre) ** 2).flatten(1).sum(1)

    def gradient(self, x):
        return -2 * (x - self.centre)


def _pull_toward(x):
    g = torch.Generator().manual_seed(7)
    return _PullToward(x + 0.1 * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1))


def test_mi_fgsm_accumulates_l1_normalised_momentum_over_two_steps():
    x = _images()
    objective = _pull_toward(x)
    eps, step, mu = 0.2, 0.05, 0.5
    adv = attack(nn.Identity(), x, objective, method="mi_fgsm", eps=eps, step=step, steps=2, momentum=mu)
    g1 = objective.gradient(x)
    v1 = g1 / _mean_abs(g1)
    x1 = _clip(x + step * v1.sign(), x, eps)
    g2 = objective.gradient(x1)
    v2 = mu * v1 + g2 / _mean_abs(g2)
    torch.testing.assert_close(adv, _clip(x1 + step * v2.sign(), x, eps), rtol=0, atol=1e-12)
    # The decay matters here: without it some signs differ.
    assert not torch.equal(v2.sign(), (v1 + g2 / _mean_abs(g2)).sign())


def test_ni_fgsm_takes_the_gradient_at_the_look_ahead_point():
    x = _images()
    objective = _pull_toward(x)
    eps, step, mu = 0.2, 0.05, 0.8
    adv = attack(nn.Identity(), x, objective, method="ni_fgsm", eps=eps, step=step, steps=2, momentum=mu)
    g1 = objective.gradient(x)  # the buffer is zero at the first step: look-ahead = x
    v1 = g1 / _mean_abs(g1)
    x1 = _clip(x + step * v1.sign(), x, eps)
    look_ahead = x1 + step * mu * v1
    g2 = objective.gradient(look_ahead)
    v2 = mu * v1 + g2 / _mean_abs(g2)
    torch.testing.assert_close(adv, _clip(x1 + step * v2.sign(), x, eps), rtol=0, atol=1e-12)
    at_x1 = mu * v1 + objective.gradient(x1) / _mean_abs(objective.gradient(x1))
    assert not torch.equal(v2.sign(), at_x1.sign()), "the look-ahead must make a difference in this case"


def test_si_ni_fgsm_averages_the_gradient_over_scale_copies():
    model, x = _linear_classifier(), _images()
    eps, step, mu, m = 0.1, 0.01, 1.0, 3
    adv = attack(
        model, x, cross_entropy(LABELS), method="si_ni_fgsm", eps=eps, step=step, steps=2, momentum=mu, scales=m
    )
    w = _weights(model)

    def scale_invariant(point):
        return sum(_ce_gradient(w, point, LABELS, scale=2.0**i) for i in range(m)) / m

    g1 = scale_invariant(x)
    v1 = g1 / _mean_abs(g1)
    x1 = _clip(x + step * v1.sign(), x, eps)
    g2 = scale_invariant(x1 + step * mu * v1)
    v2 = mu * v1 + g2 / _mean_abs(g2)
    torch.testing.assert_close(adv, _clip(x1 + step * v2.sign(), x, eps), rtol=0, atol=1e-12)


def test_l2_step_follows_the_normalised_gradient_and_the_ball_rescales():
    model, x = _linear_classifier(), _images(low=0.45, high=0.55)
    grad = _ce_gradient(_weights(model), x, LABELS)
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    free = attack(model, x, cross_entropy(LABELS), method="pgd", norm="l2", eps=1.0, step=0.04, steps=1)
    torch.testing.assert_close(free, x + 0.04 * unit, rtol=0, atol=1e-12)
    # A step longer than the ball is rescaled back onto its sphere, along the same direction.
    capped = attack(model, x, cross_entropy(LABELS), method="pgd", norm="l2", eps=0.02, step=0.04, steps=1)
    torch.testing.assert_close(capped, x + 0.02 * unit, rtol=0, atol=1e-12)


def _feature_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 3, 6))


BUDGETS = {
    "fgsm": {"eps": 8 / 255},
    "pgd": {"eps": 8 / 255, "step": 2 / 255, "steps": 4},
    "pgd_l2": {"eps": 0.3, "step": 0.1, "steps": 4},
    "mi_fgsm": {"eps": 8 / 255, "step": 2 / 255, "steps": 4},
    "ni_fgsm": {"eps": 8 / 255, "step": 2 / 255, "steps": 4},
    "si_ni_fgsm": {"eps": 8 / 255, "step": 2 / 255, "steps": 4, "scales": 3},
    "eot_fgsm": {"eps": 8 / 255, "eot_samples": 3},
    "eot_pgd": {"eps": 8 / 255, "step": 2 / 255, "steps": 4, "eot_samples": 3},
    "wma": {"eps": 8 / 255, "step": 2 / 255, "steps": 3, "eps_w": 0.05, "lam": 300.0},
}


def test_every_registered_attack_has_a_budget_case():
    assert set(BUDGETS) == set(ATTACKS)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_respects_its_budget_and_the_pixel_range(name):
    model = _feature_model()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(SHAPE, generator=g)
    x[0, 0, :2] = 0.0  # pixels at the range limits, where the [0, 1] clip binds
    x[1, 1, 2:] = 1.0
    x_before = x.clone()
    gallery = torch.randn(SHAPE[0], 6, generator=g)
    budget = BUDGETS[name]
    kwargs = {} if name in ("fgsm", "mi_fgsm", "ni_fgsm", "si_ni_fgsm", "eot_fgsm", "wma") else {"generator": g}
    adv = get_attack(name)(model, x, reid_non_targeted(gallery), **budget, **kwargs)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert torch.equal(x, x_before), "the clean images must not be modified"
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if name == "pgd_l2":
        assert delta.norm(dim=1).max() <= budget["eps"] + 1e-6
    else:
        assert delta.abs().max() <= budget["eps"] + 1e-7
    assert delta.abs().max() > 0, "the attack did not move"
    assert all(p.grad is None for p in model.parameters()), "gradients leaked into the parameters"


def test_attacks_increase_a_convex_objective():
    # A linear feature model makes the distance convex in x, so every ascent step must increase it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(N_IN, 4)).double()
    x = _images()
    gallery = model(x).detach() + 0.1
    objective = reid_non_targeted(gallery)
    clean = objective(model(x))
    for name in ("fgsm", "pgd", "mi_fgsm", "ni_fgsm", "si_ni_fgsm"):
        adv = get_attack(name)(model, x, objective, generator=torch.Generator().manual_seed(0))
        assert (objective(model(adv)) > clean).all(), name


def test_random_start_is_deterministic_given_a_generator():
    model, x = _feature_model(), _images().float()
    objective = reid_non_targeted(torch.zeros(SHAPE[0], 6))

    def run(seed):
        return attack(model, x, objective, steps=2, random_start=True, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


class _DropoutLinear(nn.Module):
    """f(x) = <a, dropout(x)>: the input gradient is a * mask / (1 - p), whose expectation is exactly a."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)
        self.dropout = nn.Dropout(p=0.5)

    def forward(self, x):
        return (self.dropout(x.flatten(1)) * self.a).sum(dim=1)


def _identity_objective(output):
    return output


def test_eot_averages_stochastic_gradients_toward_the_expected_gradient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(N_IN, generator=g, dtype=torch.float64)
    model = _DropoutLinear(a).train()
    x = torch.full(SHAPE, 0.5, dtype=torch.float64)
    expected = (a / a.norm()).expand(SHAPE[0], N_IN)
    eps = 0.2  # one L2 FGSM step of length eps along the (averaged) gradient, never clipped

    def direction(samples):
        adv = attack(model, x, _identity_objective, method="fgsm", norm="l2", eps=eps, eot_samples=samples)
        return ((adv - x) / eps).flatten(1)

    torch.manual_seed(1)
    one_a, one_b = direction(1), direction(1)
    assert not torch.allclose(one_a, one_b), "the noise must stay on: the model keeps its train mode"
    assert model.training
    many = direction(400)
    error_one = (one_a - expected).norm(dim=1)
    error_many = (many - expected).norm(dim=1)
    assert (error_many < error_one).all()
    # Averaging 400 Bernoulli masks: relative error ~ 1/sqrt(400) = 0.05 per coordinate.
    assert error_many.max() < 0.15
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_is_left_alone():
    model = _DropoutLinear(torch.ones(N_IN, dtype=torch.float64)).eval()
    attack(model, torch.full(SHAPE, 0.5, dtype=torch.float64), _identity_objective, method="fgsm")
    assert not model.training


def test_attack_runs_under_no_grad():
    model, x = _linear_classifier(), _images()
    with torch.no_grad():
        adv = attack(model, x, cross_entropy(LABELS), method="fgsm", eps=0.05)
    assert (adv - x).abs().max() == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "cw"}, "method"),
        ({"norm": "l1"}, "norm"),
        ({"eps": -0.1}, "eps"),
        ({"eot_samples": 0}, "eot_samples"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        attack(_linear_classifier(), _images(), cross_entropy(LABELS), **kwargs)


def test_images_outside_the_unit_range_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(_linear_classifier(), _images() * 2, cross_entropy(LABELS))


def test_objective_must_return_one_loss_per_sample():
    with pytest.raises(ValueError, match="one loss per sample"):
        attack(_linear_classifier(), _images(), lambda logits: logits.sum(), method="fgsm")


def test_unknown_attack_lists_the_names():
    with pytest.raises(KeyError, match="pgd_l2"):
        get_attack("deepfool")


def test_si_gradient_averages_exact_scales_one_over_two_to_the_i():
    """Catches wrong SI scales (x / (i + 1), x * 2^i, ...): for f(x) = <w, x> the gradient at x / 2^i is w / 2^i,
    so three scales average to w (1 + 1/2 + 1/4) / 3."""
    from advreid.attacks.gradient import _gradient

    w = torch.linspace(-1.0, 1.0, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)

    def model(x):
        return (x * w).flatten(1).sum(1, keepdim=True)

    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    grad = _gradient(model, x, lambda out: out[:, 0], scales=3, samples=1)
    torch.testing.assert_close(grad, w * (1 + 1 / 2 + 1 / 4) / 3)


def test_random_start_is_uniform_in_the_ball_with_both_signs_and_mean_zero():
    """Catches a one-sided or shrunken random start: L-inf noise is U(-eps, eps) (mean 0, half of it inside
    eps / 2), L2 noise has both signs, mean 0 and norm at most eps."""
    from advreid.attacks.gradient import _random_start

    eps, generator = 0.1, torch.Generator().manual_seed(0)
    x = torch.full((64, 3, 16, 16), 0.5)  # far from 0 and 1: the clamp changes nothing
    noise = _random_start(x, "linf", eps, generator) - x
    assert noise.abs().max() <= eps + 1e-7
    assert abs(noise.mean().item()) < 0.002  # standard error eps / sqrt(3 N) ~ 0.0001
    assert (noise > eps / 2).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert (noise < -eps / 2).float().mean().item() == pytest.approx(0.25, abs=0.01)
    noise = _random_start(x, "l2", eps, generator) - x
    assert (noise.flatten(1).norm(dim=1) <= eps + 1e-6).all()
    assert abs(noise.mean().item()) < 0.001 and (noise > 0).any() and (noise < 0).any()
