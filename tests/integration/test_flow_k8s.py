"""The flow's Kubernetes stage runner (``--stage-runner k8s``), against a fake ``kubectl`` on PATH.

The fake records every call and, for ``apply``, runs the Job's container command here (in its working
directory, with its env) and keeps the exit code and log that ``get`` and ``logs`` then report, as a cluster
whose pods share the project directory would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from flows import k8s_jobs
from flows import pipeline as pipeline_module

from tests.integration.test_flow import _parallel_stages, _stage, make_project
from tests.integration.test_flow import isolated_env as isolated_env  # the fixture, for the tests below

FAKE_KUBECTL = """\
import json, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_KUBECTL_STATE"])
args = sys.argv[1:]
stdin = sys.stdin.read() if args[:1] == ["apply"] else ""
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps({"argv": args, "stdin": stdin}) + "\\n")

def job(name):
    path = state / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None

if args[0] == "apply":
    manifest = json.loads(stdin)
    name = manifest["metadata"]["name"]
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    if os.environ.get("FAKE_KUBECTL_PENDING"):  # never scheduled: no status ever
        sys.exit(0)
    # Only what a pod would have: the image's PATH (and this checkout's sources), plus the Job's env.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "PYTHONPATH") if key in os.environ}
    env.update({e["name"]: e["value"] for e in container["env"]})
    proc = subprocess.run(container["command"], cwd=container["workingDir"], env=env, capture_output=True, text=True)
    (state / f"{name}.json").write_text(json.dumps({"exit": proc.returncode, "log": proc.stdout + proc.stderr}))
elif args[:2] == ["get", "job"]:
    done = job(args[2])
    kind = None if done is None else "Complete" if done["exit"] == 0 else "Failed"
    conditions = [] if kind is None else [{"type": kind, "status": "True", "reason": "Fake" + kind}]
    print(json.dumps({"status": {"conditions": conditions}}))
elif args[:2] == ["get", "pods"]:
    done = job(args[args.index("-l") + 1].split("=", 1)[1])
    state_ = {"terminated": {"exitCode": done["exit"]}}
    print(json.dumps({"items": [{"status": {"containerStatuses": [{"name": "stage", "state": state_}]}}]}))
elif args[0] == "logs":
    sys.stdout.write(job(args[1].split("/", 1)[1])["log"])
elif args[0] != "delete":
    sys.exit(f"fake kubectl: unexpected {args}")
"""

DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``kubectl`` first on PATH; returns the directory where it keeps its state and ``calls.jsonl``."""
    bindir, state = tmp_path / "bin", tmp_path / "kubectl-state"
    bindir.mkdir()
    state.mkdir()
    script = bindir / "kubectl"
    script.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_STATE", str(state))
    return state


def _calls(state: Path) -> list[dict]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _applied(state: Path) -> list[dict]:
    return [json.loads(call["stdin"]) for call in _calls(state) if call["argv"][0] == "apply"]


def _settings(**overrides) -> k8s_jobs.JobSettings:
    settings = k8s_jobs.job_settings({}, "k8s", {"poll_seconds": 0.05, **overrides}, Path("params.yaml"))
    assert settings is not None
    return settings


# --- settings and manifest -------------------------------------------------------------------------


def test_settings_come_from_params_with_overrides_and_name_a_bad_key(kubectl: Path) -> None:
    params = {"stage_runner": "k8s", "k8s": {"image": "reg/advreid:1", "gpus": 2, "claim": "c1"}}
    settings = k8s_jobs.job_settings(params, None, {"claim": "c2"}, Path("p.yaml"))
    assert (settings.image, settings.gpus, settings.claim, settings.namespace) == ("reg/advreid:1", 2, "c2", "advreid")
    assert k8s_jobs.job_settings(params, "local", None, Path("p.yaml")) is None  # the flow's choice wins
    assert k8s_jobs.job_settings({}, None, None, Path("p.yaml")) is None  # local by default

    with pytest.raises(ValueError, match=r"p.yaml: pipeline.stage_runner must be one of .*'slurm'"):
        k8s_jobs.job_settings({"stage_runner": "slurm"}, None, None, Path("p.yaml"))
    with pytest.raises(ValueError, match=r"p.yaml: pipeline.k8s.gpu is not a setting"):
        k8s_jobs.job_settings({"k8s": {"gpu": 1}}, "k8s", None, Path("p.yaml"))
    for key, value in (("gpus", -1), ("gpus", True), ("cpus", 0), ("poll_seconds", 0), ("image", 3),
                       ("cpu_only", "claims"), ("cpu_only", [1])):  # fmt: skip
        with pytest.raises(ValueError, match=rf"pipeline.k8s.{key} must be"):
            k8s_jobs.job_settings({}, "k8s", {key: value}, Path("p.yaml"))
    with pytest.raises(ValueError, match=r"pipeline.k8s.kubectl 'no-such-kubectl' is not on PATH"):
        k8s_jobs.job_settings({}, "k8s", {"kubectl": "no-such-kubectl"}, Path("p.yaml"))


def test_manifest_requests_one_gpu_runs_the_command_and_mounts_the_project(kubectl: Path) -> None:
    settings = _settings(image="reg/advreid:1", claim="shared-checkout", cpus=3)
    env = {
        "DVC_ROOT": "/srv/advreid",
        "DVC_STAGE": "ingest@demo_b",
        "ADVREID_MLFLOW_PARENT_RUN_ID": "abc123",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_PASSWORD": "hunter2",  # never copied into a manifest
        "CUDA_VISIBLE_DEVICES": "1",  # the flow pod's, not the Job's
        "OMP_NUM_THREADS": "8",
        "PATH": "/flow/pod/bin",
    }
    name = k8s_jobs.job_name("ingest@demo_b")
    manifest = k8s_jobs.job_manifest(
        settings, name=name, stage="ingest@demo_b", command="advreid ingest demo_b", working_dir="/srv/advreid",
        project_dir="/srv/advreid", env=k8s_jobs.forwarded_env(env, settings.cpus),
    )  # fmt: skip

    assert "{{" not in json.dumps(manifest)
    assert manifest["kind"] == "Job" and manifest["metadata"]["namespace"] == "advreid"
    assert name.startswith("advreid-ingest-demo-b-") and len(name) <= 63 and DNS_1123.fullmatch(name)
    assert manifest["metadata"]["annotations"]["advreid/stage"] == "ingest@demo_b"
    assert manifest["spec"]["backoffLimit"] == 0  # retries are the flow's
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "reg/advreid:1"
    assert container["command"] == ["/bin/sh", "-c", "advreid ingest demo_b"]
    assert container["workingDir"] == "/srv/advreid"
    assert container["resources"]["limits"] == {"cpu": 3, "memory": "16Gi", "nvidia.com/gpu": 1}
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/srv/advreid"}
    assert volume["persistentVolumeClaim"] == {"claimName": "shared-checkout"}
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "DVC_ROOT": "/srv/advreid",
        "DVC_STAGE": "ingest@demo_b",
        "ADVREID_MLFLOW_PARENT_RUN_ID": "abc123",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        **dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ADVREID_THREADS"), "3"),
    }
    # stages matched by cpu_only request no GPU
    cpu_only = _settings(cpu_only=["*report*", "ingest@*"])
    for stage, gpus in (("ingest@demo_b", 0), ("defense_report", 0), ("train_reid@small_cnn", 1), ("ingest", 1)):
        job = k8s_jobs.job_manifest(
            cpu_only, name=name, stage=stage, command="true", working_dir="/p", project_dir="/p", env={}
        )
        assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == gpus
    long_name = k8s_jobs.job_name("x" * 80 + "@y")
    assert len(long_name) <= 63 and DNS_1123.fullmatch(long_name)


def test_an_edited_template_is_used_and_one_with_an_unknown_placeholder_refused(tmp_path: Path, kubectl: Path) -> None:
    template, params = tmp_path / "job.yaml", tmp_path / "params.yaml"  # relative to the project directory
    template.write_text(k8s_jobs.TEMPLATE.read_text().replace("{{ gpus }}", "{{ gpu }}"))
    with pytest.raises(ValueError, match=r"job.yaml: unknown placeholder\(s\) \['gpu'\]"):
        k8s_jobs.job_settings({}, "k8s", {"template": "job.yaml"}, params)  # when the flow starts

    edited = yaml.safe_load(k8s_jobs.TEMPLATE.read_text())
    edited["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "{{ stage_label }}"}
    template.write_text(yaml.safe_dump(edited))
    settings = k8s_jobs.job_settings({}, "k8s", {"template": "job.yaml"}, params)
    manifest = k8s_jobs.job_manifest(
        settings, name="n", stage="train@a", command="true", working_dir="/p", project_dir=str(tmp_path), env={}
    )
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "train-a"}


# --- one Job, submitted and awaited ---------------------------------------------------------------


def _kwargs(project: Path) -> dict:
    return {"cwd": str(project), "env": {**os.environ, "DVC_ROOT": str(project), "DVC_STAGE": "s"}}


def test_job_exit_code_and_log_tail_come_back_and_the_job_is_deleted(tmp_path: Path, kubectl: Path, capsys) -> None:
    settings = _settings()
    failing = f"{sys.executable} -c \"import sys; print('boom 42', file=sys.stderr); sys.exit(3)\""
    returncode, tail = k8s_jobs.run_job(settings, "s", failing, _kwargs(tmp_path), "[s] ", threading.Event())
    assert returncode == 3
    assert tail.startswith("boom 42") and "failed: FakeFailed" in tail
    assert "[s] boom 42" in capsys.readouterr().err  # the Job's log, echoed with the stage's prefix

    ok = f"{sys.executable} -c \"import os; open('out.txt', 'w').write(os.environ['OMP_NUM_THREADS'])\""
    assert k8s_jobs.run_job(settings, "s", ok, _kwargs(tmp_path), "", threading.Event()) == (0, "")
    assert (tmp_path / "out.txt").read_text() == "4"  # the Job's thread budget, from its CPU request

    verbs = [call["argv"][0] for call in _calls(kubectl)]
    assert verbs == ["apply", "get", "logs", "get", "delete", "apply", "get", "logs", "delete"]
    names = [json.loads(c["stdin"])["metadata"]["name"] for c in _calls(kubectl) if c["argv"][0] == "apply"]
    deleted = [c["argv"][2] for c in _calls(kubectl) if c["argv"][0] == "delete"]
    assert deleted == names and len(set(names)) == 2  # a fresh Job each time, each cleaned up
    assert all(c["argv"][-2:] == ["--namespace", "advreid"] for c in _calls(kubectl))


def test_stopping_deletes_a_job_that_is_still_running(tmp_path: Path, kubectl: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KUBECTL_PENDING", "1")
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    returncode, tail = k8s_jobs.run_job(_settings(), "s", "sleep 600", _kwargs(tmp_path), "", stopping)
    assert returncode < 0 and "another stage failed" in tail
    calls = [call["argv"][0] for call in _calls(kubectl)]
    assert calls[0] == "apply" and set(calls[1:-1]) == {"get"} and calls[-1] == "delete"  # polled, then deleted


def test_cli_flag_chooses_the_runner(tmp_path: Path, isolated_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    # `a` never ran, so the command line hands its plan to the flow.
    monkeypatch.setattr(pipeline_module, "planned_pipeline", lambda plan, **kwargs: seen.update(kwargs))
    project = make_project(tmp_path / "proj", {"a": _stage("a.py", [], ["a.txt"])})
    assert pipeline_module.main(["--project-dir", str(project), "--stage-runner", "k8s"]) == 0
    assert seen["stage_runner"] == "k8s"
    with pytest.raises(SystemExit):
        pipeline_module.main(["--project-dir", str(project), "--stage-runner", "slurm"])


# --- the flow, fanned out as Jobs --------------------------------------------------------------------


@pytest.mark.slow
def test_flow_fans_stages_out_as_jobs_and_ends_as_sequential_repro(
    tmp_path: Path, isolated_env: str, prefect_api: str, kubectl: Path
) -> None:
    from mlflow import MlflowClient

    sequential = make_project(tmp_path / "sequential", _parallel_stages())
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=sequential, check=True)
    project = make_project(tmp_path / "fanout", _parallel_stages())

    result = pipeline_module.pipeline(
        project_dir=str(project), max_parallel=2, stage_runner="k8s", k8s={"poll_seconds": 0.1, "claim": "pvc-1"}
    )
    assert {r["stage"]: r["status"] for r in result["stages"]} == dict.fromkeys("axyb", "ran")
    jobs = _applied(kubectl)
    assert sorted(job["metadata"]["annotations"]["advreid/stage"] for job in jobs) == ["a", "b", "x", "y"]
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["workingDir"] == str(project) and container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "pvc-1"
    spans = {name: (float(t0), float(t1)) for name, t0, t1 in map(str.split, (project / "times.log").open())}
    assert spans["x"][0] < spans["y"][1] and spans["y"][0] < spans["x"][1], f"x and y did not overlap: {spans}"

    # Recorded by the flow exactly as a local run: dvc.lock byte for byte, every output, DVC sees no change.
    assert (project / "dvc.lock").read_text() == (sequential / "dvc.lock").read_text()
    for out in ("a.txt", "x.txt", "y.txt", "b.txt", "metrics.json"):
        assert (project / out).read_bytes() == (sequential / out).read_bytes(), out
    assert subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=project).returncode == 0

    # b's MLflow run nests under the flow's parent: the Job got ADVREID_MLFLOW_PARENT_RUN_ID and the tracking URI.
    client = MlflowClient(tracking_uri=isolated_env)
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.params["stage_runner"] == "k8s"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [c.data.tags["advreid.stage"] for c in children] == ["b"]


@pytest.mark.slow
def test_failed_job_exit_code_propagates_and_exit_2_is_not_retried(
    tmp_path: Path, isolated_env: str, prefect_api: str, kubectl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "RETRIES", 1)
    monkeypatch.setattr(pipeline_module, "RETRY_DELAY_SECONDS", 0)
    k8s = {"poll_seconds": 0.1}

    project = make_project(tmp_path / "bad-input", {"bad": _stage("bad.py", [], ["never.txt"], args="2")})
    with pytest.raises(pipeline_module.StageFailed, match="exit code 2") as info:
        pipeline_module.pipeline(project_dir=str(project), stage_runner="k8s", k8s=k8s)
    assert info.value.returncode == 2 and "boom: custom failure 42" in str(info.value)
    assert (project / "attempts.log").read_text().splitlines() == ["attempt"]  # one Job, no retry
    assert len(_applied(kubectl)) == 1

    project = make_project(tmp_path / "failing", {"bad": _stage("bad.py", [], ["never.txt"])})
    with pytest.raises(pipeline_module.StageFailed, match="exit code 3") as info:
        pipeline_module.pipeline(project_dir=str(project), stage_runner="k8s", k8s=k8s)
    assert info.value.returncode == 3
    assert (project / "attempts.log").read_text().splitlines() == ["attempt", "attempt"]  # retried once
    assert len(_applied(kubectl)) == 3
    assert not (project / "dvc.lock").exists()
