"""Stage ``ingest@<dataset>``: read a dataset from its on-disk layout, validate, write parquet manifests.

Outputs (atomically, all or nothing): ``data/processed/<dataset>/<split>.parquet`` (+ ``<split>.npy`` pixel
arrays for array formats) and ``dataset.json``; ``reports/validation/<dataset>.{json,md}`` (written whether
validation passes or fails); ``reports/metrics/ingest/<dataset>.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from advreid.data.processed import summarise, write_dataset
from advreid.data.registry import read_dataset, rules_for
from advreid.io import write_json
from advreid.params import ParamsError, build, load_params
from advreid.settings import apply_environment


@dataclass(frozen=True)
class IngestParams:
    format: str
    root: str
    domain: str | None = None
    options: dict = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid ingest", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a key of ingest.datasets in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    datasets = load_params("ingest.datasets", root / "params.yaml")
    if args.dataset not in datasets:
        raise ParamsError(f"params.yaml: ingest.datasets has no '{args.dataset}'; known: {sorted(datasets)}")
    params = build(IngestParams, datasets[args.dataset], f"ingest.datasets.{args.dataset}")

    from advreid.data.validation import check
    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    out_dir = root / "data" / "processed" / args.dataset
    report_dir = root / "reports" / "validation"
    with stage_run(f"ingest@{args.dataset}", asdict(params)) as run:
        started = time.perf_counter()
        raw = read_dataset(
            params.format, _resolve(root, params.root), name=args.dataset, domain=params.domain, **params.options
        )
        seconds = time.perf_counter() - started
        frame = pd.concat(list(raw.frames.values()), ignore_index=True)
        try:
            report = check(frame, rules_for(params.format, raw), args.dataset, report_dir)
        finally:
            for suffix in ("json", "md"):
                if (report_dir / f"{args.dataset}.{suffix}").exists():
                    run.log_artifact(report_dir / f"{args.dataset}.{suffix}", "validation")
        manifests = write_dataset(raw, out_dir, params.root)
        metrics = summarise(raw, report.success)
        write_json(root / "reports" / "metrics" / "ingest" / f"{args.dataset}.json", metrics)
        throughput = len(frame) / max(seconds, 1e-9)
        run.log_metrics({**numeric_leaves(metrics, "ingest."), "ingest.images_per_second": throughput})
        run.set_tags({f"advreid.manifest.{args.dataset}/{split}.sha256": h for split, h in manifests.items()})
    print(f"ingest@{args.dataset}: {len(frame)} images, splits {metrics['rows']}, validation passed -> {out_dir}")
    return 0


def _resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p
