"""The Prefect flow around `dvc repro`, and the prefect.yaml deployments with the Kubernetes GPU template."""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from flows import pipeline as pipeline_module

from advreid import pipeline_plan
from advreid.io import md5_file
from advreid.tracking import metric_keys

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "flows" / "k8s-gpu-base-job-template.json"
PYTHON = shlex.quote(sys.executable)

# Stage scripts of the tiny DVC project: a -> b, c independent. b logs a stage run through the project's
# tracking helper and writes a metrics file (numbers, a nested number, and a bool and a string that are
# not metrics).
STAGE_SCRIPTS = {
    "a.py": "from pathlib import Path\nPath('a.txt').write_text('alpha\\n')\n",
    "b.py": (
        "import json\n"
        "from pathlib import Path\n"
        "from advreid.tracking.mlflow_run import stage_run\n"
        "with stage_run(None, {'factor': 2}, root=Path.cwd()) as run:\n"
        "    Path('b.txt').write_text(Path('a.txt').read_text() + 'beta\\n')\n"
        "    metrics = {'score': 2.5, 'cmc': {'rank1': 0.75}, 'converged': True, 'note': 'x'}\n"
        "    Path('metrics.json').write_text(json.dumps(metrics))\n"
        "    run.log_metrics({'score': 2.5})\n"
    ),
    "c.py": "from pathlib import Path\nPath('c.txt').write_text('gamma\\n')\n",
    "m.py": "import json\njson.dump({'cmc': {'rank1': 0.75}, 'loss': 0.5}, open('m.json', 'w'))\n",
    "bad.py": (
        "import sys\n"
        "from pathlib import Path\n"
        "with open('attempts.log', 'a') as f:\n"
        "    f.write('attempt\\n')\n"
        "print('boom: custom failure 42', file=sys.stderr)\n"
        "sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 3)\n"
    ),
    # Killed by SIGKILL on its first attempt (as the OOM killer or a preempted node would), fine after.
    "flaky.py": (
        "import os, signal\n"
        "from pathlib import Path\n"
        "with open('attempts.log', 'a') as f:\n"
        "    f.write('attempt\\n')\n"
        "if not Path('killed.flag').exists():\n"
        "    Path('killed.flag').write_text('1')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "Path('flaky.txt').write_text('survived\\n')\n"
    ),
    # A slow stage that logs when it ran (outside its outs, which stay deterministic).
    "slow.py": (
        "import sys, time\n"
        "from pathlib import Path\n"
        "name, seconds = sys.argv[1], float(sys.argv[2])\n"
        "start = time.time()\n"
        "time.sleep(seconds)\n"
        "with open('times.log', 'a') as f:\n"
        "    f.write(f'{name} {start} {time.time()}\\n')\n"
        "Path(f'{name}.txt').write_text(name * 3 + Path('a.txt').read_text())\n"
    ),
}


def _stage(script: str, deps: list[str], outs: list[str], metrics: list[str] | None = None, args: str = "") -> dict:
    stage: dict = {"cmd": f"{PYTHON} {script} {args}".rstrip(), "deps": [script, *deps], "outs": outs}
    if metrics:
        stage["metrics"] = [{m: {"cache": False}} for m in metrics]
    return stage


def make_project(path: Path, stages: dict[str, dict]) -> Path:
    """A DVC project without git in ``path`` with the given ``dvc.yaml`` stages."""
    from dvc.repo import Repo

    path.mkdir(parents=True, exist_ok=True)
    Repo.init(os.fspath(path), no_scm=True).close()
    for name, text in STAGE_SCRIPTS.items():
        (path / name).write_text(text)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow and DVC's site cache into tmp_path; return the tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("ADVREID_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("ADVREID_ROOT", raising=False)
    return uri


def _mtimes(project: Path, names: list[str]) -> dict[str, int]:
    return {name: (project / name).stat().st_mtime_ns for name in names}


# --- planning -----------------------------------------------------------------------------------------


def test_plan_follows_dvc_graph_and_targets(tmp_path: Path, isolated_env: str) -> None:
    stages = {
        "b": _stage("b.py", ["a.txt"], ["b.txt"]),
        "a": _stage("a.py", [], ["a.txt"]),
        "c": _stage("c.py", [], ["c.txt"]),
        "d": {
            "foreach": ["x", "y"],
            "do": {"cmd": "echo ${item}", "deps": ["a.txt"], "outs": ["d_${item}.txt"]},  # planned, never run
        },
    }
    project = make_project(tmp_path / "proj", stages)

    plan = pipeline_plan.plan_stages(project)
    assert sorted(plan) == ["a", "b", "c", "d@x", "d@y"]
    for dependent in ("b", "d@x", "d@y"):  # every stage after the stage producing its dep
        assert plan.index("a") < plan.index(dependent)

    assert pipeline_plan.plan_stages(project, ["b"]) == ["a", "b"]
    assert pipeline_plan.plan_stages(project, ["d@y"]) == ["a", "d@y"]
    assert pipeline_plan.plan_stages(project, ["c"]) == ["c"]
    from dvc.stage.exceptions import StageNotFound

    with pytest.raises(StageNotFound, match="nope"):
        pipeline_plan.plan_stages(project, ["nope"])


# --- the flow ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flow_runs_stages_once_and_tracks_them(tmp_path: Path, isolated_env: str, prefect_api: str) -> None:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    stages = {
        "a": _stage("a.py", [], ["a.txt"]),
        "b": _stage("b.py", ["a.txt"], ["b.txt"], metrics=["metrics.json"]),
        "c": _stage("c.py", [], ["c.txt"]),
    }
    project = make_project(tmp_path / "proj", stages)

    first = pipeline_module.pipeline(project_dir=str(project))
    names = [r["stage"] for r in first["stages"]]
    assert sorted(names) == ["a", "b", "c"]
    assert names.index("a") < names.index("b")
    assert [r["status"] for r in first["stages"]] == ["ran"] * 3
    assert all(r["seconds"] > 0 for r in first["stages"])
    assert (project / "b.txt").read_text() == "alpha\nbeta\n"
    # Numbers only, nested keys joined with "."; the bool and the string are not metrics.
    assert first["metrics"] == {"metrics.json:score": 2.5, "metrics.json:cmc.rank1": 0.75}
    for name in names:
        assert any(line.split()[:2] == [name, "ran"] for line in first["summary"].splitlines())
    outputs = ["a.txt", "b.txt", "c.txt", "metrics.json", "dvc.lock"]
    before = _mtimes(project, outputs)

    second = pipeline_module.pipeline(project_dir=str(project))
    assert [r["stage"] for r in second["stages"]] == names
    assert [r["status"] for r in second["stages"]] == ["up-to-date"] * 3
    assert _mtimes(project, outputs) == before  # nothing re-ran, not even dvc.lock was rewritten
    assert second["metrics"] == first["metrics"]

    client = MlflowClient(tracking_uri=isolated_env)
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    # The headline metrics, and each stage's wall time as the summary shows it.
    walls = {f"seconds.{r['stage']}": r["seconds"] for r in first["stages"]}
    assert parent.data.metrics == {"metrics.json:score": 2.5, "metrics.json:cmc.rank1": 0.75, **walls}
    locked = download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="lineage/dvc.lock",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=isolated_env,
    )
    assert Path(locked).read_bytes() == (project / "dvc.lock").read_bytes()

    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [c.data.tags["advreid.stage"] for c in children] == ["b"]  # only b logs a stage run
    # log_parent_lock tagged the stage run with the md5 that dvc.lock records, i.e. the file's md5.
    assert children[0].data.tags["advreid.out.b.txt.md5"] == md5_file(project / "b.txt")

    second_parent = client.get_run(second["parent_run_id"])
    assert second_parent.info.status == "FINISHED"
    assert client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{second_parent.info.run_id}'") == []


@pytest.mark.slow
def test_failing_stage_fails_flow_with_stderr_after_retries(
    tmp_path: Path, isolated_env: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mlflow import MlflowClient

    project = make_project(tmp_path / "proj", {"bad": _stage("bad.py", [], ["never.txt"])})
    # One retry without delay keeps the test quick; the count of attempts proves the retry happened.
    monkeypatch.setattr(pipeline_module, "RETRIES", 1)
    monkeypatch.setattr(pipeline_module, "RETRY_DELAY_SECONDS", 0)

    with pytest.raises(pipeline_module.StageFailed, match="boom: custom failure 42") as info:
        pipeline_module.pipeline(project_dir=str(project))
    assert "'bad'" in str(info.value) and "exit code 3" in str(info.value)
    assert (project / "attempts.log").read_text().splitlines() == ["attempt", "attempt"]
    assert not (project / "dvc.lock").exists()

    summary = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["bad", "failed"] in summary

    client = MlflowClient(tracking_uri=isolated_env)
    (parent,) = client.search_runs([client.get_experiment_by_name("advreid").experiment_id])
    assert parent.info.status == "FAILED"
    assert parent.data.params == {"targets": "all", "force": "False", "max_parallel": "1", "stage_runner": "local"}


@pytest.mark.slow
def test_bad_input_is_not_retried_and_a_killed_stage_is(
    tmp_path: Path, isolated_env: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "RETRIES", 2)
    monkeypatch.setattr(pipeline_module, "RETRY_DELAY_SECONDS", 0)
    # Exit code 2 (advreid.errors.EXIT_BAD_INPUT): deterministic, one attempt only.
    project = make_project(tmp_path / "bad-input", {"bad": _stage("bad.py", [], ["never.txt"], args="2")})
    with pytest.raises(pipeline_module.StageFailed, match="exit code 2"):
        pipeline_module.pipeline(project_dir=str(project))
    assert (project / "attempts.log").read_text().splitlines() == ["attempt"]

    # SIGKILL on the first attempt: retried, and the flow succeeds.
    project = make_project(tmp_path / "killed", {"flaky": _stage("flaky.py", [], ["flaky.txt"])})
    result = pipeline_module.pipeline(project_dir=str(project))
    assert [r["status"] for r in result["stages"]] == ["ran"]
    assert (project / "attempts.log").read_text().splitlines() == ["attempt", "attempt"]
    assert (project / "flaky.txt").read_text() == "survived\n"
    assert "flaky" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def test_retry_rule_and_slot_environment() -> None:
    assert not pipeline_module.should_retry(2)
    assert all(pipeline_module.should_retry(code) for code in (1, 3, -9, 137, None))
    two_gpus = [pipeline_module.slot_environment(slot, 2, ["0", "1"], cpus=8) for slot in range(3)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in two_gpus] == ["0", "1", "0"]
    assert {env["OMP_NUM_THREADS"] for env in two_gpus} == {"4"}
    cpu = pipeline_module.slot_environment(0, 3, [], cpus=2)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and cpu["OMP_NUM_THREADS"] == cpu["MKL_NUM_THREADS"] == "1"


def test_metric_names_of_foreach_stages_are_valid_for_mlflow() -> None:
    from mlflow.utils.validation import _validate_metric_name

    name = metric_keys.metric_name("seconds.ingest@demo_b")
    assert name == "seconds.ingest_demo_b"
    _validate_metric_name(name)  # raises on a name MLflow would refuse


def test_up_to_date_pipeline_starts_no_flow(
    tmp_path: Path, isolated_env: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    project = make_project(tmp_path / "proj", {"a": _stage("a.py", [], ["a.txt"]), "c": _stage("c.py", [], ["c.txt"])})
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, check=True)
    handed: list[pipeline_plan.Plan] = []

    def no_flow(plan, **kwargs):
        handed.append(plan)
        raise AssertionError("the Prefect flow started for an up-to-date pipeline")

    monkeypatch.setattr(pipeline_module, "planned_pipeline", no_flow)
    assert pipeline_module.main(["--project-dir", str(project)]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["a", "up-to-date"] in rows and ["c", "up-to-date"] in rows
    (project / "c.py").write_text((project / "c.py").read_text() + "# changed\n")  # now c is stale
    with pytest.raises(AssertionError, match="flow started"):
        pipeline_module.main(["--project-dir", str(project)])
    # The flow gets the command line's one status pass, not a second one of its own.
    assert [(plan.stages, plan.stale) for plan in handed] == [(["a", "c"], {"c"})]


# Runs flows/pipeline.py as `python flows/pipeline.py` does, then writes its exit code and which of the
# heavy packages it imported to the file named last.
NOOP_PROBE = """
import json, runpy, sys
flow_file, project, report = sys.argv[1:]
sys.argv = [flow_file, "--project-dir", project]
code = None
try:
    runpy.run_path(flow_file, run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
imported = sorted({name.split(".")[0] for name in sys.modules} & {"prefect", "mlflow"})
with open(report, "w") as f:
    json.dump({"exit": code, "imported": imported}, f)
"""


def test_no_op_command_line_imports_neither_prefect_nor_mlflow(tmp_path: Path, isolated_env: str) -> None:
    stages = {
        "a": _stage("a.py", [], ["a.txt"]),
        "m": _stage("m.py", ["a.txt"], [], metrics=["m.json"]),
        "c": _stage("c.py", [], ["c.txt"]),
    }
    project = make_project(tmp_path / "proj", stages)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, check=True)
    prefect_home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    report = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, "-c", NOOP_PROBE, str(ROOT / "flows" / "pipeline.py"), str(project), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text()) == {"exit": 0, "imported": []}
    assert not prefect_home.exists()  # no Prefect server, not even its home directory
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert rows[0] == ["stage", "status", "seconds"]
    assert {row[0]: row[1:] for row in rows[1:4]} == dict.fromkeys("amc", ["up-to-date", "0.00"])
    # The headline metric (default pattern *.rank1) from the metrics file; `loss` is not a headline.
    assert ["m.json:cmc.rank1", "0.75"] in rows and not any(row[0] == "m.json:loss" for row in rows if row)


@pytest.mark.slow
def test_stale_command_line_runs_the_flow_on_its_plan(
    tmp_path: Path, isolated_env: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    project = make_project(tmp_path / "proj", {"a": _stage("a.py", [], ["a.txt"]), "c": _stage("c.py", [], ["c.txt"])})
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "a"], cwd=project, check=True)  # c is stale

    def second_status(*args, **kwargs):
        raise AssertionError("the flow asked DVC for the plan again")

    monkeypatch.setattr(pipeline_module, "build_plan", second_status)  # the flow's name; the CLI's is unpatched
    assert pipeline_module.main(["--project-dir", str(project)]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["a", "up-to-date"] in rows and ["c", "ran"] in rows
    assert (project / "c.txt").read_text() == "gamma\n"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=project)
    assert status.returncode == 0  # DVC itself sees every stage up to date


def test_startup_timeout_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def timed_out(**kwargs):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(pipeline_module, "pipeline", timed_out)
    assert pipeline_module.main(["--project-dir", str(ROOT), "--force"]) == 1  # --force: straight to the flow
    err = capsys.readouterr().err
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in err and "prefect server start --host 127.0.0.1" in err


def _parallel_stages() -> dict[str, dict]:
    return {
        "a": _stage("a.py", [], ["a.txt"]),
        # 6 s each: two stage launches on a loaded 2-core machine can lie seconds apart
        "x": _stage("slow.py", ["a.txt"], ["x.txt"], args="x 6"),
        "y": _stage("slow.py", ["a.txt"], ["y.txt"], args="y 6"),
        "b": _stage("b.py", ["a.txt"], ["b.txt"], metrics=["metrics.json"]),
    }


@pytest.mark.slow
def test_parallel_stages_overlap_and_end_as_sequential_repro(
    tmp_path: Path, isolated_env: str, prefect_api: str
) -> None:
    sequential = make_project(tmp_path / "sequential", _parallel_stages())
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=sequential, check=True)
    parallel = make_project(tmp_path / "parallel", _parallel_stages())

    result = pipeline_module.pipeline(project_dir=str(parallel), max_parallel=2)
    assert {r["stage"]: r["status"] for r in result["stages"]} == dict.fromkeys("axyb", "ran")
    spans = {name: (float(t0), float(t1)) for name, t0, t1 in map(str.split, (parallel / "times.log").open())}
    assert spans["x"][0] < spans["y"][1] and spans["y"][0] < spans["x"][1], f"x and y did not overlap: {spans}"
    # dvc.lock byte for byte (entries in plan order, as `dvc repro` writes them) and every output.
    assert (parallel / "dvc.lock").read_text() == (sequential / "dvc.lock").read_text()
    for out in ("a.txt", "x.txt", "y.txt", "b.txt", "metrics.json"):
        assert (parallel / out).read_bytes() == (sequential / out).read_bytes(), out
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=parallel)
    assert status.returncode == 0  # DVC itself sees every stage up to date


@pytest.mark.slow
def test_failure_in_one_parallel_stage_stops_the_others(
    tmp_path: Path, isolated_env: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "RETRIES", 0)
    stages = {
        "a": _stage("a.py", [], ["a.txt"]),
        "x": _stage("slow.py", ["a.txt"], ["x.txt"], args="x 120"),
        "bad": _stage("bad.py", ["a.txt"], ["never.txt"]),
    }
    project = make_project(tmp_path / "proj", stages)
    start = time.perf_counter()
    with pytest.raises(pipeline_module.StageFailed, match="boom: custom failure 42"):
        pipeline_module.pipeline(project_dir=str(project), max_parallel=2)
    assert time.perf_counter() - start < 60  # x was stopped, not waited for
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(locked) == {"a"}  # neither the failed nor the stopped stage is recorded
    assert not (project / "x.txt").exists() and not (project / "times.log").exists()


# --- Kubernetes GPU base job template -------------------------------------------------------------


def _prefect_default_kubernetes_template() -> dict:
    """The default base job template of prefect-kubernetes, as Prefect's server ships it."""
    views = importlib.resources.files("prefect.server.api") / "collections_data/views"
    metadata = json.loads((views / "aggregate-worker-metadata.json").read_text())
    return metadata["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]


def _assert_extends(ours: object, base: object, where: str = "template") -> None:
    """``ours`` keeps every key and value of ``base`` (it may add keys to mappings)."""
    if isinstance(base, dict):
        assert isinstance(ours, dict), f"{where} is not a mapping"
        for key, value in base.items():
            assert key in ours, f"{where}.{key} of the default template is missing"
            _assert_extends(ours[key], value, f"{where}.{key}")
    elif isinstance(base, list):
        assert isinstance(ours, list) and len(ours) == len(base), f"{where} differs in length"
        for i, (mine, theirs) in enumerate(zip(ours, base, strict=True)):
            _assert_extends(mine, theirs, f"{where}[{i}]")
    else:
        assert ours == base, f"{where}: {ours!r} != default {base!r}"


def test_gpu_template_extends_default_and_references_gpu_count() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    template = json.loads(TEMPLATE.read_text())
    _assert_extends(template, _prefect_default_kubernetes_template())

    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    gpu_count = template["variables"]["properties"]["gpu_count"]
    assert gpu_count["type"] == "integer" and gpu_count["default"] == 1

    # Prefect's own check that every placeholder is a declared variable: passes, and fails without gpu_count.
    validate_base_job_template(template)
    undeclared = copy.deepcopy(template)
    del undeclared["variables"]["properties"]["gpu_count"]
    with pytest.raises(ValueError, match="gpu_count"):
        validate_base_job_template(undeclared)

    # Rendered the way a worker renders it: the limit gets the number, unset placeholders disappear.
    manifest = apply_values(template["job_configuration"]["job_manifest"], {"gpu_count": 2, "image": "img:1"})
    rendered = manifest["spec"]["template"]["spec"]["containers"][0]
    assert rendered["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert rendered["image"] == "img:1"
    assert "volumeMounts" not in rendered and "volumes" not in manifest["spec"]["template"]["spec"]
    # The fan-out deployment's flow pod: the shared checkout mounted, no GPU.
    volumes = [{"name": "project", "persistentVolumeClaim": {"claimName": "pvc"}}]
    mounts = [{"name": "project", "mountPath": "/srv/advreid"}]
    manifest = apply_values(
        template["job_configuration"]["job_manifest"], {"gpu_count": 0, "volumes": volumes, "volume_mounts": mounts}
    )
    assert manifest["spec"]["template"]["spec"]["volumes"] == volumes
    rendered = manifest["spec"]["template"]["spec"]["containers"][0]
    assert rendered["volumeMounts"] == mounts and rendered["resources"]["limits"] == {"nvidia.com/gpu": 0}


# --- prefect.yaml deployments ----------------------------------------------------------------------


@pytest.mark.slow
def test_prefect_yaml_deploys_offline(tmp_path: Path, prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    # The pools, as `prefect work-pool create` (documented in prefect.yaml) makes them; the server
    # validates the base job template.
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="advreid-process", type="process"))
        template = json.loads(TEMPLATE.read_text())
        client.create_work_pool(WorkPoolCreate(name="advreid-k8s-gpu", type="kubernetes", base_job_template=template))

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "ADVREID_ROOT": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"prefect deploy --all failed:\n{proc.stdout}\n{proc.stderr}"

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("advreid-pipeline/advreid-nightly")
        gpu = client.read_deployment_by_name("advreid-pipeline/advreid-gpu")
        fanout = client.read_deployment_by_name("advreid-pipeline/advreid-k8s-fanout")

    assert nightly.entrypoint == gpu.entrypoint == fanout.entrypoint == "flows/pipeline.py:pipeline"
    parameters = {"project_dir", "targets", "force", "max_parallel", "stage_runner", "k8s"}
    assert set(nightly.parameter_openapi_schema["properties"]) == parameters
    assert nightly.work_pool_name == "advreid-process"
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
    # {{ $ADVREID_ROOT }} was filled from the environment of `prefect deploy`.
    assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

    assert gpu.work_pool_name == "advreid-k8s-gpu"
    assert gpu.schedules == []
    # One GPU per parallel stage slot.
    assert gpu.job_variables["gpu_count"] == gpu.parameters["max_parallel"] == 2
    assert gpu.job_variables["namespace"] == "advreid" and gpu.job_variables["image"]
    assert gpu.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/advreid"}}]

    # Fan-out: a flow pod without a GPU, one GPU Job per stage, all on the same claim at the same path.
    assert fanout.work_pool_name == "advreid-k8s-gpu" and fanout.schedules == []
    assert fanout.parameters["stage_runner"] == "k8s" and fanout.job_variables["gpu_count"] == 0
    stage_jobs, pod = fanout.parameters["k8s"], fanout.job_variables
    assert (stage_jobs["image"], stage_jobs["namespace"]) == (pod["image"], pod["namespace"])
    (volume,) = pod["volumes"]
    (mount,) = pod["volume_mounts"]
    assert volume["persistentVolumeClaim"]["claimName"] == stage_jobs["claim"] and mount["name"] == volume["name"]
    (pull,) = fanout.pull_steps
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == mount["mountPath"]
    assert pod["env"]["ADVREID_ROOT"] == mount["mountPath"]


def test_headline_patterns_select_by_file_and_key() -> None:
    metrics = {
        "reports/metrics/reid/eval_a.json:demo_b.rank1": 0.1,
        "reports/metrics/attack_report.json:transfer.a-b.pgd.rank1": 0.2,
        "reports/metrics/pose/x.json:estimator.detection_rate": 0.9,
    }
    chosen = pipeline_plan.headline(metrics, ["reports/metrics/reid/eval_*.json:*.rank1", "*.detection_rate"])
    assert chosen == {
        "reports/metrics/reid/eval_a.json:demo_b.rank1": 0.1,
        "reports/metrics/pose/x.json:estimator.detection_rate": 0.9,
    }
