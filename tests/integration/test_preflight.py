"""`advreid check`: every stage's params built and checked from the real params.yaml; a typo stops the flow
before DVC removes anything (a git-tracked `cache: false` report included)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from flows import pipeline as pipeline_module

from advreid import preflight

ROOT = Path(__file__).resolve().parents[2]
DEMO_SOURCES = ["src/advreid/data/synthetic.py", "src/advreid/pose/keypoints.py", "src/advreid/stages/demo_data.py"]


def _copy_project(path: Path, stages: dict | None = None) -> Path:
    path.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    if stages is None:
        shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    else:
        (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=path, check=True)
    return path


def _edit(path: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_real_params_pass_and_a_typo_names_the_key(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "proj")
    commands = preflight.stage_commands(project)
    # Every foreach entry is a stage of its own, and every advreid subcommand of dvc.yaml has a checker.
    assert {"train_reid@small_cnn", "attack@small_cnn", "ingest@demo_a"} <= set(commands)
    assert preflight.check_project(project) == {}

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["reid"]["models"]["small_cnn"]["train"]["learning_rte"] = 0.1  # the typo
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    errors = preflight.check_project(project)
    # defense_seed@<k> and attack_seed@<k> retrain small_cnn with these settings: they fail too
    assert set(errors) == {"train_reid@small_cnn", "defense_seed@1", "defense_seed@2", "attack_seed@1", "attack_seed@2"}
    for stage in errors:
        assert "reid.models.small_cnn.train" in errors[stage] and "learning_rte" in errors[stage]

    env = {**os.environ, "ADVREID_ROOT": str(project)}
    proc = subprocess.run(
        [sys.executable, "-m", "advreid", "check"], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "train_reid@small_cnn" in proc.stderr and "learning_rte" in proc.stderr
    assert "Traceback" not in proc.stderr


def _digest(project: Path) -> dict[str, str]:
    files = [p for p in sorted(project.rglob("*")) if p.is_file() and ".dvc" not in p.relative_to(project).parts]
    return {p.relative_to(project).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_typo_in_params_leaves_every_output_untouched(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.delenv("ADVREID_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("ADVREID_ROOT", raising=False)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["demo_data"]
    project = _copy_project(tmp_path / "proj", {"demo_data": stage})
    for source in DEMO_SOURCES:
        (project / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, project / source)
    params = project / "params.yaml"
    for key, value in {"num_train_ids": 2, "num_test_ids": 2, "cameras": 2, "images_per_camera": 2}.items():
        _edit(params, "demo", key, value)
    # The venv's `advreid` first on PATH, as advreid.settings.apply_environment puts it for the flow.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "ADVREID_ROOT": str(project), "PATH": path}
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, env=env, check=True)
    report = project / "reports/demo/samples.png"  # cache: false: `dvc checkout` could not bring it back
    assert report.is_file()
    before = _digest(project)

    _edit(params, "demo", "num_train_idz", 3)  # the typo: demo_data is now stale
    before["params.yaml"] = hashlib.sha256(params.read_bytes()).hexdigest()
    monkeypatch.chdir(project)
    assert pipeline_module.main(["--project-dir", str(project)]) == 2
    assert _digest(project) == before  # dvc.lock, the raw data and the report, byte for byte
