"""Run a DVC stage's command as its own Kubernetes Job, for the flow's ``--stage-runner k8s``.

The flow keeps everything DVC does (plan, removing stale outs, the run cache, ``dvc.lock``) in its own pod;
only the command moves: one Job per stage command (every stage of dvc.yaml has one) with its own GPU request,
rendered from ``flows/k8s-stage-job.yaml``, submitted, awaited and cleaned up with ``kubectl``. The Job mounts
the flow's project directory from a shared (ReadWriteMany) PersistentVolumeClaim at the same path, so the
outputs it writes are where DVC records them. No Kubernetes client library: ``kubectl`` as a subprocess, with
the flow pod's service account.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect.utilities.templating import apply_values, find_placeholders

from advreid.pipeline_plan import STAGE_RUNNERS
from advreid.settings import THREAD_ENV

TEMPLATE = Path(__file__).with_name("k8s-stage-job.yaml")
CONTAINER = "stage"  # the container of the template whose exit code is the stage's
LOG_TAIL_LINES = 40
# What a stage needs from the flow's environment: its project and MLflow parent run (ADVREID_*), where MLflow
# tracks (MLFLOW_*), DVC's DVC_ROOT / DVC_STAGE. Credentials belong in a Secret the template references.
FORWARDED_PREFIXES = ("ADVREID_", "MLFLOW_", "DVC_")
SECRET_MARKERS = ("PASSWORD", "TOKEN", "SECRET")


@dataclass(frozen=True)
class JobSettings:
    """``pipeline.k8s`` of params.yaml: what every stage Job gets.

    ``cpus`` is the Job's CPU request and limit and its thread budget (OpenMP, MKL, OpenBLAS), as a local
    slot's share of the cores; ``cpu_only`` are stage-name patterns (fnmatch, e.g. ``*report*``) whose Jobs
    request no GPU (``gpus`` 0); ``template`` is relative to the project directory (default: the one next to
    this module); ``poll_seconds`` is how often the flow asks a running Job's status.
    """

    image: str = "advreid:cuda"
    namespace: str = "advreid"
    claim: str = "advreid-project"
    gpus: int = 1
    cpus: int = 4
    memory: str = "16Gi"
    cpu_only: tuple[str, ...] = ()
    template: str = ""
    kubectl: str = "kubectl"
    poll_seconds: float = 5.0


def job_settings(
    pipeline_params: Mapping[str, Any],
    stage_runner: str | None,
    overrides: Mapping[str, Any] | None,
    params_file: Path,
) -> JobSettings | None:
    """The Job settings when stages run on Kubernetes, None when they run locally.

    ``stage_runner`` defaults to ``pipeline.stage_runner`` (then ``local``); the settings are ``pipeline.k8s``
    of ``params_file`` with ``overrides`` (the flow's ``k8s`` parameter) on top. Raises ``ValueError`` naming
    the key for an unknown runner, key or value, a ``kubectl`` that is not on PATH, or a template placeholder
    the flow does not fill: before any stage runs.
    """
    runner = stage_runner or pipeline_params.get("stage_runner", "local")
    if runner not in STAGE_RUNNERS:
        raise ValueError(f"{params_file}: pipeline.stage_runner must be one of {STAGE_RUNNERS}, got {runner!r}")
    if runner == "local":
        return None
    values = {**(pipeline_params.get("k8s") or {}), **(overrides or {})}
    fields = {field.name for field in dataclasses.fields(JobSettings)}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{params_file}: pipeline.k8s.{key} is not a setting; expected one of {sorted(fields)}")
        if (expected := _invalid(key, value)) is not None:
            raise ValueError(f"{params_file}: pipeline.k8s.{key} must be {expected}, got {value!r}")
    settings = JobSettings(**{**values, "cpu_only": tuple(values.get("cpu_only", ()))})
    if shutil.which(settings.kubectl) is None:
        raise ValueError(f"{params_file}: pipeline.k8s.kubectl {settings.kubectl!r} is not on PATH")
    root = str(params_file.parent)
    job_manifest(settings, name="check", stage="check", command="true", working_dir=root, project_dir=root, env={})
    return settings


def _invalid(key: str, value: Any) -> str | None:
    """What ``value`` of setting ``key`` should be, or None when it is valid."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in ("gpus", "cpus"):
        least = 0 if key == "gpus" else 1
        return None if number and isinstance(value, int) and value >= least else f"an integer >= {least}"
    if key == "poll_seconds":
        return None if number and value > 0 else "a positive number"
    if key == "cpu_only":
        valid = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return None if valid else "a list of stage-name patterns"
    return None if isinstance(value, str) else "a string"


def job_name(stage: str) -> str:
    """A fresh DNS-1123 Job name for ``stage`` (``ingest@demo_b`` -> ``advreid-ingest-demo-b-1a2b3c``)."""
    return f"advreid-{_label(stage)[:48].rstrip('-')}-{secrets.token_hex(3)}"


def _label(stage: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-") or "stage"


def forwarded_env(env: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The part of the stage's environment its Job gets, with ``cpus`` threads. ``CUDA_VISIBLE_DEVICES``
    and the flow pod's thread shares stay behind: the Job's own GPU and CPU request replace them."""
    chosen = {
        key: value
        for key, value in env.items()
        if key.startswith(FORWARDED_PREFIXES) and not any(marker in key for marker in SECRET_MARKERS)
    }
    return {**chosen, **dict.fromkeys(THREAD_ENV, str(cpus))}


def job_manifest(
    settings: JobSettings, *, name: str, stage: str, command: str, working_dir: str, project_dir: str,
    env: Mapping[str, str],
) -> dict[str, Any]:  # fmt: skip
    """The Job for one stage command: the template with every placeholder filled.

    Raises ``ValueError`` naming the template for a placeholder the flow does not fill (a typo would
    otherwise silently drop the key, e.g. the GPU request).
    """
    path = Path(project_dir) / settings.template if settings.template else TEMPLATE
    template = yaml.safe_load(path.read_text())
    values = {
        "name": name,
        "stage": stage,
        "stage_label": _label(stage)[:63].rstrip("-"),
        "command": command,
        "working_dir": working_dir,
        "project_dir": project_dir,
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
        "image": settings.image,
        "namespace": settings.namespace,
        "claim": settings.claim,
        "gpus": gpus_for(settings, stage),
        "cpus": settings.cpus,
        "memory": settings.memory,
    }
    unknown = sorted({p.name for p in find_placeholders(template)} - set(values))
    if unknown:
        raise ValueError(f"{path}: unknown placeholder(s) {unknown}; the flow fills {sorted(values)}")
    return apply_values(template, values)


def gpus_for(settings: JobSettings, stage: str) -> int:
    """The GPUs ``stage``'s Job requests: none when a ``cpu_only`` pattern matches its name."""
    return 0 if any(fnmatch.fnmatchcase(stage, pattern) for pattern in settings.cpu_only) else settings.gpus


class KubectlFailed(RuntimeError):
    """A ``kubectl`` call exited non-zero."""


def run_job(
    settings: JobSettings, stage: str, command: str, kwargs: Mapping[str, Any], prefix: str, stopping: threading.Event
) -> tuple[int | None, str]:
    """Run ``command`` of ``stage`` as a Job and wait for it; return its exit code and the tail of its log.

    ``kwargs`` are the stage's ``subprocess`` arguments from DVC (cwd, env with ``DVC_ROOT``); the log is
    echoed to stderr with ``prefix`` once the Job ends. The exit code is the container's, None when the Job
    failed without one (deadline, eviction, a ``kubectl`` error: retried). When ``stopping`` is set the Job
    is deleted (its pod gets SIGTERM) and ``-SIGTERM`` returned. The Job is deleted in every case.
    """
    name = job_name(stage)
    manifest = job_manifest(
        settings, name=name, stage=stage, command=command, working_dir=str(kwargs["cwd"]),
        project_dir=kwargs["env"]["DVC_ROOT"], env=forwarded_env(kwargs["env"], settings.cpus),
    )  # fmt: skip
    try:
        _kubectl(settings, "apply", "-f", "-", stdin=json.dumps(manifest))
        condition = _await(settings, name, stopping)
        if condition is None:
            return -signal.SIGTERM, f"Job {name} deleted: another stage failed"
        log = _log(settings, name)
        sys.stderr.writelines(prefix + line for line in log)
        tail = "".join(collections.deque(log, maxlen=LOG_TAIL_LINES)).rstrip()
        if condition["type"] == "Complete":
            return 0, tail
        reason = f"Job {name} failed: {condition.get('reason', '')} {condition.get('message', '')}".rstrip()
        # A failed Job never counts as a success, whatever its container said.
        return _exit_code(settings, name) or None, f"{tail}\n{reason}".lstrip()
    except KubectlFailed as err:
        return None, str(err)
    finally:
        _kubectl(settings, "delete", "job", name, "--ignore-not-found", "--wait=false", check=False)


def _await(settings: JobSettings, name: str, stopping: threading.Event) -> dict[str, Any] | None:
    """The Job's final condition (``Complete`` or ``Failed``), or None when ``stopping`` was set first."""
    while True:
        job = json.loads(_kubectl(settings, "get", "job", name, "-o", "json"))
        for condition in job.get("status", {}).get("conditions", []):
            if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
                return condition
        if stopping.wait(settings.poll_seconds):
            return None


def _exit_code(settings: JobSettings, name: str) -> int | None:
    pods = json.loads(_kubectl(settings, "get", "pods", "-l", f"job-name={name}", "-o", "json"))
    for pod in pods.get("items", []):
        for status in pod.get("status", {}).get("containerStatuses", []):
            terminated = status.get("state", {}).get("terminated")
            if status.get("name") == CONTAINER and terminated:
                return terminated.get("exitCode")
    return None


def _log(settings: JobSettings, name: str) -> list[str]:
    try:
        return _kubectl(settings, "logs", f"job/{name}", "-c", CONTAINER).splitlines(keepends=True)
    except KubectlFailed as err:  # the pod is gone (evicted, node lost): the exit code may still say why
        return [f"(no log: {err})\n"]


def _kubectl(settings: JobSettings, *args: str, stdin: str | None = None, check: bool = True) -> str:
    argv = [settings.kubectl, *args, "--namespace", settings.namespace]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise KubectlFailed(f"{' '.join(argv)} failed (exit code {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
