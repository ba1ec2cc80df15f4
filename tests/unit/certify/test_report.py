"""The spread of the chapter-6 report: Clopper-Pearson intervals and paired tests on hand-made per-point results."""

from __future__ import annotations

import numpy as np
import pytest

from advreid.certify.certification import PointResults
from advreid.certify.report import render_statistics, statistics


def _points(correct: list[int], radius: float = 0.3) -> PointResults:
    labels = np.zeros(len(correct), dtype=np.int64)
    predictions = np.where(np.asarray(correct) == 1, 0, 1)
    return PointResults(np.arange(len(correct)), labels, predictions, np.full(len(correct), radius))


def test_claims_and_baseline_comparisons_match_hand_values() -> None:
    # zo_ruds right on 8 of 10 points, zo_ds on 5, baseline on 5: 3 discordant pairs, all for zo_ruds
    ruds, ds = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    points = {
        "baseline": {"0.25": _points(ds)},
        "zo_ruds": {"0.25": _points(ruds)},
        "zo_ds": {"0.25": _points(ds, radius=0.1)},
    }
    stats = statistics(points, [0.0, 0.25, 0.5], {"0.25": 0.375})
    interval = stats["certified_accuracy"]["zo_ruds"]["0.25"]["sca"]
    # Clopper-Pearson 95% for 8 / 10 (textbook value: 0.4439 to 0.9748)
    assert interval["estimate"] == 0.8
    assert interval["low"] == pytest.approx(0.4439, abs=1e-4) and interval["high"] == pytest.approx(0.9748, abs=1e-4)
    (claim,) = stats["claims"]  # the second claimed pair was not run
    assert (claim["better"], claim["worse"], claim["sigma"]) == ("zo_ruds", "zo_ds", 0.25)
    assert set(claim["radii"]) == {"sca", "rca_0.25"}  # 0.5 exceeds what n can certify
    sca = claim["radii"]["sca"]
    assert sca["mcnemar"] == {"only_a": 3, "only_b": 0, "pvalue": pytest.approx(0.25)}  # 2 x 0.5^3
    assert sca["difference"]["estimate"] == pytest.approx(0.3)
    assert sca["difference"]["low"] <= 0.3 <= sca["difference"]["high"]
    rca = claim["radii"]["rca_0.25"]  # zo_ds certifies nothing at 0.25 (radius 0.1)
    assert rca["mcnemar"]["only_a"] == 8 and rca["mcnemar"]["only_b"] == 0
    assert rca["mcnemar"]["pvalue"] == pytest.approx(2 * 0.5**8) and rca["verdict"] == "reproduced"
    assert stats["versus_baseline"]["zo_ruds"]["0.25"]["sca"]["mcnemar"]["only_a"] == 3
    text = "\n".join(render_statistics(stats, {"zo_ruds": "ZO-RUDS (R)", "zo_ds": "ZO-DS (R)", "baseline": "-"}))
    assert "| ZO-RUDS (R) SCA > ZO-DS (R) SCA | 0.25 | SCA | +30.0 [" in text and "| 3 / 0 | 0.25 |" in text


def test_paired_tests_refuse_different_points() -> None:
    points = {"baseline": {"0.25": _points([1, 0])}, "zo_ruds": {"0.25": _points([1, 0, 1])}}
    with pytest.raises(ValueError, match="same test points"):
        statistics(points, [0.0], {"0.25": 0.375})
