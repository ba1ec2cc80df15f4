"""Print where the pipeline's results live and how to browse them."""

from __future__ import annotations

import argparse
import os

from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid where", description=__doc__).parse_args(argv)
    root = apply_environment()
    uri = os.environ["MLFLOW_TRACKING_URI"]
    plots = list((root / "reports").rglob("*.png"))
    metrics = list((root / "reports" / "metrics").rglob("*.json"))
    lines = [
        "",
        "Results of the pipeline",
        f"  project        {root}",
        f"  metrics        {root / 'reports' / 'metrics'}  ({len(metrics)} files)   ->  dvc metrics show",
        f"  plots          {root / 'reports'}  ({len(plots)} images)  ->  dvc plots show (dvc_plots/index.html)",
        f"  validation     {root / 'reports' / 'validation'}",
        f"  models         {root / 'models'}",
        f"  MLflow         {uri}   ->  .venv/bin/mlflow ui --backend-store-uri {uri}",
        "  lineage        .venv/bin/advreid audit <output path | MLflow run id>",
        f"  Prefect home   {os.environ['PREFECT_HOME']}",
        "",
    ]
    print("\n".join(lines))
    return 0
