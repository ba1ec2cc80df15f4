"""Keypoints for every image of a processed dataset: annotations, MediaPipe estimates (kept between runs), PCK.

:func:`run_pose` is what the ``pose@<dataset>`` stage does but tracking: it writes the keypoints table, the
estimates, the report, the metrics and the figures (layout in :mod:`advreid.stages.pose`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from advreid.data.manifest import read_manifests
from advreid.data.torch_data import dataset_info
from advreid.io import write_json
from advreid.params import ParamsError
from advreid.pose.estimator import EstimatorSettings, PoseResult, update_estimates
from advreid.pose.keypoints import (
    JOINTS,
    STATUSES,
    frame_keypoints,
    missing_keypoints,
    poses_frame,
    present,
    read_annotations,
    read_poses,
    read_poses_metadata,
    write_poses,
)
from advreid.pose.plots import pck_plot, skeleton_grid
from advreid.pose.quality import joint_detection_rate, pck

SOURCE_MODES = ("auto", "estimator", "annotations")
SETTINGS_KEY = "advreid.pose.estimator"


@dataclass(frozen=True)
class PoseParams:
    datasets: dict = field(default_factory=dict)  # dataset -> raw root (the DVC dep for its annotations)
    source: str = "auto"
    annotations: str = "keypoints.json"  # relative to the raw root
    evaluate: bool = True  # run the estimator beside annotations to score it
    evaluate_images: int = 0  # annotated images it is scored on: evenly spaced, plus the grid's (0 = all)
    workers: int = 2
    upscale: int = 2  # measured on the demo: see the pose section of params.yaml
    min_visibility: float = 0.5
    min_detection_confidence: float = 0.5
    pck_alphas: tuple[float, ...] = (0.1, 0.2)
    grid_images: int = 8

    def __post_init__(self) -> None:
        if self.source not in SOURCE_MODES:
            raise ParamsError(f"pose.source: must be one of {list(SOURCE_MODES)}, got {self.source!r}")
        if self.workers < 1:
            raise ParamsError(f"pose.workers: must be >= 1, got {self.workers}")
        if self.evaluate_images < 0:
            raise ParamsError(
                f"pose.evaluate_images: must be >= 0 (0 = every annotated image), got {self.evaluate_images}"
            )
        if self.grid_images < 1:
            raise ParamsError(f"pose.grid_images: must be >= 1, got {self.grid_images}")
        if not self.pck_alphas or any(not a > 0 for a in self.pck_alphas):
            raise ParamsError(f"pose.pck_alphas: must be a non-empty list of numbers > 0, got {self.pck_alphas}")

    def estimator_settings(self) -> EstimatorSettings:
        try:
            return EstimatorSettings(self.min_visibility, self.upscale, self.min_detection_confidence)
        except ValueError as err:
            raise ParamsError(f"pose: {err}") from err


@dataclass(frozen=True)
class PoseOutputs:
    table: Path
    estimates: Path
    report: Path
    metrics_file: Path
    figures: tuple[Path, ...]
    metrics: dict[str, Any]
    work: dict[str, int]  # images estimated in this run and estimates reused from the last


def run_pose(
    dataset: str, root: Path, params: PoseParams, estimate: Callable[[list[Path]], list[PoseResult]]
) -> PoseOutputs:
    """Everything the stage does but tracking: keypoints, estimates, scores, report and figures.

    ``estimate`` maps image files to :class:`PoseResult` in order (the stage binds :func:`estimate_files`).
    """
    processed = root / "data" / "processed" / dataset
    raw_root = _raw_root(root, processed, dataset, params.datasets[dataset])
    images = read_manifests(processed)[["sha256", "path"]].drop_duplicates("sha256").reset_index(drop=True)
    annotation_file = raw_root / params.annotations
    annotations = read_annotations(annotation_file) if annotation_file.is_file() else {}
    has_annotation = images["path"].isin(annotations.keys())
    if params.source == "annotations" and not annotation_file.is_file():
        raise FileNotFoundError(f"pose.source is 'annotations' but {annotation_file} does not exist")
    if params.source == "annotations" and not has_annotation.all():
        lacking = images.loc[~has_annotation, "path"]
        raise ValueError(
            f"pose.source is 'annotations' but {annotation_file} lacks {len(lacking)} of {len(images)} images "
            f"of {dataset} (e.g. {lacking.iloc[0]})"
        )
    use_annotations = has_annotation & (params.source != "estimator")
    # The estimator runs on every image without annotations it uses, and to be scored on annotated ones
    needed = ~use_annotations | (has_annotation & _scored_rows(len(images), params))
    run_estimator = bool(needed.any())

    paths = _output_paths(root, dataset)
    settings = params.estimator_settings().describe()
    previous = _previous_estimates(paths["estimates"], settings)
    if run_estimator:
        wanted = images[needed.to_numpy()].reset_index(drop=True)
        estimates, failed, estimated = update_estimates(wanted, raw_root, previous, estimate)
    else:  # nothing to estimate: keep earlier estimates of current images for later runs
        estimates = _empty() if previous is None else previous[previous["sha256"].isin(images["sha256"])]
        failed, estimated = {}, 0
    table = _choose(images, annotations, use_annotations, estimates)
    write_poses(table, paths["table"])
    write_poses(estimates, paths["estimates"], {SETTINGS_KEY: json.dumps(settings, sort_keys=True)})

    evaluation = _evaluate(estimates, annotations, params.pck_alphas) if run_estimator else None
    # The metrics depend on the inputs only; how much work this run did goes to the report.
    metrics = _finite(_metrics(table, estimates if run_estimator else None, evaluation))
    work = {"estimated": estimated, "reused": len(estimates) - estimated if run_estimator else 0}
    report = {
        "dataset": dataset,
        "raw_root": str(params.datasets[dataset]),
        "source": params.source,
        "annotations": str(Path(params.datasets[dataset]) / params.annotations) if annotations else None,
        "estimator_settings": settings if run_estimator else None,
        "pck_height": "vertical extent of the visible annotated keypoints (max y - min y)" if evaluation else None,
        **metrics,
        "this_run": work,
        "failed_files": [{"path": p, "error": e} for p, e in sorted(failed.items())],
    }
    write_json(paths["report"], report)
    write_json(paths["metrics"], metrics)
    skeletons = skeleton_grid(table, estimates, annotations, raw_root, paths["skeletons"], params.grid_images)
    return PoseOutputs(
        table=paths["table"],
        estimates=paths["estimates"],
        report=paths["report"],
        metrics_file=paths["metrics"],
        figures=(skeletons, pck_plot(evaluation, paths["pck"], dataset)),
        metrics=metrics,
        work=work,
    )


def _scored_rows(count: int, params: PoseParams) -> pd.Series:
    """Which of ``count`` images the estimator is scored on (where annotated): none without ``evaluate``, all for
    ``evaluate_images`` 0, else that many evenly spaced plus the skeleton grid's picks (its estimator row)."""
    if not params.evaluate:
        return pd.Series(np.zeros(count, dtype=bool))
    if params.evaluate_images == 0 or params.evaluate_images >= count:
        return pd.Series(np.ones(count, dtype=bool))
    rows = np.zeros(count, dtype=bool)
    rows[np.linspace(0, count - 1, params.evaluate_images).round().astype(int)] = True
    rows[np.linspace(0, count - 1, min(params.grid_images, count)).round().astype(int)] = True
    return pd.Series(rows)


def _output_paths(root: Path, dataset: str) -> dict[str, Path]:
    out, reports = root / "data" / "processed" / "pose", root / "reports" / "pose"
    return {
        "table": out / f"{dataset}.parquet",
        "estimates": out / f"{dataset}.estimates.parquet",
        "report": reports / f"{dataset}_report.json",
        "skeletons": reports / f"{dataset}_skeletons.png",
        "pck": reports / f"{dataset}_pck.png",
        "metrics": root / "reports" / "metrics" / "pose" / f"{dataset}.json",
    }


def _empty() -> pd.DataFrame:
    return poses_frame([], [], missing_keypoints(0), [], [])


def _metrics(table: pd.DataFrame, estimates: pd.DataFrame | None, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """Counts of the output, of the estimator's run (None when it did not run) and its scores."""
    metrics: dict[str, Any] = {
        "images": len(table),
        "sources": {s: int((table["source"] == s).sum()) for s in ("annotations", "estimator")},
        "status": {s: int((table["status"] == s).sum()) for s in STATUSES},
    }
    if estimates is not None:
        counts = {s: int((estimates["status"] == s).sum()) for s in STATUSES}
        tried = counts["ok"] + counts["no_detection"]  # a failed file was never shown to the estimator
        metrics["estimator"] = {**counts, "detection_rate": counts["ok"] / tried if tried else None}
    if evaluation is not None:
        metrics["evaluation"] = evaluation
    return metrics


def _raw_root(root: Path, processed: Path, dataset: str, declared: str) -> Path:
    """The raw root the manifests are relative to; it must be the one params.yaml declares as the dep."""
    info_root = root / dataset_info(processed)["root"]  # an absolute root stays absolute
    if info_root.resolve() != (root / declared).resolve():
        raise ParamsError(
            f"pose.datasets.{dataset}: raw root {declared!r} is not the ingested dataset's root "
            f"{str(info_root)!r} (from {processed / 'dataset.json'})"
        )
    return info_root


def _previous_estimates(path: Path, settings: dict) -> pd.DataFrame | None:
    """The estimates of the last run when they were made with the same settings, else None."""
    if not path.is_file():
        return None
    stored = read_poses_metadata(path).get(SETTINGS_KEY)
    if stored is None or json.loads(stored) != json.loads(json.dumps(settings)):
        return None
    return read_poses(path)


def _choose(
    images: pd.DataFrame, annotations: dict[str, np.ndarray], use_annotations: pd.Series, estimates: pd.DataFrame
) -> pd.DataFrame:
    """Per image: its annotation where ``use_annotations``, else the estimator's keypoints."""
    keypoints = missing_keypoints(len(images))
    sources = np.where(use_annotations, "annotations", "estimator").astype(object)
    statuses = np.empty(len(images), dtype=object)
    for i in np.flatnonzero(use_annotations.to_numpy()):
        keypoints[i] = annotations[images["path"].iloc[i]]
        statuses[i] = "ok" if present(keypoints[i]).any() else "no_detection"
    rest = ~use_annotations.to_numpy()
    if rest.any():
        found = estimates.set_index("sha256").loc[images.loc[rest, "sha256"]]
        keypoints[rest] = frame_keypoints(found)
        statuses[rest] = found["status"].to_numpy()
    return poses_frame(images["sha256"].tolist(), images["path"].tolist(), keypoints, list(sources), list(statuses))


def _evaluate(
    estimates: pd.DataFrame, annotations: dict[str, np.ndarray], alphas: tuple[float, ...]
) -> dict[str, Any] | None:
    """PCK and joint detection rate of the estimator on annotated images it could read."""
    scored = estimates[estimates["path"].isin(annotations.keys()) & (estimates["status"] != "failed")]
    if scored.empty:
        return None
    pred = torch.from_numpy(frame_keypoints(scored))
    truth = torch.from_numpy(np.stack([annotations[p] for p in scored["path"]]))
    out: dict[str, Any] = {"images": len(scored)}
    for alpha in alphas:
        per_joint, overall = pck(pred, truth, alpha)
        out[f"pck_{alpha:g}"] = {"overall": overall.item(), "per_joint": _per_joint(per_joint)}
    per_joint, overall = joint_detection_rate(pred, truth)
    out["joint_detection_rate"] = {"overall": overall.item(), "per_joint": _per_joint(per_joint)}
    return out


def _per_joint(values: torch.Tensor) -> dict[str, float]:
    return {name: float(v) for name, v in zip(JOINTS, values.tolist(), strict=True)}


def _finite(value: Any) -> Any:
    """NaN (nothing scored) becomes None so the JSON is strict and DVC and MLflow can read it."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
