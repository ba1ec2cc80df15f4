"""Objectives of eqs. 6.8-6.13 against hand computations and autograd identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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
from advreid.certify.zeroth_order import cge_gradient


def _mmd_by_loops(x: list[list[float]], y: list[list[float]], bandwidths: tuple[float, ...]) -> float:
    def k(a: list[float], b: list[float]) -> float:
        d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))
        return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths)

    def mean_k(p: list[list[float]], r: list[list[float]]) -> float:
        return sum(k(a, b) for a in p for b in r) / (len(p) * len(r))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_mmd_hand_value_and_independent_loop_computation() -> None:
    one = mmd_rbf(torch.tensor([[0.0]]), torch.tensor([[1.0]]), bandwidths=(1.0,))
    assert one.item() == pytest.approx(2 - 2 * math.exp(-0.5))

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 3, generator=gen, dtype=torch.float64) + 0.5
    expected = _mmd_by_loops(x.tolist(), y.tolist(), (0.5, 1.0, 2.0))
    assert mmd_rbf(x, y, bandwidths=(0.5, 1.0, 2.0)).item() == pytest.approx(expected, rel=1e-10)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(mmd_rbf(x, x.clone()).item()) < 1e-12
    values = [mmd_rbf(x, x + shift).item() for shift in (0.1, 0.5, 2.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_mmd_per_sample_gradient_and_value_identities() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    (grad_batch,) = torch.autograd.grad(mmd_rbf(x, y), y)

    shares = mmd_rbf_per_sample(x, y, y.detach())  # each row moves only its own sample
    (grad_shares,) = torch.autograd.grad(shares.sum(), y)
    assert torch.allclose(grad_shares, 4 * grad_batch, rtol=1e-10, atol=1e-12)
    assert shares.mean().item() == pytest.approx(mmd_rbf(x, y).item(), rel=1e-10)

    twice = mmd_rbf_per_sample(x, torch.cat([y, y]).detach(), y.detach())  # block-major rows
    assert torch.allclose(twice, torch.cat([shares, shares]).detach())
    with pytest.raises(ValueError, match="multiple of the batch"):
        mmd_rbf_per_sample(x, y[:3].detach(), y.detach())


def test_cosine_term_lower_for_aligned_logits() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    assert cosine_dissimilarity(a, b).tolist() == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)


def test_cross_entropy_from_probs_matches_logit_cross_entropy_and_handles_zeros() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    expected = F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(cross_entropy_from_probs(logits.softmax(1), labels), expected)

    soft = torch.tensor([[0.25, 0.75]])
    assert cross_entropy_from_probs(torch.tensor([[0.5, 0.5]]), soft).item() == pytest.approx(math.log(2))
    zero = cross_entropy_from_probs(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([1]), eps=1e-12)
    assert zero.item() == pytest.approx(-math.log(1e-12))


def test_total_loss_hand_computation_on_two_samples() -> None:
    clean = [[0.7, 0.3], [0.2, 0.8]]
    denoised = [[0.6, 0.4], [0.5, 0.5]]
    # CE with the clean argmax (0, 1) as labels
    ce = (-math.log(0.6) - math.log(0.5)) / 2

    def cos(a: list[float], b: list[float]) -> float:
        return sum(p * q for p, q in zip(a, b, strict=True)) / math.hypot(*a) / math.hypot(*b)

    cs = ((1 - cos(clean[0], denoised[0])) + (1 - cos(clean[1], denoised[1]))) / 2
    mmd = _mmd_by_loops(clean, denoised, (1.0,))
    expected = ce + 1.0 * cs + 4.0 * mmd

    c, d = torch.tensor(clean, dtype=torch.float64), torch.tensor(denoised, dtype=torch.float64)
    value = total_loss(c, d, c, d, bandwidths=(1.0,), from_probs=True)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    # the per-sample form used by ZO averages to the same value at the unperturbed point
    per_sample = total_loss_per_sample(c, d, c, d, d, bandwidths=(1.0,), from_probs=True)
    assert per_sample.mean().item() == pytest.approx(expected, rel=1e-12)


def test_total_loss_on_logits_and_soft_targets() -> None:
    clean = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    denoised = torch.tensor([[1.0, 1.0], [0.5, 0.0]], dtype=torch.float64)
    features = torch.zeros(2, 3, dtype=torch.float64)  # identical features: MMD = 0
    hard = total_loss(clean, denoised, features, features, lambda_cs=0.0)
    # logsumexp(1, 1) - 1 = log 2; logsumexp(0.5, 0) - 0 = log(1 + e^0.5)
    assert hard.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(0.5))) / 2)

    soft = total_loss(clean, denoised, features, features, lambda_cs=0.0, soft_targets=True)
    p = clean.softmax(1)
    log_q = denoised.log_softmax(1)
    assert soft.item() == pytest.approx(-(p * log_q).sum(1).mean().item())


def test_zo_closure_with_cge_matches_autograd_gradient_of_the_batch_objective() -> None:
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    clean_probs = (torch.randn(4, 5, generator=gen, dtype=torch.float64) @ weight).softmax(1)
    z = torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_()

    def black_box(latents: torch.Tensor) -> torch.Tensor:  # differentiable stand-in for the check
        return (latents @ weight).softmax(1)

    probs = black_box(z)
    (truth,) = torch.autograd.grad(total_loss(clean_probs, probs, clean_probs, probs, from_probs=True), z)

    loss_fn = zo_total_loss_closure(black_box, clean_probs, black_box(z).detach())
    estimate = cge_gradient(loss_fn, z.detach(), mu=1e-5) / z.shape[0]  # batch mean
    assert torch.allclose(estimate, truth, rtol=1e-5, atol=1e-8)


def test_denoised_smoothing_loss_hand_value_and_block_major_rows() -> None:
    clean = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    denoised = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    clean_scores = torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    denoised_scores = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    per_sample = denoised_smoothing_loss(denoised, clean, denoised_scores, clean_scores, reduction="none")
    assert per_sample.tolist() == pytest.approx([0.25 + math.log(2)] * 2)

    rows = torch.cat([denoised, torch.zeros_like(denoised)])  # two query blocks of the same batch
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    values = denoised_smoothing_loss(rows, clean, probs, clean_scores, from_probs=True, reduction="none")
    assert values.tolist() == pytest.approx([0.25 + math.log(2)] * 2 + [0.0, 0.0])
    assert denoised_smoothing_loss(denoised, clean, denoised_scores, clean_scores).item() == pytest.approx(
        0.25 + math.log(2)
    )
    with pytest.raises(ValueError, match="multiple"):
        denoised_smoothing_loss(denoised[:1].repeat(3, 1, 1, 1), clean, probs[:3], clean_scores)
