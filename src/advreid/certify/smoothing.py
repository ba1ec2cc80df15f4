"""Randomized smoothing (Cohen et al. 2019; thesis eqs. 6.1-6.6): PREDICT, CERTIFY and certified accuracy.

Gaussian noise is added in [0, 1] pixel space; normalization, a denoiser or a whole black-box pipeline
belong to the base classifier. Noise takes its device and dtype from the input and is drawn from the
caller's ``torch.Generator`` so that a fixed seed repeats every result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor, nn

ABSTAIN = -1


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion k / n."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], got {k}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


class Smooth:
    """The smoothed classifier g(x) = argmax_c P(f(x + eta) = c), eta ~ N(0, sigma^2 I) (thesis eq. 6.1).

    Args:
        base_classifier: maps a batch ``(N, C, H, W)`` in [0, 1] to logits/probabilities ``(N, K)`` or
            to integer labels ``(N,)``.
        num_classes: K, the number of classes the base classifier can return.
        sigma: noise standard deviation (>= 0), in pixel units.
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: nn.Module | Callable[[Tensor], Tensor],
        num_classes: int,
        sigma: float,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """Cohen et al.'s CERTIFY: the class and the certified L2 radius, or ``(ABSTAIN, 0.0)``.

        ``n0`` noisy samples select the top class cA; ``n`` fresh samples count it; with probability at
        least 1 - alpha, g predicts cA within radius sigma * Phi^-1(pA_lower) around ``x`` (thesis eq. 6.6
        with the runner-up bounded by 1 - pA_lower).

        Args:
            x: one image ``(C, H, W)`` in [0, 1].
            n0, n: selection and estimation sample counts.
            alpha: failure probability of the certificate.
            batch_size: noisy copies per base-classifier call.
            generator: source of the noise; must live on ``x``'s device.
        """
        _check_counts(n=n, n0=n0, batch_size=batch_size, alpha=alpha)
        counts_selection = self._sample_noise(x, n0, batch_size, generator)
        c_a = int(counts_selection.argmax().item())
        counts_estimation = self._sample_noise(x, n, batch_size, generator)
        n_a = int(counts_estimation[c_a].item())
        p_a_lower = self._lower_confidence_bound(n_a, n, alpha)
        if p_a_lower < 0.5:
            return ABSTAIN, 0.0
        return c_a, float(self.sigma * norm.ppf(p_a_lower))

    def predict(
        self,
        x: Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> int:
        """Cohen et al.'s PREDICT: the top class, or ``ABSTAIN`` when a two-sided binomial test between
        the top two counts cannot reject equality at level ``alpha``.

        Args:
            x: one image ``(C, H, W)`` in [0, 1].
            n: noisy samples.
            alpha: significance level of the binomial test.
            batch_size: noisy copies per base-classifier call.
            generator: source of the noise; must live on ``x``'s device.
        """
        _check_counts(n=n, n0=1, batch_size=batch_size, alpha=alpha)
        counts = self._sample_noise(x, n, batch_size, generator)
        top2 = torch.topk(counts, 2)
        count1, count2 = int(top2.values[0].item()), int(top2.values[1].item())
        if binomtest(count1, count1 + count2, p=0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0].item())

    def _sample_noise(self, x: Tensor, num: int, batch_size: int, generator: torch.Generator | None) -> Tensor:
        """Class counts ``(num_classes,)`` of the base classifier over ``num`` noisy copies of ``x``."""
        if x.dim() != 3:
            raise ValueError(f"x must be one image (C, H, W), got shape {tuple(x.shape)}")
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                this_batch = min(batch_size, remaining)
                remaining -= this_batch
                batch = x.unsqueeze(0).expand(this_batch, *x.shape)
                noise = torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype) * self.sigma
                labels = self._labels(batch + noise)
                counts += torch.bincount(labels, minlength=self.num_classes)
        return counts

    def _labels(self, batch: Tensor) -> Tensor:
        """Base-classifier labels for a batch, accepting scores ``(N, K)`` or labels ``(N,)``."""
        out = self.base_classifier(batch)
        if out.dim() == 2 and out.shape == (batch.shape[0], self.num_classes):
            labels = out.argmax(dim=1)
        elif out.dim() == 1 and out.shape[0] == batch.shape[0] and not out.is_floating_point():
            labels = out.long()
        else:
            raise ValueError(
                f"base_classifier must return scores (N, {self.num_classes}) or integer labels (N,) for "
                f"N={batch.shape[0]}, got {tuple(out.shape)} {out.dtype}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"base_classifier returned labels outside [0, {self.num_classes})")
        return labels

    def _lower_confidence_bound(self, n_a: int, n: int, alpha: float) -> float:
        """One-sided (1 - alpha) lower bound on pA from ``n_a`` successes in ``n`` draws."""
        return clopper_pearson_lower(n_a, n, alpha)


def certified_accuracy(predictions: Tensor, radii: Tensor, labels: Tensor, radius_grid: Tensor) -> Tensor:
    """Fraction of points certified correct at each radius (SCA at r = 0, RCA at r > 0).

    A point counts at radius r when its prediction equals its label, it did not abstain and its
    certified radius is >= r.

    Args:
        predictions: ``(N,)`` integer classes from ``Smooth.certify`` (``ABSTAIN`` = -1).
        radii: ``(N,)`` certified radii.
        labels: ``(N,)`` true labels.
        radius_grid: ``(R,)`` radii at which to evaluate.

    Returns:
        ``(R,)`` float64 accuracies in [0, 1].
    """
    if not predictions.shape == radii.shape == labels.shape or predictions.dim() != 1:
        raise ValueError(
            "predictions, radii and labels must be 1-D of equal length, got "
            f"{tuple(predictions.shape)}, {tuple(radii.shape)}, {tuple(labels.shape)}"
        )
    if predictions.numel() == 0:
        raise ValueError("certified_accuracy needs at least one point")
    correct = (predictions == labels) & (predictions != ABSTAIN)  # (N,)
    radius_grid = radius_grid.to(device=radii.device, dtype=torch.float64).reshape(-1)
    covered = radii.to(torch.float64)[None, :] >= radius_grid[:, None]  # (R, N)
    return (covered & correct[None, :]).to(torch.float64).mean(dim=1)


def _check_counts(*, n: int, n0: int, batch_size: int, alpha: float) -> None:
    for name, value in (("n", n), ("n0", n0), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
