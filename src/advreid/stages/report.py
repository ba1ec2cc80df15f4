"""Stage ``report``: ``reports/index.html``, one self-contained page: the claims with their verdicts and intervals,
the robustness matrix per task (heatmap + numbers linked to their MLflow cell runs, lineage on hover), each
chapter's tables and the figures of ``robustness.report``, embedded.

Output: ``reports/index.html`` (also logged to MLflow).
"""

from __future__ import annotations

import argparse
import json
import sys

from advreid.io import md5_file, write_text
from advreid.params import build, load_params
from advreid.robustness.settings import RobustnessParams
from advreid.settings import apply_environment

DEFAULT_UI = "http://127.0.0.1:5000"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid report", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = apply_environment()
    params = build(RobustnessParams, load_params("robustness", root / "params.yaml"), "robustness").check()
    inputs = {name: root / "reports" / name for name in ("claims.json", "metrics/robustness_matrix.json")}
    for path in inputs.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the robustness_matrix and claims stages first")

    from advreid.robustness.html import render
    from advreid.tracking.lineage import git_state
    from advreid.tracking.mlflow_run import experiment_id, stage_run

    tables = {}
    for title, path in params.report.get("tables", {}).items():
        if not (root / path).is_file():
            raise FileNotFoundError(f"robustness.report.tables.{title}: {root / path} does not exist")
        tables[title] = (root / path).read_text()
    ui = params.report.get("mlflow_ui", DEFAULT_UI)
    with stage_run("report", {"mlflow_ui": ui, "tables": list(tables)}) as run:
        page = render(
            claims=json.loads(inputs["claims.json"].read_text())["claims"],
            matrix=json.loads(inputs["metrics/robustness_matrix.json"].read_text()),
            heatmaps={task: root / "reports" / "matrix" / f"{task}.png" for task in params.heatmaps},
            tables=tables,
            figures={title: root / path for title, path in params.report.get("figures", {}).items()},
            commit=git_state(root)[0],
            lock_md5=md5_file(root / "dvc.lock") if (root / "dvc.lock").is_file() else "-",
            mlflow_ui=ui,
            experiment=experiment_id(run.client),
        )
        out = root / "reports" / "index.html"
        write_text(out, page)
        run.log_artifact(out, "report")
    print(f"report: {out} ({len(page) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
