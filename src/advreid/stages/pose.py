"""Stage ``pose@<dataset>``: 18 OpenPose-order keypoints for every image of a dataset's manifests.

Keypoints come from the dataset's own annotations (``<raw root>/keypoints.json``) or from MediaPipe Pose
(``pose.source``: ``annotations``, ``estimator`` or ``auto`` = annotations where an image has them, else
the estimator). Where both exist the estimator is scored against the annotations (PCK, detection rate).

Outputs (each written atomically):
- ``data/processed/pose/<dataset>.parquet``: one row per image sha256, the keypoints IPES-GAN uses
  (layout in :mod:`advreid.pose.keypoints`: sha256, path, source, status, x_0..x_17, y_0..y_17, c_0..c_17
  in original pixels; a missing joint has c = 0 and x = y = NaN);
- ``data/processed/pose/<dataset>.estimates.parquet``: every MediaPipe estimate made so far, with its
  settings as parquet metadata. DVC keeps it between runs (``persist: true``) so a grown dataset only
  has its new sha256s estimated; a change of settings discards it;
- ``reports/pose/<dataset>_report.json`` (counts, failed files and their errors),
  ``reports/pose/<dataset>_skeletons.png``, ``reports/pose/<dataset>_pck.png`` and
  ``reports/metrics/pose/<dataset>.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from functools import partial

from advreid.params import ParamsError, build, load_params
from advreid.pose.estimator import estimate_files
from advreid.pose.extraction import PoseParams, run_pose
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid pose", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a key of pose.datasets in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()  # also sets GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL for the workers
    params = build(PoseParams, load_params("pose", root / "params.yaml"), "pose")
    if args.dataset not in params.datasets:
        raise ParamsError(f"params.yaml: pose.datasets has no '{args.dataset}'; known: {sorted(params.datasets)}")
    settings = params.estimator_settings()

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    processed = root / "data" / "processed" / args.dataset
    manifests = {f"{args.dataset}/{p.stem}": p for p in sorted(processed.glob("*.parquet"))}
    estimate = partial(estimate_files, settings=settings, workers=params.workers, desc=f"pose {args.dataset}")
    with stage_run(f"pose@{args.dataset}", asdict(params), manifests=manifests) as run:
        out = run_pose(args.dataset, root, params, estimate)
        run.log_metrics({**numeric_leaves(out.metrics, "pose."), **numeric_leaves(out.work, "pose.run.")})
        for path in (*out.figures, out.report, out.metrics_file):
            run.log_artifact(path, "pose")
    m = out.metrics
    print(f"pose@{args.dataset}: {m['images']} images, sources {m['sources']}, status {m['status']} -> {out.table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
