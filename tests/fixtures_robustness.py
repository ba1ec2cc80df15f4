"""A tiny project holding hand-made stage outputs (attack, defense, IPES-GAN, certification metrics) and the dvc.lock
that records them, for the robustness matrix, the claims and the report. Numbers are chosen so that the intervals
and verdicts can be computed by hand."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from PIL import Image

QUERIES = 4  # attack task: rank-1 is a count out of 4 queries
DEFENSE_QUERIES = 4
POINTS = 10  # certification test points


def attack_metrics(clean_rank1: float = 0.75) -> dict:
    cell = {"side": "query", "images": QUERIES, "method": "pgd", "objective": "reid_non_targeted", "eps": 8.0}
    return {
        "clean": {"rank1": clean_rank1, "mAP": 0.6},
        "dataset": "demo_a",
        "model": "m1",
        "protocol": {"distance": "euclidean"},
        "cells": {
            "pgd-eps8": {**cell, "rank1": 0.25, "mAP": 0.3, "ssim": 0.80},
            "wma-eps8": {**cell, "method": "wma", "rank1": 0.5, "mAP": 0.2, "ssim": 0.90},
        },
    }


def defense_metrics(model: str) -> dict:
    if model == "vanilla":
        cells = {
            "clean": {"draws": 1, "rank1": 1.0, "rank1_std": 0.0, "mAP": 0.9, "mAP_std": 0.0},
            "pgd-eps8": {"draws": 1, "rank1": 0.0, "rank1_std": 0.0, "mAP": 0.1, "mAP_std": 0.0, "eps": 8.0},
        }
    else:  # a stochastic defense: mean and std over 5 noise draws
        cells = {
            "clean": {"draws": 5, "rank1": 0.95, "rank1_std": 0.01, "mAP": 0.8, "mAP_std": 0.01},
            "pgd-eps8": {"draws": 5, "rank1": 0.6, "rank1_std": 0.05, "mAP": 0.5, "mAP_std": 0.02, "eps": 8.0},
        }
    return {"model": model, "queries": DEFENSE_QUERIES, "cells": cells}


def gan_metrics() -> dict:
    return {
        "direct_transfer": {"rank1": 0.25, "mAP": 0.10, "num_valid_queries": 4},
        "ipes_gan": {"per_seed": {str(s): {"rank1": 0.5, "mAP": 0.10 + d} for s, d in enumerate((0.02, 0.03, 0.04))}},
    }


def certify_metrics(sca: float) -> dict:
    return {"settings": {"points": POINTS}, "sigma": {"0.25": {"sca": sca, "rca_0.25": 0.2, "rca_0.5": 0.0}}}


OUTPUTS = {
    "attack@m1": ("reports/metrics/attack/m1.json", attack_metrics, "models/reid/m1/model.pt"),
    "eval_defense@vanilla": ("reports/metrics/defense/vanilla.json", lambda: defense_metrics("vanilla"),
                             "models/reid/m1/model.pt"),
    "eval_defense@mp_snn": ("reports/metrics/defense/mp_snn.json", lambda: defense_metrics("mp_snn"),
                            "models/defense/mp_snn/model.pt"),
    "eval_gan": ("reports/metrics/ipes_gan.json", gan_metrics, "models/gan/ipes_gan/seeds"),
    "certify@zo_ruds": ("reports/metrics/certify/zo_ruds.json", lambda: certify_metrics(0.9), "models/denoisers/zr"),
    "certify@zo_ds": ("reports/metrics/certify/zo_ds.json", lambda: certify_metrics(0.3), "models/denoisers/zd"),
}  # fmt: skip


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_lock(root: Path) -> None:
    """dvc.lock recording every hand-made output with its model file and the processed data as deps."""
    stages = {}
    for stage, (out, _, model) in OUTPUTS.items():
        deps = [{"path": p, "hash": "md5", "md5": _md5(root / p)} for p in (model, "data/processed/demo_a.txt")]
        stages[stage] = {"cmd": f"advreid {stage}", "deps": deps,
                         "outs": [{"path": out, "hash": "md5", "md5": _md5(root / out)}]}  # fmt: skip
    model = root / "models/reid/m1/model.pt"
    stages["train_reid@m1"] = {
        "cmd": "advreid train-reid m1",
        "deps": [],
        "outs": [{"path": "models/reid/m1/model.pt", "hash": "md5", "md5": _md5(model)}],
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))


def write_matrix_project(root: Path) -> Path:
    """Create the project under ``root``; returns it."""
    for _, (out, make, model) in OUTPUTS.items():
        for path, text in ((root / out, json.dumps(make())), (root / model, f"weights of {model}")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (root / "data" / "processed").mkdir(parents=True, exist_ok=True)
    (root / "data" / "processed" / "demo_a.txt").write_text("images")
    (root / "reports" / "attack" / "tables.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "reports" / "attack" / "tables.md").write_text("| attack | rank-1 |\n|---|---|\n| pgd | 25.0 |\n")
    Image.new("RGB", (8, 6), (200, 30, 30)).save(root / "reports" / "attack" / "cmc.png")
    report = {
        "mlflow_ui": "http://mlflow.test:5000",
        "tables": {"Chapter 4": "reports/attack/tables.md"},
        "figures": {"CMC under attack": "reports/attack/cmc.png"},
    }
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "robustness": {
                    "teacher": "m1",
                    "seeds": [0, 1, 2],
                    "heatmaps": ["attack", "defense", "adaptation", "certify"],
                    "register_models": True,
                    "report": report,
                    "registry": {
                        "tiny-m1": {"chapter": 4, "path": "models/reid/m1/model.pt", "task": "attack", "row": "m1"}
                    },
                }
            }
        )
    )
    (root / "dvc.yaml").write_text("stages: {}\n")
    write_lock(root)
    return root
