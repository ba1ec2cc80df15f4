"""Per-query AP and rank-1 hits against a hand-ranked toy gallery; the matrix and the WMA claim use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from advreid.reid.metrics import evaluate_rank
from advreid.robustness import claims, matrix
from advreid.robustness.units import per_query_scores
from tests.fixtures_robustness import write_matrix_project


def test_per_query_scores_by_hand():
    # 1-d features; gallery ids [1, 2, 1] on camera 1, queries on camera 0 (nothing removed)
    qf, gf = torch.tensor([[0.0], [4.0]]), torch.tensor([[1.0], [9.0], [5.0]])
    ql, gl = torch.tensor([1, 2]), torch.tensor([1, 2, 1])
    qc, gc = torch.tensor([0, 0]), torch.tensor([1, 1, 1])
    ap, hit = per_query_scores(qf, gf, ql, gl, qc, gc)
    # q0 ranks g0 (match), g2 (match), g1: AP 1, hit; q1 ranks g2, g0, g1 (match at 3): AP 1/3, miss
    assert ap.tolist() == pytest.approx([1.0, 1 / 3]) and hit.tolist() == [1.0, 0.0]
    assert float(ap.mean()) == pytest.approx(evaluate_rank(qf, gf, ql, gl, qc, gc).mAP)
    with pytest.raises(ValueError, match="1 queries have no valid gallery match"):
        per_query_scores(qf, gf, torch.tensor([1, 3]), gl, qc, gc)


def _units(root: Path, pgd_ap: list[float], wma_ap: list[float]) -> None:
    units = {
        "clean": {"ap": [0.6] * 4, "rank1_hit": [1, 1, 1, 0]},
        "pgd-eps8": {"ap": pgd_ap, "rank1_hit": [1, 0, 0, 0], "ssim": [0.80, 0.81, 0.79, 0.80]},
        "wma-eps8": {"ap": wma_ap, "rank1_hit": [1, 1, 0, 0], "ssim": [0.90, 0.91, 0.89, 0.90]},
    }
    (root / "reports/matrix/units").mkdir(parents=True, exist_ok=True)
    (root / "reports/matrix/units/m1.json").write_text(json.dumps(units))


def test_units_give_bootstrap_intervals_and_paired_claims(tmp_path: Path):
    root = write_matrix_project(tmp_path)
    _units(root, pgd_ap=[0.4, 0.3, 0.3, 0.2], wma_ap=[0.25, 0.2, 0.2, 0.15])  # WMA lower on every query
    cells, _ = matrix.collect(root, teacher="m1")
    wma = next(c for c in cells if c.key == "attack/m1/wma/eps8")
    assert wma.metrics["mAP"].kind == "queries" and wma.metrics["mAP"].estimate == pytest.approx(0.2)
    assert wma.metrics["rank1"].values == (1.0, 1.0, 0.0, 0.0)
    data = {"cells": {c.key: {**c.as_dict(), "run_id": c.key} for c in cells}}
    parts = claims.claim_wma_vs_pgd(claims.Matrix(data))
    assert [p.numbers["units"] for p in parts] == ["4 paired queries/images"] * 2
    # every paired difference is positive (0.15, 0.1, 0.1, 0.05 and 0.1 each): the bootstrap interval is too
    assert parts[0].difference.low >= 0.05 - 1e-12 and parts[0].verdict == "reproduced"
    assert parts[1].difference.estimate == pytest.approx(0.1) and parts[1].verdict == "reproduced"


def test_hits_that_do_not_add_up_to_rank1_are_refused(tmp_path: Path):
    root = write_matrix_project(tmp_path)
    _units(root, pgd_ap=[0.3] * 4, wma_ap=[0.2] * 4)
    units = json.loads((root / "reports/matrix/units/m1.json").read_text())
    units["pgd-eps8"]["rank1_hit"] = [1, 1, 1, 1]  # the attack's rank-1 is 1 of 4
    (root / "reports/matrix/units/m1.json").write_text(json.dumps(units))
    with pytest.raises(ValueError, match="do not match rank-1 1 of 4"):
        matrix.collect(root, teacher="m1")


def test_first_match_ranks_reproduce_the_cmc():
    generator = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(30, 8, generator=generator), torch.randn(90, 8, generator=generator)
    ql, gl = torch.arange(30) % 10, torch.arange(90) % 10
    qc, gc = torch.zeros(30, dtype=torch.long), torch.ones(90, dtype=torch.long)
    result = evaluate_rank(qf, gf, ql, gl, qc, gc, max_rank=10, chunk_size=7)
    first = result.per_query_first_match
    cmc = torch.stack([(first <= k).double().mean() for k in range(10)]).float()
    assert torch.allclose(cmc, result.cmc) and len(first) == 30
    assert evaluate_rank(qf, gf, ql, gl, qc, gc, single_shot_repeats=2).per_query_first_match is None
