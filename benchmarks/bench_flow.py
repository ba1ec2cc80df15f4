"""The flow's cost: no-op (everything up to date) side by side with `dvc repro`'s, and each stage's wall
time as the flow's summary reports it, with one and with two stages at once.

On a copy of the project with a shrunk demo, on the demo_data + ingest stages (three independent ingests
after demo_data, so two slots can overlap them). Ratios come from one run on one machine. The no-op pair is
the flow's goal: an up-to-date pipeline through ``python flows/pipeline.py`` within 3 s of ``dvc repro``'s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .common import Measurement

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = ["ingest@demo_a", "ingest@demo_b", "ingest@digits"]
NOOP_REPEATS = 3


def _copy_project(root: Path) -> dict[str, str]:
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("src", "flows"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["demo"].update(num_train_ids=3, num_test_ids=3, cameras=2, images_per_camera=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "ADVREID_ROOT": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PREFECT_HOME": str(root / ".prefect"),
    }
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=root, check=True, env=env)
    return env


def _timed(args: list, cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, proc.stdout


def _stage_seconds(summary: str) -> dict[str, float]:
    """stage -> seconds from the flow's summary table (``stage  status  seconds``)."""
    rows = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("ran", "restored", "up-to-date"):
            rows[parts[0]] = float(parts[2])
    return rows


def run() -> list[Measurement]:
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = _copy_project(root)
        flow = [sys.executable, "flows/pipeline.py", "--targets", *TARGETS]
        for parallel in (1, 2):
            wall, out = _timed([*flow, "--force", "--max-parallel", str(parallel)], root, env)
            stages = _stage_seconds(out)
            results.append(Measurement(f"flow --force, {parallel} at once", wall, "s", f"{len(stages)} stages"))
            results += [
                Measurement(f"  {stage} ({parallel} at once)", s, "s", "flow summary") for stage, s in stages.items()
            ]
        # Side by side, alternating, so that a load spike on a shared machine hits both; best of each.
        dvc_noop, flow_noop = float("inf"), float("inf")
        for _ in range(NOOP_REPEATS):
            dvc_noop = min(dvc_noop, _timed([BIN / "dvc", "repro", *TARGETS], root, env)[0])
            seconds, out = _timed(flow, root, env)
            if set(_stage_seconds(out)) != {"demo_data", *TARGETS}:
                raise RuntimeError(f"the flow's no-op summary does not list every planned stage:\n{out}")
            flow_noop = min(flow_noop, seconds)
    results += [
        Measurement("dvc repro no-op", dvc_noop, "s", f"{len(TARGETS) + 1} stages up to date"),
        Measurement("flow no-op", flow_noop, "s", "one DVC status for the plan; no Prefect, MLflow or stage process"),
        Measurement("flow no-op - dvc repro no-op", flow_noop - dvc_noop, "s", "goal <= 3 s"),
    ]
    return results
