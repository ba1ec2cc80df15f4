"""The claims' verdicts on hand-made numbers: reproduced, refuted, overlapping intervals, and not measured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats as sps

from advreid.robustness import claims, matrix
from tests.fixtures_robustness import write_matrix_project


def _matrix(cells: list[matrix.Cell]) -> dict:
    return {"cells": {c.key: {**c.as_dict(), "run_id": f"run-{c.key}"} for c in cells}, "missing": []}


def _certify(method: str, successes: int, points: int = 10) -> matrix.Cell:
    spread = matrix.binomial(successes / points, points)
    return matrix.Cell("certify", method, "sigma_0.25", "radius_0", {"certified_accuracy": spread}, "x.json")


def _cp(k: int, n: int, level: float) -> tuple[float, float]:
    """Clopper-Pearson from the beta quantiles (an independent computation of the same interval)."""
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else sps.beta.ppf(tail, k, n - k + 1)
    high = 1.0 if k == n else sps.beta.ppf(1 - tail, k + 1, n - k)
    return low, high


@pytest.mark.parametrize(("ruds", "ds", "expected"), [(10, 1, "reproduced"), (1, 10, "not reproduced"),
                                                      (6, 5, "inconclusive")])  # fmt: skip
def test_two_interval_verdicts_by_hand(ruds: int, ds: int, expected: str):
    data = _matrix([_certify("zo_ruds", ruds), _certify("zo_ds", ds)])
    part = claims.claim_zo_ruds_beats_zo_ds(claims.Matrix(data))[0]
    (a_low, a_high), (b_low, b_high) = _cp(ruds, 10, 0.975), _cp(ds, 10, 0.975)  # Bonferroni: 97.5% each
    assert part.difference.low == pytest.approx(a_low - b_high, abs=1e-9)
    assert part.difference.high == pytest.approx(a_high - b_low, abs=1e-9)
    assert part.difference.level == pytest.approx(0.95)
    assert part.verdict == expected
    assert part.run_ids == ("run-certify/zo_ruds/sigma_0.25/radius_0", "run-certify/zo_ds/sigma_0.25/radius_0")


def test_the_claims_on_the_tiny_project(tmp_path: Path):
    cells, missing = matrix.collect(write_matrix_project(tmp_path), teacher="m1")
    entries = {e["id"]: e for e in claims.judge_claims(_matrix(cells))}
    # IPES-GAN - direct per seed: 0.02, 0.03, 0.04 -> mean 0.03, sd 0.01, t(0.975, 2) = 4.302653
    gan = entries["ipes_gan_beats_direct_transfer"]
    assert gan["parts"][0]["difference"]["low"] == pytest.approx(0.03 - 4.302653 * 0.01 / math.sqrt(3), abs=1e-6)
    assert gan["verdict"] == "reproduced" and len(gan["run_ids"]) == 2
    # single encoding was not trained: nothing measured
    cyclic = entries["cyclic_beats_single_encoding"]
    assert cyclic["verdict"] == "inconclusive" and "single_encoding" in cyclic["parts"][0]["numbers"]["missing"][0]
    # 0.6 ± t-interval over 5 draws vs 3 x (0 of 4 queries): the estimate says yes, the interval straddles 0
    triple = entries["mp_snn_triples_robust_rank1"]["parts"][0]
    assert triple["difference"]["estimate"] == pytest.approx(0.6)
    assert triple["difference"]["low"] < 0 < triple["difference"]["high"] and triple["verdict"] == "inconclusive"
    # 9 of 10 vs 3 of 10 points: the 97.5% intervals [0.49, 1.0] and [0.04, 0.72] overlap
    assert entries["zo_ruds_sca_beats_zo_ds"]["verdict"] == "inconclusive"
    # one model: no spread over models -> undefined; WMA has a higher SSIM but one unit judges nothing
    assert entries["wma_lowers_map_like_pgd_with_higher_ssim"]["verdict"] == "inconclusive"
    assert entries["wma_transfers_across_models"]["verdict"] == "inconclusive"  # no transfer cells
    markdown = claims.claims_markdown(list(entries.values()))
    assert markdown.count("\n## ") == len(claims.CLAIMS) and "**reproduced**" in markdown


def test_combine_needs_every_part():
    assert claims.combine(["reproduced", "reproduced"]) == "reproduced"
    assert claims.combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert claims.combine(["inconclusive", "not reproduced"]) == "not reproduced"
    assert claims.combine([]) == "inconclusive"


def _points(root: Path, method: str, outcomes: list[tuple[int, float]]) -> None:
    """Per-point file as `certify` writes it: index, label, prediction, radius, correct."""
    lines = ["index,label,prediction,radius,correct"]
    lines += [f"{i},{i % 10},{i % 10 if c else -1},{r!r},{c}" for i, (c, r) in reversed(list(enumerate(outcomes)))]
    path = root / "reports/certify/points" / f"{method}_sigma_0.25.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_per_point_files_make_the_certify_claims_paired(tmp_path: Path):
    root = write_matrix_project(tmp_path)  # zo_ruds: SCA 0.9, RCA(0.25) 0.2; zo_ds: SCA 0.3, RCA(0.25) 0.2
    _points(root, "zo_ruds", [(1, 0.3), (1, 0.3)] + [(1, 0.1)] * 7 + [(0, 0.0)])
    _points(root, "zo_ds", [(1, 0.3), (1, 0.3), (1, 0.1)] + [(0, 0.0)] * 7)
    cells, _ = matrix.collect(root, teacher="m1")
    sca = next(c for c in cells if c.key == "certify/zo_ruds/sigma_0.25/radius_0").metrics["certified_accuracy"]
    assert sca.values == (1.0,) * 9 + (0.0,)  # in index order, whatever the file's row order
    part = claims.claim_zo_ruds_beats_zo_ds(claims.Matrix(_matrix(cells)))[0]
    assert part.numbers["mcnemar"]["only_a"] == 6 and part.numbers["mcnemar"]["only_b"] == 0
    assert part.numbers["mcnemar"]["pvalue"] == pytest.approx(2 / 2**6)  # two-sided exact binomial, 6 vs 0
    assert part.difference.method == "paired bootstrap" and part.difference.estimate == pytest.approx(0.6)
    assert part.verdict == "reproduced"  # 6 of 10 points gained, none lost: every resample is positive


def test_per_point_files_that_disagree_with_the_metrics_are_refused(tmp_path: Path):
    root = write_matrix_project(tmp_path)
    _points(root, "zo_ds", [(1, 0.3)] * 10)  # the metrics say SCA 3 of 10
    with pytest.raises(ValueError, match="zo_ds_sigma_0.25.csv at radius 0"):
        matrix.collect(root, teacher="m1")
