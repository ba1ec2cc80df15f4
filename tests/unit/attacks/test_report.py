"""The chapter-4 tables' WMA rows, the convergence warnings and WMA's rank-1 success test, on hand-made inputs."""

from __future__ import annotations

import torch

from advreid.attacks.evaluation import ReIDSplit, rank1_fooled
from advreid.attacks.grid import convergence_warnings
from advreid.attacks.report import build_tables, render_markdown, wasserstein_rows


def _cell(method: str, objective: str = "reid_non_targeted", **extra) -> dict:
    scores = {"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "mAP": 0.4, "ssim": 0.9, "mmd": 0.01, "linf": 8.0}
    return {"attack": method, "budget": "eps8", "method": method, "objective": objective, "eps": 8, "steps": 4,
            **scores, **extra}  # fmt: skip


WMA = {"l2": 1.5, "wasserstein": 75.0, "wasserstein_max": 125.0, "eps_w_final": 3000.0, "transport_cost": 2990.0}


def test_wasserstein_rows_pair_wma_with_pgd_of_its_objective():
    cells = {
        "pgd-eps8": _cell("pgd"),
        "ama-eps8": _cell("pgd", objective="ama"),
        "fgsm-eps8": _cell("fgsm"),
        "wma-eps8": _cell("wma", **WMA, unconverged=2, projections=230),
    }
    rows = wasserstein_rows(cells)
    assert list(rows) == ["pgd-eps8", "wma-eps8"]
    assert rows["wma-eps8"]["wasserstein"] == 75.0 and rows["wma-eps8"]["unconverged"] == 2
    assert "wasserstein" not in rows["pgd-eps8"]
    assert wasserstein_rows({"pgd-eps8": _cell("pgd")}) == {}

    results = {"cnn": {"dataset": "demo_a", "clean": _cell("clean"), "cells": cells}}
    tables = build_tables(results, {}, None)
    assert tables["wasserstein"]["cnn"] == rows
    markdown = render_markdown(tables, results)
    assert "| wma-eps8 | 50.0 | 40.0 | 0.9000 | 8 | 1.500 | 75.0 | 125.0 | 3000 | 2 of 230 |" in markdown
    assert "WARNING wma-eps8: 2 of 230 projections did not converge." in markdown
    no_wma = {"cnn": {**results["cnn"], "cells": {"pgd-eps8": _cell("pgd")}}}
    assert "wasserstein" not in build_tables(no_wma, {}, None)


def test_convergence_warnings_name_only_unconverged_cells():
    cells = {
        "wma-eps8": {"unconverged": 3, "projections": 40, "mass_error_max": 2e-3},
        "wma2-eps8": {"unconverged": 0, "projections": 40, "mass_error_max": 1e-6},
        "pgd-eps8": {"rank1": 0.1},
    }
    (line,) = convergence_warnings(cells)
    assert line.startswith("wma-eps8: 3 of 40 Wasserstein projections did not converge") and "2.00e-03" in line


def test_rank1_fooled_follows_the_protocol():
    # gallery: identity 1 at camera 0 (same camera as the query: removed), identity 1 at camera 1, identity 2, junk
    gallery = ReIDSplit(
        images=None,
        features=torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.1, 0.0]]),
        labels=torch.tensor([1, 1, 2, -1]),
        cameras=torch.tensor([0, 1, 1, 1]),
    )
    fooled = rank1_fooled(gallery, torch.tensor([1, 1]), torch.tensor([0, 0]), "euclidean")
    # query 0 at (2.9, 0): nearest valid is identity 1 (camera 1): not fooled; query 1 at (0, 1.9): identity 2
    assert fooled(torch.tensor([[2.9, 0.0], [0.0, 1.9]])).tolist() == [False, True]
    targeted = rank1_fooled(gallery, torch.tensor([1, 1]), torch.tensor([0, 0]), "euclidean", torch.tensor([2, 2]))
    assert targeted(torch.tensor([[2.9, 0.0], [0.0, 1.9]])).tolist() == [False, True]
