"""Re-ID losses against the formulas, brute force and a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from advreid.reid.losses import (
    batch_hard_indices,
    batch_hard_triplet_loss,
    cross_entropy_label_smoothing,
    euclidean_distance_matrix,
    vanilla_reid_loss,
)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_formula(epsilon: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2])
    expected = 0.0
    for row, y in zip(logits.tolist(), targets.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        expected += -(1 - epsilon) * log_p[y] - epsilon / len(row) * sum(log_p)
    expected /= len(targets)
    assert cross_entropy_label_smoothing(logits, targets, epsilon).item() == pytest.approx(expected, rel=1e-12)


def test_label_smoothing_rejects_bad_epsilon() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_label_smoothing(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 1.0)


def test_distance_matrix_matches_norms() -> None:
    torch.manual_seed(1)
    f = torch.randn(6, 3, dtype=torch.float64)
    expected = torch.stack([torch.stack([torch.linalg.norm(a - b) for b in f]) for a in f])
    torch.testing.assert_close(euclidean_distance_matrix(f), expected.clamp_min(1e-6), atol=1e-6, rtol=1e-9)


def test_batch_hard_hand_example() -> None:
    # 1-D points 0, 1 (id 0) and 3, 7 (id 1): only anchor 3 violates the margin, by 4 - 2 + 0.3 = 2.3
    features = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert batch_hard_triplet_loss(features, labels, margin=0.3).item() == pytest.approx(2.3 / 4)


def _brute_force(features: torch.Tensor, labels: list[int], margin: float, soft: bool) -> float:
    losses = []
    for a in range(len(labels)):
        positives = [
            torch.linalg.norm(features[a] - features[p]).item()
            for p in range(len(labels))
            if p != a and labels[p] == labels[a]
        ]
        negatives = [
            torch.linalg.norm(features[a] - features[n]).item() for n in range(len(labels)) if labels[n] != labels[a]
        ]
        if not positives or not negatives:
            continue
        gap = max(positives) - min(negatives)
        losses.append(math.log1p(math.exp(gap)) if soft else max(0.0, gap + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_matches_brute_force(soft: bool) -> None:
    torch.manual_seed(2)
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]  # id 3 has no positive: that anchor is skipped
    features = torch.randn(len(labels), 5, dtype=torch.float64) * 0.5
    loss = batch_hard_triplet_loss(features, torch.tensor(labels), margin=0.3, soft_margin=soft)
    assert loss.item() == pytest.approx(_brute_force(features, labels, 0.3, soft), rel=1e-9)


def test_batch_hard_gradient_finite_with_coincident_points() -> None:
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.2]], requires_grad=True)
    loss = batch_hard_triplet_loss(features, torch.tensor([0, 0, 1, 1]), margin=2.0)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(features.grad).all()


def test_batch_hard_needs_positive_and_negative() -> None:
    with pytest.raises(ValueError, match="no anchor"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="no anchor"):
        batch_hard_triplet_loss(torch.randn(3, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.tensor([0, 1]))


def test_vanilla_loss_is_sum_of_terms() -> None:
    torch.manual_seed(3)
    logits, feats = torch.randn(4, 3), torch.randn(4, 6)
    labels = torch.tensor([0, 0, 2, 2])
    total, ce, tri = vanilla_reid_loss(logits, feats, labels)
    torch.testing.assert_close(ce, cross_entropy_label_smoothing(logits, labels, 0.1))
    torch.testing.assert_close(tri, batch_hard_triplet_loss(feats, labels, 0.3))
    torch.testing.assert_close(total, ce + tri)


def test_batch_hard_indices_pick_the_triplets_of_the_loss():
    # 1-D points: identity 0 at 0 and 3, identity 1 at 4 and 10; distances by hand
    features = torch.tensor([[0.0], [3.0], [4.0], [10.0]])
    labels = torch.tensor([0, 0, 1, 1])
    positive, negative, valid = batch_hard_indices(features, labels)
    assert positive.tolist() == [1, 0, 3, 2]
    assert negative.tolist() == [2, 2, 1, 1]  # closest other-identity point of each anchor
    assert valid.all()
    gathered = (features - features[positive]).norm(dim=1) - (features - features[negative]).norm(dim=1)
    expected = torch.relu(gathered + 0.3).mean()
    assert torch.allclose(batch_hard_triplet_loss(features, labels, margin=0.3), expected)
