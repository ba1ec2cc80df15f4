"""Helpers of the seed-paired claim tests: a claims Matrix from cells, and the 95% t-interval computed with scipy."""

from __future__ import annotations

import math

from scipy import stats as scipy_stats

from advreid.robustness import claims, matrix


def as_matrix(cells: list[matrix.Cell]) -> claims.Matrix:
    return claims.Matrix({"cells": {c.key: c.as_dict() for c in cells}})


def t_interval(differences: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% Student-t interval of the mean, by hand from scipy's quantile."""
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
