"""Chapters 4 and 6 over training seeds: the matrix cells from hand-made stage outputs (main stages + the
``attack_seed`` / ``certify_seed`` replicates), and the claims paired by seed, checked against scipy's t interval on the
hand-computed differences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from advreid.robustness import claims, matrix
from tests.unit.robustness.seeded import as_matrix, t_interval

# per seed (0 = the main stages, 1 and 2 = the replicates): model -> cell -> (mAP, SSIM) / rank-1
MAP = {"cnn": {"pgd-eps8": (0.20, 0.25, 0.30), "wma-eps8": (0.50, 0.60, 0.55)},
       "osnet": {"pgd-eps8": (0.10, 0.15, 0.12), "wma-eps8": (0.30, 0.28, 0.35)}}  # fmt: skip
SSIM = {"pgd-eps8": (0.85, 0.86, 0.87), "wma-eps8": (0.98, 0.99, 0.97)}
CLEAN = {"cnn": (0.90, 0.92, 0.88), "osnet": (0.70, 0.65, 0.72)}
TRANSFER = {"cnn->osnet": (0.60, 0.55, 0.50), "osnet->cnn": (0.85, 0.90, 0.80)}  # rank-1 of the scored model
SCA = {"zo_ds": (0.85, 0.84, 0.86), "zo_ruds": (0.84, 0.83, 0.86)}


def _score(values: dict, index: int, model: str, cell: str) -> dict:
    return {"rank1": 0.5, "mAP": values[model][cell][index], "ssim": SSIM[cell][index]}


def _write(root: Path) -> Path:
    metrics = root / "reports" / "metrics"
    (metrics / "attack").mkdir(parents=True)
    for model in MAP:
        cells = {c: {**_score(MAP, 0, model, c), "side": "query", "images": 20} for c in MAP[model]}
        cells["fgsm-eps8"] = {"rank1": 0.5, "mAP": 0.4, "ssim": 0.9, "side": "query", "images": 20}  # not replicated
        clean = {"rank1": CLEAN[model][0], "mAP": 0.8}
        (metrics / "attack" / f"{model}.json").write_text(json.dumps({"clean": clean, "cells": cells}))
    transfer = {pair: {"clean": {"rank1": 0.9, "mAP": 0.8}, "wma-eps8": {"rank1": v[0], "mAP": 0.4}}
                for pair, v in TRANSFER.items()}  # fmt: skip
    (metrics / "attack_report.json").write_text(json.dumps({"transfer": transfer}))
    (metrics / "attack_seeds").mkdir()
    (metrics / "certify").mkdir()
    (metrics / "certify_seeds").mkdir()
    for method, values in SCA.items():
        block = {"sca": values[0], "rca_0.25": values[0] - 0.25, "abstain": 0.01}
        (metrics / "certify" / f"{method}.json").write_text(json.dumps({"settings": {"points": 100},
                                                                         "sigma": {"0.25": block}}))  # fmt: skip
    for index in (1, 2):
        cells = {m: {"clean": {"rank1": CLEAN[m][index], "mAP": 0.8},
                     **{c: _score(MAP, index, m, c) for c in MAP[m]}} for m in MAP}  # fmt: skip
        transfer = {pair: {"wma-eps8": {"rank1": v[index], "mAP": 0.4}} for pair, v in TRANSFER.items()}
        replicate = {"seed": index, "queries": 20, "budget": "eps8", "main_seeds": {"cnn": 0, "osnet": 0},
                     "cells": cells, "transfer": transfer}  # fmt: skip
        (metrics / "attack_seeds" / f"seed{index}.json").write_text(json.dumps(replicate))
        certified = {m: {"sca": v[index], "rca_0.25": v[index] - 0.25} for m, v in SCA.items()}
        certified["zo_ae_ds"] = {"sca": 0.8}  # no main-stage file for it: left out
        (metrics / "certify_seeds" / f"seed{index}.json").write_text(
            json.dumps({"seed": index, "sigma": 0.25, "points": 100, "cells": certified})
        )
    return root


@pytest.fixture
def cells(tmp_path: Path) -> list[matrix.Cell]:
    return matrix.collect(_write(tmp_path), teacher="cnn", main_seed=0, certify_main_seed=0)[0]


def test_seed_cells_hold_the_main_seed_first_then_each_replicate(cells):
    seeded = {c.key: c for c in cells if c.task == "attack_seeds"}
    expected = {f"attack_seeds/{m}/{a}" for m in MAP for a in ("clean/-", "pgd/eps8", "wma/eps8")}
    expected |= {"attack_seeds/osnet/wma from cnn/eps8", "attack_seeds/cnn/wma from osnet/eps8"}
    assert set(seeded) == expected
    cell = seeded["attack_seeds/osnet/wma/eps8"]
    assert cell.config == {"seeds": [0, 1, 2]} and cell.source == "reports/metrics/attack_seeds/seed1.json"
    assert cell.metrics["mAP"].values == pytest.approx(MAP["osnet"]["wma-eps8"]) and cell.metrics["mAP"].kind == "seeds"
    assert cell.metrics["ssim"].values == pytest.approx(SSIM["wma-eps8"])
    moved = seeded["attack_seeds/osnet/wma from cnn/eps8"]
    assert moved.metrics["rank1"].values == pytest.approx(TRANSFER["cnn->osnet"]) and set(moved.metrics) == {
        "rank1", "mAP"}  # fmt: skip
    assert moved.config == {"seeds": [0, 1, 2], "crafted_on": "cnn"}
    certified = {c.key: c for c in cells if c.task == "certify_seeds"}
    assert set(certified) == {f"certify_seeds/{m}/sigma_0.25/radius_{r}" for m in SCA for r in ("0", "0.25")}
    sca = certified["certify_seeds/zo_ruds/sigma_0.25/radius_0"]
    assert sca.metrics["certified_accuracy"].values == pytest.approx(SCA["zo_ruds"])
    assert sca.config == {"seeds": [0, 1, 2], "points": 100}


def test_chapter4_claims_pair_by_training_seed(cells):
    m = as_matrix(cells)
    parts = claims.claim_wma_vs_pgd(m)
    assert [p.label for p in parts] == [
        "cnn: mAP(PGD) - mAP(WMA) at eps8, paired by training seed",
        "cnn: SSIM(WMA) - SSIM(PGD) at eps8, paired by training seed",
        "osnet: mAP(PGD) - mAP(WMA) at eps8, paired by training seed",
        "osnet: SSIM(WMA) - SSIM(PGD) at eps8, paired by training seed",
    ]
    pgd, wma = MAP["osnet"]["pgd-eps8"], MAP["osnet"]["wma-eps8"]
    mean, low, high = t_interval([a - b for a, b in zip(pgd, wma, strict=True)])
    assert (parts[2].difference.estimate, parts[2].difference.low, parts[2].difference.high) == pytest.approx(
        (mean, low, high))  # fmt: skip
    assert parts[2].verdict == "not reproduced" and parts[2].difference.n == 3  # PGD lowers mAP far more
    mean, low, high = t_interval([a - b for a, b in zip(SSIM["wma-eps8"], SSIM["pgd-eps8"], strict=True)])
    assert (parts[1].difference.low, parts[1].difference.high) == pytest.approx((low, high))
    assert parts[1].verdict == "reproduced"
    moved = {p.label: p for p in claims.claim_wma_transfers(m)}
    part = moved["clean rank-1 - rank-1 under WMA crafted on cnn, scored on osnet, paired by training seed"]
    mean, low, high = t_interval([a - b for a, b in zip(CLEAN["osnet"], TRANSFER["cnn->osnet"], strict=True)])
    assert (part.difference.estimate, part.difference.low, part.difference.high) == pytest.approx((mean, low, high))
    assert part.numbers["units"] == "training seeds" and len(moved) == 2


def test_chapter6_claims_pair_by_seed(cells):
    (part,) = claims.claim_zo_ruds_beats_zo_ds(as_matrix(cells))
    mean, low, high = t_interval([a - b for a, b in zip(SCA["zo_ruds"], SCA["zo_ds"], strict=True)])
    assert "paired by training seed" in part.label
    assert (part.difference.estimate, part.difference.low, part.difference.high) == pytest.approx((mean, low, high))
    assert part.verdict == "inconclusive"
    (missing,) = claims.claim_zo_ae_ruds_at_least_zo_ae_ds(as_matrix(cells))  # no zo_ae_ruds cells at all
    assert missing.verdict == "inconclusive" and math.isnan(missing.difference.low)


def test_without_replicates_the_claims_fall_back_to_one_run(cells):
    m = as_matrix([c for c in cells if c.task not in ("attack_seeds", "certify_seeds")])
    parts = claims.claim_wma_vs_pgd(m)
    assert [p.numbers["units"] for p in parts] == ["models", "models"]  # no per-query units here: paired by model
    (part,) = claims.claim_zo_ruds_beats_zo_ds(m)
    assert "paired by training seed" not in part.label and part.numbers["certify/zo_ruds/sigma_0.25/radius_0"]
    entries = {e["id"]: e for e in claims.judge_claims({"cells": {c.key: c.as_dict() for c in cells}})}
    assert entries["wma_lowers_map_like_pgd_with_higher_ssim"]["seeds"] == [0, 1, 2]
    assert entries["zo_ruds_sca_beats_zo_ds"]["seeds"] == [0, 1, 2]
    assert entries["wma_transfers_across_models"]["seeds"] == [0, 1, 2]
