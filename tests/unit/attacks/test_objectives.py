"""Attack objectives: hand-computed values, and the sign each one gives the attack."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advreid.attacks.gradient import attack
from advreid.attacks.objectives import (
    OBJECTIVES,
    adversarial_metric_attack,
    build_objective,
    cross_entropy,
    feature_distance,
    opposite_direction_feature_attack,
    reid_non_targeted,
    reid_targeted,
    self_metric_attack,
)

SHAPE = (4, 3, 8, 4)


def test_cross_entropy_matches_the_log_softmax_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loss = cross_entropy(torch.tensor([0, 2]))(logits)
    first = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    torch.testing.assert_close(loss, torch.tensor([first, math.log(3.0)], dtype=torch.float64))


def test_feature_distance_by_hand():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    torch.testing.assert_close(
        feature_distance(features, torch.tensor([[3.0, 4.0], [0.0, 0.0]])), torch.tensor([5.0, 5.0])
    )
    # Several references per sample, some masked out: mean over the valid ones only.
    refs = torch.tensor([[[0.0, 1.0], [0.0, 3.0], [9.0, 9.0]], [[3.0, 0.0], [3.0, 4.0], [3.0, 4.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(feature_distance(features, refs, mask), torch.tensor([2.0, 4.0 / 3.0]))


def test_targeted_is_minus_the_distance_and_odfa_targets_the_opposite_direction():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(reid_targeted(torch.zeros(2, 2))(features), torch.tensor([-1.0, -2.0]))
    # At the clean feature the distance to the guide -scale * f is (1 + scale) |f|.
    odfa = opposite_direction_feature_attack(features, scale=0.5)
    torch.testing.assert_close(odfa(features), torch.tensor([-1.5, -3.0]))
    # On the guide: distance 0, the maximum of the objective.
    torch.testing.assert_close(odfa(-0.5 * features), torch.zeros(2))


def _linear_features(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE[1:]), 8)).double()


def _scene():
    g = torch.Generator().manual_seed(2)
    x = 0.2 + 0.6 * torch.rand(SHAPE, generator=g, dtype=torch.float64)
    model = _linear_features()
    clean = model(x).detach()
    others = clean + torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return model, x, clean, others


def _pgd(model, x, objective, **kwargs):
    return attack(model, x, objective, method="pgd", eps=8 / 255, step=2 / 255, steps=5, **kwargs)


def test_non_targeted_pushes_the_query_away_from_same_identity_gallery():
    model, x, _, gallery = _scene()
    adv = _pgd(model, x, reid_non_targeted(gallery))
    assert (feature_distance(model(adv), gallery) > feature_distance(model(x), gallery)).all()


def test_targeted_pulls_the_query_toward_the_target_identity():
    model, x, _, target = _scene()
    adv = _pgd(model, x, reid_targeted(target))
    assert (feature_distance(model(adv), target) < feature_distance(model(x), target)).all()


def test_sma_moves_away_from_the_clean_features_beyond_the_random_start():
    model, x, clean, _ = _scene()
    objective = self_metric_attack(clean)
    start = attack(model, x, objective, steps=0, random_start=True, generator=torch.Generator().manual_seed(0))
    adv = _pgd(model, x, objective, random_start=True, generator=torch.Generator().manual_seed(0))
    assert (feature_distance(model(adv), clean) > 2 * feature_distance(model(start), clean)).all()
    # Without a random start the gradient at the clean image is zero: the documented reason for random_start.
    assert torch.equal(_pgd(model, x, objective), x)


def test_ama_pushes_gallery_images_away_from_their_queries():
    model, gallery_images, _, queries = _scene()
    two_queries = torch.stack([queries, queries + 0.5], dim=1)  # (B, 2, D)
    adv = _pgd(model, gallery_images, adversarial_metric_attack(two_queries))
    assert (feature_distance(model(adv), two_queries) > feature_distance(model(gallery_images), two_queries)).all()


def test_odfa_turns_the_feature_toward_its_opposite():
    model, x, clean, _ = _scene()
    adv = _pgd(model, x, opposite_direction_feature_attack(clean))
    guide = -clean
    assert (feature_distance(model(adv), guide) < feature_distance(model(x), guide)).all()
    assert (F.cosine_similarity(model(adv), clean, dim=1) < 1 - 1e-4).all()


def test_registry_builds_by_name_and_lists_names_on_error():
    labels = torch.tensor([1, 0])
    objective = build_objective("cross_entropy", labels)
    logits = torch.randn(2, 3)
    torch.testing.assert_close(objective(logits), F.cross_entropy(logits, labels, reduction="none"))
    assert set(OBJECTIVES) == {"cross_entropy", "reid_non_targeted", "reid_targeted", "sma", "ama", "odfa"}
    with pytest.raises(KeyError, match="reid_targeted"):
        build_objective("triplet")


def test_bad_references_are_named():
    with pytest.raises(ValueError, match="gallery_features"):
        reid_non_targeted(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        reid_targeted(torch.zeros(2, 3, 4), mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no query_features"):
        adversarial_metric_attack(torch.zeros(2, 3, 4), mask=torch.tensor([[True, False, False], [False] * 3]))
    with pytest.raises(ValueError, match="do not match"):
        reid_non_targeted(torch.zeros(3, 4))(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(torch.zeros(2, 3))
