"""Randomized smoothing against closed forms: a linear classifier's smoothed probability is Phi(margin / sigma)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest, norm

from advreid.certify.smoothing import ABSTAIN, Smooth, certified_accuracy, clopper_pearson_lower

SIGMA = 0.5
ALPHA = 0.001


def _linear_problem(margin: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """w, x, b with signed distance (w.x + b) / ||w|| = margin."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    x = torch.rand(3, 4, 4, generator=gen, dtype=torch.float64)
    b = margin * w.norm().item() - (w * x).sum().item()
    return w, x, b


def _label_classifier(w: torch.Tensor, b: float):
    def classify(batch: torch.Tensor) -> torch.Tensor:
        return ((batch * w).flatten(1).sum(1) + b > 0).long()  # (N,) labels in {0, 1}

    return classify


class _LogitClassifier(torch.nn.Module):
    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        s = (batch * self.w).flatten(1).sum(1) + self.b
        return torch.stack([-s, s], dim=1)  # (N, 2); argmax is class 1 iff s > 0


def _slack_radius(p_a: float, n: int, alpha: float, sigma: float, spread: float) -> float:
    """The certified radius when the class count is n pA shifted by `spread` binomial std devs."""
    k = n * p_a + spread * math.sqrt(n * p_a * (1 - p_a))
    k = int(min(max(round(k), 0), n))
    return sigma * norm.ppf(clopper_pearson_lower(k, n, alpha))


@pytest.mark.parametrize("margin", [0.3, -0.4])
def test_certify_linear_classifier_radius_within_clopper_pearson_slack(margin: float) -> None:
    w, x, b = _linear_problem(margin)
    n = 20_000
    smooth = Smooth(_label_classifier(w, b), num_classes=2, sigma=SIGMA)
    label, radius = smooth.certify(
        x, n0=100, n=n, alpha=ALPHA, batch_size=5000, generator=torch.Generator().manual_seed(1)
    )

    exact_radius = abs(margin)  # sigma * Phi^-1(Phi(|margin| / sigma))
    p_a = norm.cdf(abs(margin) / SIGMA)
    assert label == (1 if margin > 0 else 0)
    low = _slack_radius(p_a, n, ALPHA, SIGMA, spread=-5.0)
    high = _slack_radius(p_a, n, ALPHA, SIGMA, spread=5.0)
    assert low <= radius <= high
    assert radius < exact_radius + 0.02  # the Clopper-Pearson bound sits below pA
    assert radius > exact_radius - 0.06


def test_certify_abstains_on_the_decision_boundary() -> None:
    w, x, b = _linear_problem(0.0)
    smooth = Smooth(_label_classifier(w, b), num_classes=2, sigma=SIGMA)
    result = smooth.certify(
        x, n0=100, n=10_000, alpha=ALPHA, batch_size=2500, generator=torch.Generator().manual_seed(2)
    )
    assert result == (ABSTAIN, 0.0)


def test_predict_abstains_near_boundary_and_not_far_from_it() -> None:
    gen = torch.Generator().manual_seed(3)
    w, x, b = _linear_problem(0.0)
    assert (
        Smooth(_label_classifier(w, b), 2, SIGMA).predict(x, n=2000, alpha=ALPHA, batch_size=500, generator=gen)
        == ABSTAIN
    )
    w, x, b = _linear_problem(2 * SIGMA)
    assert Smooth(_label_classifier(w, b), 2, SIGMA).predict(x, n=2000, alpha=ALPHA, batch_size=500, generator=gen) == 1
    w, x, b = _linear_problem(-2 * SIGMA)
    assert Smooth(_label_classifier(w, b), 2, SIGMA).predict(x, n=2000, alpha=ALPHA, batch_size=500, generator=gen) == 0


def test_fixed_seed_repeats_and_labels_or_logits_agree() -> None:
    w, x, b = _linear_problem(0.2)
    by_labels = Smooth(_label_classifier(w, b), 2, SIGMA)
    by_logits = Smooth(_LogitClassifier(w, b), 2, SIGMA)
    first = by_labels.certify(x, 50, 3000, ALPHA, 700, generator=torch.Generator().manual_seed(7))
    again = by_labels.certify(x, 50, 3000, ALPHA, 700, generator=torch.Generator().manual_seed(7))
    logits = by_logits.certify(x, 50, 3000, ALPHA, 700, generator=torch.Generator().manual_seed(7))
    assert first == again == logits
    assert first[0] == 1


def test_noise_is_gaussian_in_pixel_space_batched_and_follows_input_dtype() -> None:
    seen: list[torch.Tensor] = []

    def record(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return torch.zeros(batch.shape[0], dtype=torch.long)

    x = torch.full((1, 8, 8), 0.25, dtype=torch.float64)
    Smooth(record, 3, sigma=0.3).certify(
        x, n0=30, n=250, alpha=0.01, batch_size=64, generator=torch.Generator().manual_seed(0)
    )
    assert [len(b) for b in seen] == [30, 64, 64, 64, 58]
    noise = torch.cat(seen) - x
    assert noise.dtype == torch.float64
    assert abs(noise.mean().item()) < 0.01
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)

    seen.clear()
    Smooth(record, 3, sigma=0.0).predict(x, n=10, alpha=0.01, batch_size=4)
    assert all(torch.equal(b, x.expand_as(b)) for b in seen)  # sigma = 0 is the identity


def test_clopper_pearson_lower_matches_scipy_exact_interval() -> None:
    for n in (1, 2, 7, 30, 101):
        for k in range(n + 1):
            for alpha in (0.001, 0.05, 0.2):
                expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
                assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, abs=1e-10)
    # k = n: P(X = n) = p^n = alpha at the bound
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05**0.1, rel=1e-10)
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0


@pytest.mark.parametrize(
    ("k", "n", "alpha"), [(11, 10, 0.05), (-1, 10, 0.05), (1, 0, 0.05), (1, 10, 0.0), (1, 10, 1.0)]
)
def test_clopper_pearson_lower_rejects_bad_input(k: int, n: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        clopper_pearson_lower(k, n, alpha)


def test_certified_accuracy_hand_built_case() -> None:
    predictions = torch.tensor([0, 1, ABSTAIN, 2, 1, ABSTAIN])
    labels = torch.tensor([0, 1, 1, 0, 1, ABSTAIN])  # the last: an abstention never counts
    radii = torch.tensor([0.5, 0.2, 0.0, 0.9, 0.8, 0.7])
    grid = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    accuracy = certified_accuracy(predictions, radii, labels, grid)
    # correct: index 0 (r=0.5), 1 (r=0.2), 4 (r=0.8); index 3 is wrong, 2 and 5 abstain
    assert accuracy.tolist() == pytest.approx([3 / 6, 2 / 6, 2 / 6, 1 / 6, 0.0])


def test_certified_accuracy_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="equal length"):
        certified_accuracy(
            torch.zeros(3, dtype=torch.long), torch.zeros(2), torch.zeros(3, dtype=torch.long), torch.zeros(1)
        )


def test_smooth_rejects_bad_classifier_output_and_parameters() -> None:
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="base_classifier must return"):
        Smooth(lambda b: torch.zeros(b.shape[0], 5), 3, 0.1).predict(x, 10, 0.01, 10)
    with pytest.raises(ValueError, match="outside"):
        Smooth(lambda b: torch.full((b.shape[0],), 3), 3, 0.1).predict(x, 10, 0.01, 10)
    with pytest.raises(ValueError, match="sigma"):
        Smooth(lambda b: b, 3, -0.1)
    with pytest.raises(ValueError, match="n0"):
        Smooth(lambda b: torch.zeros(b.shape[0], dtype=torch.long), 3, 0.1).certify(x, 0, 10, 0.01, 10)


class _Scripted:
    """A base classifier that ignores its input and returns the next labels of a fixed script, so the class
    counts of the selection (first n0 calls' worth) and estimation draws are known exactly."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.position = torch.tensor(script), 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        labels = self.script[self.position : self.position + len(batch)]
        self.position += len(batch)
        return labels


def _image() -> torch.Tensor:
    return torch.zeros(1, 2, 2)


def test_certify_radius_is_sigma_times_phi_inverse_of_the_clopper_pearson_bound() -> None:
    """Catches a radius from the point estimate nA / n: 90 of 100 estimation draws give sigma * Phi^-1(0.9) =
    1.28 sigma from nA / n, but sigma * Phi^-1(0.793) = 0.82 sigma from the one-sided 99.9% Clopper-Pearson bound."""
    sigma, n0, n, alpha = 0.5, 10, 100, 0.001
    smooth = Smooth(_Scripted([0] * n0 + [0] * 90 + [1] * 10), num_classes=3, sigma=sigma)
    prediction, radius = smooth.certify(_image(), n0=n0, n=n, alpha=alpha, batch_size=7)
    # the exact two-sided interval at level 1 - 2 alpha has the one-sided alpha bound as its lower end
    lower = binomtest(90, 100).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert prediction == 0
    assert radius == pytest.approx(sigma * norm.ppf(lower), rel=1e-9)
    assert radius < 0.9 * sigma * norm.ppf(0.9)


def test_certify_chooses_the_class_on_the_selection_draws_only() -> None:
    """Catches cA chosen on the estimation draws: selection says class 2 (7 of 10), estimation counts class 1
    80 times and class 2 20 times, so CERTIFY must count class 2 (20 / 100, bound < 1/2) and abstain."""
    smooth = Smooth(_Scripted([2] * 7 + [1] * 3 + [1] * 80 + [2] * 20), num_classes=3, sigma=0.25)
    assert smooth.certify(_image(), n0=10, n=100, alpha=0.001, batch_size=16) == (ABSTAIN, 0.0)
    # the same estimation draws after a class-1 selection certify class 1
    smooth = Smooth(_Scripted([1] * 10 + [1] * 80 + [2] * 20), num_classes=3, sigma=0.25)
    prediction, radius = smooth.certify(_image(), n0=10, n=100, alpha=0.001, batch_size=16)
    assert prediction == 1 and radius > 0


def test_predict_tests_the_top_two_counts_over_their_sum_not_over_n() -> None:
    """Catches PREDICT's binomial test over n: counts 30 / 15 / 55 (3 classes) give p = 0.009 for 55 of
    55 + 30 (predict class 2 at alpha 0.05) but p = 0.37 for 55 of 100 (abstain)."""
    script = [0] * 30 + [1] * 15 + [2] * 55
    assert binomtest(55, 85, p=0.5).pvalue < 0.05 < binomtest(55, 100, p=0.5).pvalue
    smooth = Smooth(_Scripted(script), num_classes=3, sigma=0.25)
    assert smooth.predict(_image(), n=100, alpha=0.05, batch_size=32) == 2
