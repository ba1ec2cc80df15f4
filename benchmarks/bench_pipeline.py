"""Orchestration costs: `dvc repro` no-op time, and the Prefect flow's overhead over plain `dvc repro`.

Both run on a copy of the project with a shrunk demo, on the demo_data + ingest stages, after a first
repro, so every stage is up to date and only the orchestration is measured.
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


def _timed(args: list, cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def run() -> list[Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
            shutil.copy(REPO / name, root / name)
        shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
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
        subprocess.run([BIN / "dvc", "repro", *TARGETS], cwd=root, check=True, env=env, capture_output=True)
        noop = min(_timed([BIN / "dvc", "repro", *TARGETS], root, env) for _ in range(3))
        flow_cmd = [sys.executable, "flows/pipeline.py", "--targets", *TARGETS]
        first_flow = _timed(flow_cmd, root, env)  # includes Prefect's first ephemeral-server start
        flow = min(_timed(flow_cmd, root, env) for _ in range(2))
    stages = len(TARGETS) + 1
    return [
        Measurement("dvc repro no-op", noop, "s", f"{stages} stages up to date"),
        Measurement("flow, first run", first_flow, "s", "new PREFECT_HOME: ephemeral server start + MLflow parent run"),
        Measurement("flow, warm", flow, "s", "process start, Prefect, MLflow parent run, DVC status per stage"),
        Measurement("flow overhead", flow - noop, "s", "warm flow minus plain dvc repro no-op"),
        Measurement("flow / dvc repro", flow / noop, "x", "same up-to-date stages"),
    ]
