"""Certification on test points: per-point results, their CSV, the radius bound and the point selection."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

from advreid.certify.certification import (
    CertifySettings,
    PointResults,
    certify_method,
    evenly_spaced,
    max_certifiable_radius,
    points_table,
    read_points,
)

SETTINGS = CertifySettings(n0=10, n=40, alpha=0.001, batch_size=25, radii=(0.0, 0.25, 0.5))


class Constant(nn.Module):
    """Scores that always favour one class, whatever the noise."""

    def __init__(self, label: int, classes: int = 3) -> None:
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(x.shape[0], self.classes)
        scores[:, self.label] = 1.0
        return scores


def test_max_certifiable_radius_matches_the_normal_quantile() -> None:
    # all n samples agree: pA_lower = alpha^(1/n) = 0.001^(1/100); a second computation with the standard library
    expected = 0.25 * NormalDist().inv_cdf(0.001 ** (1 / 100))
    assert max_certifiable_radius(0.25, 100, 0.001) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.3752, abs=1e-4)  # so n = 100 still certifies r = 0.25 at sigma = 0.25


def test_evenly_spaced_takes_every_point_when_asked_for_more() -> None:
    assert evenly_spaced(450, 450).tolist() == list(range(450))
    assert evenly_spaced(450, 1000).tolist() == list(range(450))
    assert evenly_spaced(10, 3).tolist() == [0, 4, 9]


def test_certify_method_returns_rows_curves_and_points_per_sigma() -> None:
    images, labels = torch.rand(6, 1, 4, 4), torch.tensor([1, 1, 0, 1, 2, 1])
    indices = np.array([0, 2, 5])
    seen = []
    rows, curves, points = certify_method(
        lambda sigma: Constant(1), images, labels, indices, 3, (0.25, 0.5), SETTINGS, np.array([0.0, 0.25]), 0,
        "constant", on_done=lambda sigma, seconds: seen.append(sigma),
    )  # fmt: skip
    assert seen == [0.25, 0.5] and set(rows) == set(points) == {"0.25", "0.5"}
    result = points["0.25"]
    assert result.index.tolist() == [0, 2, 5] and result.label.tolist() == [1, 0, 1]
    assert result.prediction.tolist() == [1, 1, 1]  # the constant class, never abstaining
    bound = max_certifiable_radius(0.25, SETTINGS.n, SETTINGS.alpha)  # every sample agrees
    np.testing.assert_allclose(result.radius, bound, rtol=1e-12)
    assert result.certified_correct(0.0).tolist() == [True, False, True]
    assert rows["0.25"]["sca"] == pytest.approx(2 / 3) and rows["0.25"]["rca_0.5"] == 0.0  # 0.5 > bound = 0.25
    assert curves["0.25"] == pytest.approx([2 / 3, 2 / 3])
    assert rows["0.5"]["rca_0.5"] == pytest.approx(2 / 3)  # bound 0.5 at sigma = 0.5 reaches r = 0.5


def test_points_csv_round_trips_exactly(tmp_path) -> None:
    points = PointResults(
        np.array([3, 7, 9]), np.array([1, 2, 0]), np.array([1, -1, 2]), np.array([0.1234567890123, 0.0, 0.5])
    )
    path = tmp_path / "m_sigma_0.25.csv"
    path.write_text(points_table(points))
    assert path.read_text().splitlines()[:2] == ["index,label,prediction,radius,correct", "3,1,1,0.1234567890123,1"]
    back = read_points(path)
    for field in ("index", "label", "prediction", "radius"):
        assert np.array_equal(getattr(back, field), getattr(points, field))
    assert back.certified_correct(0.0).tolist() == [True, False, False]  # an abstention (-1) is never correct
    assert back.certified_correct(0.2).tolist() == [False, False, False]


def test_read_points_names_the_file_and_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.csv not found"):
        read_points(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("index,label\n1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv: expected columns"):
        read_points(bad)
