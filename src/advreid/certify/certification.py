"""Certifying a base classifier on test points (Cohen et al.'s CERTIFY, thesis eqs. 6.1-6.6) and its tables.

The base classifier ``f(D(x + eta))`` is queried only as a black box; the certified accuracy at radius r counts the
points whose prediction is right (dataset label) and whose radius is at least r (SCA at r = 0, RCA above).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.smoothing import ABSTAIN, Smooth, certified_accuracy
from advreid.params import ParamsError
from advreid.progress import progress


@dataclass(frozen=True)
class CertifySettings:
    """CERTIFY's sample counts and failure probability, the query batch, the radii of the table."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    radii: tuple[float, ...]


def certified_rows(
    predictions: Tensor,
    radii: Tensor,
    labels: Tensor,
    sigma: float,
    settings: CertifySettings,
    grid: np.ndarray,
    queries: float,
) -> tuple[dict[str, float], list[float]]:
    """One noise level: the table row (SCA, RCA at ``settings.radii``, abstentions, radius statistics) and the
    certified-accuracy curve over ``grid``."""
    accuracy = certified_accuracy_table(predictions, radii, labels, settings.radii)
    row = {("sca" if r == 0 else f"rca_{r:g}"): v for r, v in zip(settings.radii, accuracy, strict=True)}
    row.update(
        abstain=float((predictions == -1).double().mean()),
        mean_radius=float(radii.mean()),
        max_certifiable_radius=max_certifiable_radius(sigma, settings.n, settings.alpha),
        queries_per_point=queries,
    )
    return row, certified_accuracy_table(predictions, radii, labels, grid)


def certify_points(
    base: nn.Module,
    images: Tensor,
    num_classes: int,
    sigma: float,
    settings: CertifySettings,
    seed: int,
    desc: str = "certify",
) -> tuple[Tensor, Tensor, float]:
    """CERTIFY every image through a query-only view of ``base``.

    Returns:
        ``(predictions (N,), radii (N,), black-box queries per point)``; abstentions are -1 with radius 0.
    """
    black_box = BlackBox(base, max_batch=settings.batch_size)
    smooth = Smooth(black_box, num_classes, sigma)
    generator = torch.Generator(images.device).manual_seed(seed)
    predictions, radii = [], []
    for image in progress(images, desc=desc, unit="point"):
        prediction, radius = smooth.certify(
            image, settings.n0, settings.n, settings.alpha, settings.batch_size, generator
        )
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


POINT_COLUMNS = ("index", "label", "prediction", "radius", "correct")


@dataclass(frozen=True)
class PointResults:
    """CERTIFY's outcome on every test point: dataset ``index``, ``label``, ``prediction`` (-1 abstains) and radius."""

    index: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    radius: np.ndarray

    def certified_correct(self, radius: float) -> np.ndarray:
        """``(N,)`` booleans: right, not abstaining, and certified at least at ``radius`` (SCA at 0)."""
        return (self.prediction == self.label) & (self.prediction != ABSTAIN) & (self.radius >= radius)


def certify_method(
    base_for: Callable[[float], nn.Module],
    images: Tensor,
    labels: Tensor,
    indices: np.ndarray,
    num_classes: int,
    sigmas: tuple[float, ...],
    settings: CertifySettings,
    grid: np.ndarray,
    seed: int,
    name: str,
    on_done: Callable[[float, float], None] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]], dict[str, PointResults]]:
    """CERTIFY the test points ``images[indices]`` at every sigma with the base classifier ``base_for(sigma)``.

    Returns:
        ``(table row, certified-accuracy curve over grid, per-point results)`` keyed by ``f"{sigma:g}"``;
        ``on_done(sigma, seconds)`` is called after each noise level.
    """
    import time

    rows, curves, points = {}, {}, {}
    chosen = torch.as_tensor(indices, device=images.device)
    for sigma in sigmas:
        started = time.perf_counter()
        predictions, radii, queries = certify_points(
            base_for(sigma), images[chosen], num_classes, sigma, settings, seed, f"{name} sigma={sigma:g}"
        )
        rows[f"{sigma:g}"], curves[f"{sigma:g}"] = certified_rows(
            predictions, radii, labels[chosen], sigma, settings, grid, queries
        )
        points[f"{sigma:g}"] = PointResults(
            np.asarray(indices, dtype=np.int64), labels[chosen].cpu().numpy(), predictions.numpy(), radii.numpy()
        )
        if on_done is not None:
            on_done(sigma, time.perf_counter() - started)
    return rows, curves, points


def points_table(points: PointResults) -> str:
    """CSV ``index,label,prediction,radius,correct`` (correct: right and not abstaining; radius has 17 digits)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(POINT_COLUMNS)
    for index, label, prediction, radius in zip(points.index, points.label, points.prediction, points.radius,
                                                strict=True):  # fmt: skip
        writer.writerow([int(index), int(label), int(prediction), repr(float(radius)),
                         int(prediction == label and prediction != ABSTAIN)])  # fmt: skip
    return out.getvalue()


def read_points(path: Path) -> PointResults:
    """The per-point CSV written by :func:`points_table`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run its certify stage first")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != POINT_COLUMNS:
            raise ValueError(f"{path}: expected columns {list(POINT_COLUMNS)}, got {reader.fieldnames}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no points")
    column = {key: [row[key] for row in rows] for key in POINT_COLUMNS}
    return PointResults(
        np.asarray(column["index"], dtype=np.int64),
        np.asarray(column["label"], dtype=np.int64),
        np.asarray(column["prediction"], dtype=np.int64),
        np.asarray(column["radius"], dtype=np.float64),
    )
