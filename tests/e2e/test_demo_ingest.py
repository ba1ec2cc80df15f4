"""`dvc repro` of the demo data and ingest stages in a copy of the project, then the lineage audit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["demo"].update(num_train_ids=3, num_test_ids=3, cameras=2, images_per_camera=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("ADVREID_ROOT", None)
    _run(["git", "init", "-q"], root, env)
    _run([BIN / "dvc", "init", "-q"], root, env)
    targets = ["ingest@demo_a", "ingest@demo_b", "ingest@digits"]
    first = _run([BIN / "dvc", "repro", *targets], root, env)
    return root, env, first, targets


@pytest.mark.slow
def test_repro_ingests_the_demo_and_a_second_repro_runs_nothing(demo_project):
    root, env, first, targets = demo_project
    for name in ("demo_a", "demo_b", "digits"):
        info = json.loads((root / "data" / "processed" / name / "dataset.json").read_text())
        assert info["root"] == f"data/raw/{name}"
        assert json.loads((root / "reports" / "validation" / f"{name}.json").read_text())["success"]
    a = json.loads((root / "data" / "processed" / "demo_a" / "dataset.json").read_text())
    assert a["splits"]["train"]["rows"] == 3 * 2 * 2  # ids x cameras x images
    assert "Running stage 'ingest@demo_a'" in first.stdout
    again = _run([BIN / "dvc", "repro", *targets], root, env)
    assert "Running stage" not in again.stdout


@pytest.mark.slow
def test_audit_verifies_then_detects_a_changed_raw_file(demo_project):
    root, env, _, _ = demo_project
    ok = _run([BIN / "advreid", "audit", "data/processed/demo_a", "--json"], root, env)
    links = json.loads(ok.stdout)
    assert links["ok"] is True
    victim = sorted((root / "data" / "raw" / "demo_a" / "query").glob("*.jpg"))[0]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-10] + bytes(10))
        bad = _run([BIN / "advreid", "audit", "data/processed/demo_a"], root, env, check=False)
        assert bad.returncode == 1
        assert victim.name in bad.stdout
        assert "changed" in bad.stdout
    finally:
        victim.write_bytes(original)
