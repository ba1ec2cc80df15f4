"""Certifying a base classifier on test points (Cohen et al.'s CERTIFY, thesis eqs. 6.1-6.6) and its tables.

The base classifier ``f(D(x + eta))`` is queried only as a black box; the certified accuracy at radius r counts the
points whose prediction is right (dataset label) and whose radius is at least r (SCA at r = 0, RCA above).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn
from tqdm import tqdm

from advreid.certify.blackbox import BlackBox
from advreid.certify.smoothing import Smooth, certified_accuracy
from advreid.params import ParamsError


@dataclass(frozen=True)
class CertifySettings:
    """CERTIFY's sample counts and failure probability, the query batch, the radii of the table."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    radii: tuple[float, ...]


def certify_sigma(
    base: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    sigma: float,
    params: CertifySettings,
    grid: np.ndarray,
    seed: int,
    desc: str,
) -> tuple[dict[str, float], list[float]]:
    """One noise level: the table row (SCA, RCA at ``params.radii``, abstentions, radius statistics) and the
    certified-accuracy curve over ``grid``."""
    predictions, radii, queries = certify_points(base, images, num_classes, sigma, params, seed, desc)
    accuracy = certified_accuracy_table(predictions, radii, labels, params.radii)
    row = {("sca" if r == 0 else f"rca_{r:g}"): v for r, v in zip(params.radii, accuracy, strict=True)}
    row.update(
        abstain=float((predictions == -1).double().mean()),
        mean_radius=float(radii.mean()),
        max_certifiable_radius=max_certifiable_radius(sigma, params.n, params.alpha),
        queries_per_point=queries,
    )
    return row, certified_accuracy_table(predictions, radii, labels, grid)


def certify_points(
    base: nn.Module,
    images: Tensor,
    num_classes: int,
    sigma: float,
    params: CertifySettings,
    seed: int,
    desc: str = "certify",
) -> tuple[Tensor, Tensor, float]:
    """CERTIFY every image through a query-only view of ``base``.

    Returns:
        ``(predictions (N,), radii (N,), black-box queries per point)``; abstentions are -1 with radius 0.
    """
    black_box = BlackBox(base, max_batch=params.batch_size)
    smooth = Smooth(black_box, num_classes, sigma)
    generator = torch.Generator(images.device).manual_seed(seed)
    predictions, radii = [], []
    for image in tqdm(images, desc=desc, unit="point", leave=False):
        prediction, radius = smooth.certify(image, params.n0, params.n, params.alpha, params.batch_size, generator)
        predictions.append(prediction)
        radii.append(radius)
    return torch.tensor(predictions), torch.tensor(radii, dtype=torch.float64), black_box.query_count / len(images)


def certified_accuracy_table(predictions: Tensor, radii: Tensor, labels: Tensor, grid) -> list[float]:
    """Certified accuracy at each radius of ``grid`` (a list, for JSON and CSV)."""
    grid = torch.as_tensor(np.asarray(grid, dtype=np.float64))
    return [float(v) for v in certified_accuracy(predictions, radii, labels.cpu(), grid)]


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n samples: all n agree, pA_lower = alpha^(1/n)."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (all of them when count >= total)."""
    if count < 1:
        raise ParamsError(f"certify: the number of test points must be >= 1, got {count}")
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def curve_table(grid, curves: dict[str, list[float]]) -> str:
    """CSV ``radius,sigma_<s>,...`` of certified accuracy curves."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["radius", *(f"sigma_{s}" for s in curves)])
    for i, radius in enumerate(grid):
        writer.writerow([f"{radius:g}", *(repr(curve[i]) for curve in curves.values())])
    return out.getvalue()
