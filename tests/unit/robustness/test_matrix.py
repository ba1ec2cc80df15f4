"""The robustness matrix from hand-made stage outputs: cells, their spreads and intervals, missing cells, grids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from advreid import stats
from advreid.robustness import matrix
from tests.fixtures_robustness import DEFENSE_QUERIES, POINTS, QUERIES, write_matrix_project


@pytest.fixture
def cells(tmp_path: Path):
    return matrix.collect(write_matrix_project(tmp_path), teacher="m1")


def _cell(cells, key):
    return next(c for c in cells[0] if c.key == key)


def test_rank1_over_queries_is_a_clopper_pearson_count(cells):
    pgd = _cell(cells, "attack/m1/pgd/eps8")
    rank1 = pgd.metrics["rank1"]
    assert (rank1.kind, rank1.successes, rank1.trials) == ("binomial", 1, QUERIES)
    assert rank1.interval() == stats.clopper_pearson(1, QUERIES)
    assert pgd.config["method"] == "pgd" and pgd.source == "reports/metrics/attack/m1.json"
    clean = _cell(cells, "attack/m1/clean/-").metrics
    assert clean["rank1"].successes == 3 and math.isnan(clean["mAP"].interval().low)  # mAP: no unit values stored


def test_stochastic_defense_cells_are_t_intervals_over_draws(cells):
    mp = _cell(cells, "defense/mp_snn/pgd/eps8").metrics["rank1"]
    half = 2.776445 * 0.05 / math.sqrt(5)  # t(0.975, df=4)
    assert mp.interval().low == pytest.approx(0.6 - half, abs=1e-6)
    vanilla = _cell(cells, "defense/vanilla/pgd/eps8").metrics["rank1"]
    assert (vanilla.kind, vanilla.successes, vanilla.trials) == ("binomial", 0, DEFENSE_QUERIES)


def test_seeds_and_certified_accuracy(cells):
    gan = _cell(cells, "adaptation/ipes_gan/clean/-")
    assert gan.metrics["mAP"].values == pytest.approx((0.12, 0.13, 0.14)) and gan.config["seeds"] == [0, 1, 2]
    assert _cell(cells, "adaptation/m1 (direct transfer)/clean/-").metrics["mAP"].estimate == 0.10
    sca = _cell(cells, "certify/zo_ruds/sigma_0.25/radius_0").metrics["certified_accuracy"]
    assert (sca.successes, sca.trials) == (9, POINTS)
    assert _cell(cells, "certify/zo_ruds/sigma_0.25/radius_0.25").metrics["certified_accuracy"].successes == 2


def test_missing_cells_name_what_no_stage_produced(cells):
    missing = cells[1]
    assert {"task": "attack", "model": "ipes_gan", "attack": "pgd", "budget": "eps8"} in missing
    assert not [m for m in missing if m["task"] == "defense"]  # both defenses have both columns


def test_grid_puts_clean_first_and_none_where_missing(cells):
    rows, columns, values = matrix.grid(cells[0], "defense", "rank1")
    assert rows == ["mp_snn", "vanilla"] and columns == ["clean", "pgd eps8"]
    assert values == [[0.95, 0.6], [1.0, 0.0]]


def test_a_rate_that_is_not_a_count_is_refused():
    with pytest.raises(ValueError, match="not a count out of 4"):
        matrix.binomial(0.3, 4)


def test_spread_round_trips_through_json(cells):
    for cell in cells[0]:
        for spread in cell.metrics.values():
            a, b = matrix.Spread.from_dict(spread.as_dict()).interval(), spread.interval()
            assert (a.estimate, a.low, a.high, a.n) == pytest.approx((b.estimate, b.low, b.high, b.n), nan_ok=True)
