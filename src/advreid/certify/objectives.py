"""Training objectives of the chapter-6 denoisers: DS (thesis eq. 6.8) and the ZO-RUDS total loss (eq. 6.13).

"Scores" are the classifier's outputs: logits in white-box (first-order) training, softmax
probabilities when they come from a ``BlackBox`` (``from_probs=True``; the cross-entropy then takes
the log of the clamped probabilities). Per-sample losses serve the zeroth-order estimators, whose
query rows are laid out block-major: row ``r`` belongs to sample ``r % B`` of the batch.

MMD is the biased (V-statistic) estimate of MMD^2 with a sum of Gaussian RBF kernels: it is >= 0 and
exactly 0 for identical sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.5, 1.0, 2.0)  # suit probability vectors (distances <= sqrt 2)


def cross_entropy_from_probs(probs: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-sample cross-entropy ``-sum_c t_c log p_c`` on probabilities (thesis eq. 6.9).

    Args:
        probs: ``(N, C)`` probabilities (rows sum to 1).
        target: ``(N,)`` integer labels or ``(N, C)`` target distributions.
        eps: probabilities are clamped to ``[eps, 1]`` so that a zero probability gives a finite loss.

    Returns:
        ``(N,)`` losses.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, C), got {tuple(probs.shape)}")
    log_probs = probs.clamp(min=eps, max=1.0).log()
    if target.dim() == 1:
        if target.shape[0] != probs.shape[0] or target.is_floating_point():
            raise ValueError(f"integer target must be ({probs.shape[0]},), got {tuple(target.shape)}")
        return -log_probs.gather(1, target.long()[:, None]).squeeze(1)
    if target.shape != probs.shape:
        raise ValueError(f"soft target shape {tuple(target.shape)} != probs shape {tuple(probs.shape)}")
    return -(target * log_probs).sum(dim=1)


def cosine_dissimilarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-sample ``1 - cos(a_i, b_i)`` (thesis eq. 6.10, turned so that higher similarity lowers the loss).

    Args:
        a, b: ``(N, F)`` score or feature vectors.

    Returns:
        ``(N,)`` values in [0, 2].
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must both be (N, F), got {tuple(a.shape)} and {tuple(b.shape)}")
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=eps)


def rbf_kernel(a: Tensor, b: Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> Tensor:
    """Sum of Gaussian kernels ``k(a_i, b_j) = sum_s exp(-||a_i - b_j||^2 / (2 s^2))``: ``(N, F), (M, F) -> (N, M)``."""
    if not bandwidths or any(s <= 0 for s in bandwidths):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"kernel inputs must be (N, F) and (M, F), got {tuple(a.shape)} and {tuple(b.shape)}")
    # ||a||^2 + ||b||^2 - 2 a.b avoids an (N, M, F) difference tensor; clamp the rounding below zero
    squared = (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)
    return sum(squared.div(-2.0 * s * s).exp() for s in bandwidths)  # x / -c is exactly -x / c: one pass less


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> Tensor:
    """Biased MMD^2 between samples ``x`` ``(n, F)`` and ``y`` ``(m, F)`` (thesis eqs. 6.11-6.12); a scalar."""
    return (
        rbf_kernel(x, x, bandwidths).mean()
        + rbf_kernel(y, y, bandwidths).mean()
        - 2.0 * rbf_kernel(x, y, bandwidths).mean()
    )


def mmd_rbf_per_sample(
    x: Tensor,
    y_queries: Tensor,
    y_reference: Tensor,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> Tensor:
    """Per-sample share of ``mmd_rbf(x, y)`` for zeroth-order estimation.

    Query row ``r`` replaces sample ``i = r % m`` of ``y_reference`` while the other samples stay at
    their reference values. Its value ``l_i(y)`` satisfies, for every i,
    ``d l_i / d y_i = m * d mmd_rbf(x, y) / d y_i`` at ``y = y_reference``, so the per-sample
    estimates of the batch mean of ``l_i`` chain to the gradient of the batch MMD^2; and the mean of
    ``l_i(y_reference_i)`` over i equals ``mmd_rbf(x, y_reference)``.

    Args:
        x: ``(n, F)`` clean features.
        y_queries: ``(N, F)`` features of the query points, N a multiple of m, rows block-major.
        y_reference: ``(m, F)`` features of the unperturbed batch.

    Returns:
        ``(N,)`` per-row values.
    """
    n, m = x.shape[0], y_reference.shape[0]
    y_reference = y_reference.detach()  # the other samples are constants for row r
    index = _row_sample_index(y_queries.shape[0], m, y_queries.device)  # (N,)
    to_reference = rbf_kernel(y_queries, y_reference, bandwidths)  # (N, m)
    to_own = to_reference.gather(1, index[:, None]).squeeze(1)  # k(y, ref_i), the term j = i
    self_kernel = float(len(bandwidths))  # k(y, y) = sum_s exp(0)
    ref_kernel = rbf_kernel(y_reference, y_reference, bandwidths)
    # constant offsets: they do not move gradients but make the batch mean equal MMD^2 at the reference
    offset = rbf_kernel(x, x, bandwidths).mean() - (ref_kernel.sum() - ref_kernel.diagonal().sum()) / m**2
    return (
        (2.0 / m) * (to_reference.sum(1) - to_own)
        + self_kernel / m
        - (2.0 / n) * rbf_kernel(y_queries, x, bandwidths).sum(1)
        + offset
    )


def denoised_smoothing_loss(
    denoised: Tensor,
    clean: Tensor,
    denoised_scores: Tensor,
    clean_scores: Tensor,
    from_probs: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """DS objective MSE + STAB (thesis eq. 6.8; Salman et al. 2020).

    ``||D(x*) - x||^2`` (averaged over pixels, as Salman et al.'s nn.MSELoss does, so it keeps its scale
    across image sizes) plus the cross-entropy between the classifier's scores on ``D(x*)`` and its
    predicted label on the clean ``x``.

    Args:
        denoised: ``(N, C, H, W)`` denoised images; ``N`` a multiple of the clean batch ``B`` (block-major).
        clean: ``(B, C, H, W)`` clean images.
        denoised_scores: ``(N, K)`` scores on ``denoised``.
        clean_scores: ``(B, K)`` scores on ``clean`` (their argmax is the target; no gradient flows).
        from_probs: scores are probabilities (black box) rather than logits.
        reduction: ``"mean"`` -> scalar, ``"none"`` -> ``(N,)``.
    """
    rows = denoised.shape[0]
    clean = _expand_rows(clean, rows, "clean")
    target = _expand_rows(clean_scores.detach(), rows, "clean_scores").argmax(dim=1)
    if denoised.shape != clean.shape:
        raise ValueError(f"denoised shape {tuple(denoised.shape)} != clean shape {tuple(clean.shape)}")
    mse = (denoised - clean).pow(2).flatten(1).mean(dim=1)
    ce = _prediction_cross_entropy(denoised_scores, target, from_probs)
    return _reduce(mse + ce, reduction)


def total_loss_per_sample(
    clean_scores: Tensor,
    query_scores: Tensor,
    clean_features: Tensor,
    query_features: Tensor,
    reference_features: Tensor,
    lambda_cs: float = 1.0,
    lambda_mmd: float = 4.0,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    from_probs: bool = True,
    soft_targets: bool = False,
) -> Tensor:
    """Per-sample thesis total loss (eq. 6.13) for zeroth-order estimation.

    ``L_CE + lambda_CS (1 - cos) + lambda_MMD * MMD-share`` per query row, where the CE target is the
    classifier's label on the clean image (its probability vector with ``soft_targets``, eq. 6.9 read
    literally), the cosine compares clean and query scores, and the MMD share is
    ``mmd_rbf_per_sample`` (so batch-mean estimates chain to the batch MMD^2 gradient).

    Args:
        clean_scores: ``(B, K)`` scores on the clean images.
        query_scores: ``(N, K)`` scores on the query points, ``N`` a multiple of ``B``, block-major.
        clean_features: ``(B, F)`` features of the clean images (the scores themselves in black-box mode).
        query_features: ``(N, F)`` features of the query points.
        reference_features: ``(B, F)`` features of the unperturbed denoised batch.

    Returns:
        ``(N,)`` losses.
    """
    rows = query_scores.shape[0]
    clean_rows = _expand_rows(clean_scores.detach(), rows, "clean_scores")
    target = _targets(clean_rows, from_probs, soft_targets)
    ce = _prediction_cross_entropy(query_scores, target, from_probs)
    cs = cosine_dissimilarity(clean_rows, query_scores)
    mmd = mmd_rbf_per_sample(clean_features.detach(), query_features, reference_features, bandwidths)
    return ce + lambda_cs * cs + lambda_mmd * mmd


def total_loss(
    clean_scores: Tensor,
    denoised_scores: Tensor,
    clean_features: Tensor,
    denoised_features: Tensor,
    lambda_cs: float = 1.0,
    lambda_mmd: float = 4.0,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    from_probs: bool = False,
    soft_targets: bool = False,
) -> Tensor:
    """Thesis total loss (eq. 6.13) on a batch: mean CE + lambda_CS mean (1 - cos) + lambda_MMD MMD^2.

    Args:
        clean_scores: ``(B, K)`` scores on the clean images (treated as constants).
        denoised_scores: ``(B, K)`` scores on the denoised noisy images.
        clean_features: ``(B, F)`` features of the clean images (constants).
        denoised_features: ``(B, F)`` features of the denoised images.

    Returns:
        A scalar.
    """
    if clean_scores.shape != denoised_scores.shape:
        raise ValueError(
            f"clean_scores {tuple(clean_scores.shape)} and denoised_scores {tuple(denoised_scores.shape)} differ"
        )
    clean_scores = clean_scores.detach()
    target = _targets(clean_scores, from_probs, soft_targets)
    ce = _prediction_cross_entropy(denoised_scores, target, from_probs).mean()
    cs = cosine_dissimilarity(clean_scores, denoised_scores).mean()
    mmd = mmd_rbf(clean_features.detach(), denoised_features, bandwidths)
    return ce + lambda_cs * cs + lambda_mmd * mmd


def zo_total_loss_closure(
    black_box_probs: Callable[[Tensor], Tensor],
    clean_probs: Tensor,
    reference_probs: Tensor,
    lambda_cs: float = 1.0,
    lambda_mmd: float = 4.0,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    soft_targets: bool = False,
) -> Callable[[Tensor], Tensor]:
    """The ``loss_fn`` of ``rge_gradient``/``cge_gradient`` for eq. 6.14/6.17: query rows -> (N,) losses.

    In black-box mode the scores and the features are the black box's probabilities (Table 6.4: MMD
    "between the probability distributions"). ``reference_probs`` are the black box's probabilities on
    the unperturbed white-box output; ``total_loss_per_sample(clean_probs, reference_probs,
    clean_probs, reference_probs, reference_probs, ...)`` gives the losses at that point without
    spending queries (the ``base_loss`` of ``rge_gradient``).

    Args:
        black_box_probs: maps query points ``(N, ...)`` to probabilities ``(N, K)`` (e.g. a ``BlackBox``
            around decoder + classifier in the AE variants).
        clean_probs: ``(B, K)`` black-box probabilities on the clean images.
        reference_probs: ``(B, K)`` black-box probabilities at the unperturbed point.
    """

    def loss_fn(queries: Tensor) -> Tensor:
        probs = black_box_probs(queries)
        return total_loss_per_sample(
            clean_probs,
            probs,
            clean_probs,
            probs,
            reference_probs,
            lambda_cs=lambda_cs,
            lambda_mmd=lambda_mmd,
            bandwidths=bandwidths,
            from_probs=True,
            soft_targets=soft_targets,
        )

    return loss_fn


def _targets(clean_scores: Tensor, from_probs: bool, soft_targets: bool) -> Tensor:
    if not soft_targets:
        return clean_scores.argmax(dim=1)
    return clean_scores if from_probs else torch.softmax(clean_scores, dim=1)


def _prediction_cross_entropy(scores: Tensor, target: Tensor, from_probs: bool) -> Tensor:
    if from_probs:
        return cross_entropy_from_probs(scores, target)
    return F.cross_entropy(scores, target, reduction="none")


def _row_sample_index(rows: int, batch: int, device: torch.device) -> Tensor:
    if batch < 1 or rows % batch != 0:
        raise ValueError(f"query rows ({rows}) must be a positive multiple of the batch size ({batch})")
    return torch.arange(rows, device=device) % batch


def _expand_rows(t: Tensor, rows: int, name: str) -> Tensor:
    """Repeat a per-sample ``(B, ...)`` tensor block-major to ``(rows, ...)``."""
    if t.shape[0] == 0 or rows % t.shape[0] != 0:
        raise ValueError(f"{name} has {t.shape[0]} rows; the query rows ({rows}) must be a multiple of it")
    return t.repeat(rows // t.shape[0], *([1] * (t.dim() - 1)))


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
