"""The advreid pipeline as a Prefect flow: Prefect outside, DVC inside.

DVC decides what is stale and records lineage in ``dvc.lock``; Prefect adds retries, observability,
schedules and remote (GPU) execution. The flow asks DVC once for the whole plan which stages are stale,
runs each stale stage's command in its own process (one Prefect task per stage, up to
``pipeline.max_parallel`` at a time, each pinned to a slot: a GPU or a CPU thread budget), and records
each finished stage in ``dvc.lock`` through DVC's own API, one at a time and in DVC's plan order, so the
lock and the outputs end exactly as a sequential ``dvc repro`` leaves them. Stage code never imports Prefect.
With ``--stage-runner k8s`` each stage command runs as its own Kubernetes Job instead (flows/k8s_jobs.py).

    python flows/pipeline.py [--project-dir DIR] [--targets STAGE ...] [--force] [--max-parallel N]
                             [--stage-runner {local,k8s}]

Run as a script, this file first asks DVC for the plan (:mod:`advreid.pipeline_plan`, Prefect- and
MLflow-free): an up-to-date pipeline prints its summary and exits 0 there, before Prefect is imported;
otherwise the file is imported as a module and :func:`planned_pipeline` runs that plan. Deployments
(prefect.yaml) run :func:`pipeline`, which computes the plan itself.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from advreid.pipeline_plan import (
    Plan,
    StageRecord,
    build_plan,
    cli,
    collect_stage,
    first_param,
    format_summary,
    headline,
    headline_metrics,
    headline_patterns,
    launch_order,
    max_parallel_param,
    open_repo,
    pipeline_params,
    stage_is_up_to_date,
)
from advreid.settings import PREFECT_STARTUP_TIMEOUT_ENV, THREAD_ENV, apply_environment, quiet_tools
from advreid.tracking.metric_keys import metric_name


def _flow_module() -> Any:
    """This file imported as a module, for the command line once a stage is stale (run as a script, it
    stopped below, before Prefect was imported)."""
    spec = importlib.util.spec_from_file_location("advreid_pipeline_flow", __file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    # An up-to-date pipeline is answered from DVC's status alone, without importing Prefect or MLflow.
    sys.exit(cli(sys.argv[1:], lambda args, plan: _flow_module().run_cli(args, plan)))

quiet_tools()  # before Prefect is imported: it reads its logging settings at import time

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

try:  # a module of the `flows` package (tests, Prefect) or, run as `python flows/pipeline.py`, a sibling script
    from flows import k8s_jobs
except ModuleNotFoundError:
    import k8s_jobs

# The venv's own interpreter, whatever PATH says (workers may start with a bare PATH).
PREFLIGHT_COMMAND = (sys.executable, "-m", "advreid", "check")
STDERR_TAIL_LINES = 40
RETRIES = 2
RETRY_DELAY_SECONDS = 30
# advreid.errors.EXIT_BAD_INPUT: a stage's bad input or params fail the same way every time, so they are
# never retried (literal here so the flow does not depend on the stage package's error module).
EXIT_BAD_INPUT = 2
# Seconds a stopped stage gets between SIGTERM and SIGKILL when another stage failed.
STOP_GRACE_SECONDS = 10


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message ends with the tail of its stderr."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class StageStopped(StageFailed):
    """A stage the flow stopped because another stage failed (never retried)."""


class PreflightFailed(StageFailed):
    """``advreid check`` refused the params before anything was touched."""


def should_retry(returncode: int | None) -> bool:
    """Retry every failure but bad input/params (exit 2, deterministic); a killed process (a negative code,
    or 128 + signal from a shell, e.g. 137 for SIGKILL) is transient and retried."""
    return returncode != EXIT_BAD_INPUT


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    error = state.result(raise_on_failure=False)
    if isinstance(error, StageStopped):
        return False
    return should_retry(error.returncode) if isinstance(error, StageFailed) else True


def prepare_stage(project_dir: str | os.PathLike, stage: str, force: bool) -> dict[str, Any] | None:
    """What ``dvc repro`` does before a stage's command: remove its non-persistent outs and, unless
    ``force``, restore it from DVC's run cache. Returns the command's ``subprocess`` arguments (cwd and
    the environment DVC gives it: ``DVC_ROOT``, ``DVC_STAGE``), or None when the run cache restored it."""
    from dvc.stage.cache import RunCacheNotFoundError
    from dvc.stage.run import prepare_kwargs

    with open_repo(project_dir, lock=True) as repo:
        found = collect_stage(repo, stage)
        found.remove_outs(ignore_remove=False, force=False)
        if not force:
            try:
                found.repo.stage_cache.restore(found)
            except RunCacheNotFoundError:
                pass
            else:
                return None  # recorded in dvc.lock by commit_stage, as for a stage that ran
        return prepare_kwargs(found)


def commit_stage(project_dir: str | os.PathLike, stage: str) -> None:
    """What ``dvc repro`` does after a stage's command: hash deps and outs, save the run cache, move the
    outs into DVC's cache and write the stage's entry of ``dvc.lock``."""
    with open_repo(project_dir, lock=True) as repo:
        _record(collect_stage(repo, stage))


def _record(stage: Any) -> None:
    # As dvc.stage.Stage.run + dvc.repo.reproduce._reproduce_stage: no run cache with an uncached out.
    no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
    stage.save(run_cache=not no_cache_outs)
    stage.commit()
    stage.dump(update_pipeline=False)


# Stage processes the flow may have to stop, by stage name.
_PROCESSES: dict[str, subprocess.Popen] = {}
_STOPPING = threading.Event()


@task(cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS)
def run_stage(
    project_dir: str, stage: str, commands: list[str], force: bool = False, slot_env: Mapping[str, str] | None = None,
    job: k8s_jobs.JobSettings | None = None,
) -> str:  # fmt: skip
    """Run one stale DVC stage's command in its own process (``slot_env`` pins it to its slot), or with
    ``job`` as a Kubernetes Job; return ``"ran"`` or ``"restored"`` (from DVC's run cache). Raises
    ``StageFailed`` with the stderr tail (a Job's: its log tail and exit code).

    No Prefect caching: DVC's hashes are the only cache, so a Prefect cache could only be wrong. The
    stage is recorded in ``dvc.lock`` by the flow (:func:`commit_stage`), not here.
    """
    if _STOPPING.is_set():
        raise StageStopped(f"DVC stage {stage!r} was not started: another stage failed")
    kwargs = prepare_stage(project_dir, stage, force)
    if kwargs is None:
        return "restored"
    kwargs["env"].update(slot_env or {})
    prefix = f"[{stage}] " if slot_env else ""
    for command in commands:
        if job is None:
            returncode, stderr_tail = _run_streaming_stderr(stage, command, kwargs, prefix)
        else:
            returncode, stderr_tail = k8s_jobs.run_job(job, stage, command, kwargs, prefix, _STOPPING)
        if returncode != 0:
            kind = StageStopped if _STOPPING.is_set() else StageFailed
            raise kind(
                f"DVC stage {stage!r} failed (exit code {returncode}) running {command!r} "
                f"in {kwargs['cwd']}; stderr tail:\n{stderr_tail}",
                returncode,
            )
    return "ran"


def _run_streaming_stderr(stage: str, command: str, kwargs: Mapping[str, Any], prefix: str) -> tuple[int, str]:
    """Run ``command`` in DVC's shell; stdout passes through, stderr is echoed live and its last lines kept.

    Its own session, so that stopping it reaches the shell's children too.
    """
    from dvc.stage.run import _make_cmd, get_executable

    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    popen = {**kwargs, "stderr": subprocess.PIPE, "text": True, "errors": "replace", "start_new_session": True}
    with subprocess.Popen(_make_cmd(get_executable(), command), **popen) as proc:
        _PROCESSES[stage] = proc
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(prefix + line)
                tail.append(line)
            returncode = proc.wait()
        finally:
            _PROCESSES.pop(stage, None)
    return returncode, "".join(tail).rstrip()


def _stop_running() -> None:
    """SIGTERM every running stage's process group, SIGKILL what is left after the grace period."""
    _STOPPING.set()
    for proc in list(_PROCESSES.values()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in list(_PROCESSES.values()):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def visible_gpus() -> list[str]:
    """GPU ids the flow may hand to slots: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``'s."""
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def slot_environment(slot: int, max_parallel: int, gpus: Sequence[str], cpus: int | None = None) -> dict[str, str]:
    """The environment pinning a stage to ``slot``: its GPU (``CUDA_VISIBLE_DEVICES``, round robin over
    ``gpus``) and an equal share of the CPU cores as thread budget (OpenMP, MKL, OpenBLAS, torch)."""
    threads = max(1, (cpus or os.cpu_count() or 1) // max(1, max_parallel))
    env = dict.fromkeys(THREAD_ENV, str(threads))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def preflight(project_dir: str | os.PathLike, commands: Sequence[str]) -> None:
    """``advreid check`` before anything is touched, when any command to run is an ``advreid`` stage:
    a bad param then fails the flow with every previous output intact. Raises ``PreflightFailed``."""
    if not any(command.split()[:1] == ["advreid"] for command in commands):
        return
    proc = subprocess.run(PREFLIGHT_COMMAND, cwd=project_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PreflightFailed(
            f"advreid check refused the params (exit code {proc.returncode}); nothing was run or removed:\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}",
            proc.returncode,
        )


FLOW_NAME = "advreid-pipeline"


@flow(name=FLOW_NAME)
def pipeline(
    project_dir: str = ".", targets: list[str] | None = None, force: bool = False, max_parallel: int | None = None,
    stage_runner: Literal["local", "k8s"] | None = None, k8s: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the DVC pipeline inside one MLflow parent run; return the summary.

    Up to ``max_parallel`` (default ``pipeline.max_parallel`` of params.yaml) stages whose upstream stages
    are done run at once, as local processes or, with ``stage_runner="k8s"`` (default
    ``pipeline.stage_runner``), as Kubernetes Jobs (``pipeline.k8s`` settings, ``k8s`` overriding keys).
    Returns ``{"stages": [StageRecord...], "metrics": {...}, "parent_run_id": str, "summary": str}``, the
    records in DVC's plan order with each stage's wall time. A failing stage stops the others (SIGTERM, not
    recorded in dvc.lock) and fails the flow with its stderr tail.
    """
    root = apply_environment(Path(project_dir))
    return _run_pipeline(root, build_plan(root, targets), targets, force, max_parallel, stage_runner, k8s)


@flow(name=FLOW_NAME)
def planned_pipeline(
    plan: Plan, project_dir: str = ".", targets: list[str] | None = None, max_parallel: int | None = None,
    stage_runner: Literal["local", "k8s"] | None = None, k8s: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`pipeline` without ``force`` on the ``plan`` the command line computed for ``targets``
    (:func:`advreid.pipeline_plan.cli`), so DVC's status is asked once per run. The flow run shows the plan."""
    root = apply_environment(Path(project_dir))
    return _run_pipeline(root, plan, targets, False, max_parallel, stage_runner, k8s)


def _run_pipeline(
    root: Path, plan: Plan, targets: list[str] | None, force: bool, max_parallel: int | None,
    stage_runner: Literal["local", "k8s"] | None, k8s: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    # MLflow only once there is a run to track (its import costs seconds).
    from advreid.tracking.mlflow_run import log_parent_lock, parent_run

    parallel = max_parallel or max_parallel_param(root)
    job = k8s_jobs.job_settings(pipeline_params(root), stage_runner, k8s, root / "params.yaml")
    to_run = plan.stages if force else sorted(plan.stale)
    records: dict[str, StageRecord] = {}
    failure: BaseException | None = None
    run_params = {"targets": " ".join(targets or []) or "all", "force": force, "max_parallel": parallel}
    run_params["stage_runner"] = "local" if job is None else "k8s"
    # Stage processes started in this block nest their MLflow runs under it (ADVREID_MLFLOW_PARENT_RUN_ID).
    with parent_run("pipeline", run_params, root=root) as parent:
        try:
            preflight(root, [c for stage in to_run for c in plan.commands[stage]])
        except PreflightFailed as err:
            failure = err
        else:
            failure = _execute(root, plan, force, parallel, records, job)
        ordered = [records[stage] for stage in plan.stages if stage in records]
        # dvc.lock is complete only now; it also holds the stages that finished before a failure.
        if (root / "dvc.lock").is_file() and any(r["status"] in ("ran", "restored") for r in ordered):
            log_parent_lock(parent, root)
        metrics = headline_metrics(root) if failure is None else {}
        parent.log_metrics(metrics)
        parent.log_metrics(
            {metric_name(f"seconds.{r['stage']}"): r["seconds"] for r in ordered if r["status"] == "ran"}
        )
        summary = format_summary(ordered, headline(metrics, headline_patterns(root)))
        print(summary)
        if failure is not None:
            # Raised inside the parent run so that MLflow marks it FAILED too.
            raise failure
    return {"stages": ordered, "metrics": metrics, "parent_run_id": parent.run_id, "summary": summary}


def _execute(
    root: Path, plan: Plan, force: bool, parallel: int, records: dict[str, StageRecord],
    job: k8s_jobs.JobSettings | None = None,
) -> BaseException | None:  # fmt: skip
    """Schedule the plan: launch ready stale stages into free slots, record finished ones in plan order."""
    _STOPPING.clear()
    gpus = visible_gpus() if parallel > 1 else []
    free_slots = list(range(parallel))
    status: dict[str, str] = dict.fromkeys(plan.stages, "pending")
    started: dict[str, float] = {}
    running: dict[Any, tuple[str, int]] = {}  # future -> (stage, slot)
    failure: BaseException | None = None
    cursor = 0  # dvc.lock entries are written in plan order, as a sequential `dvc repro` writes them
    order = launch_order(plan.stages, first_param(root))  # ready stages start in this order
    while True:
        progressed = True
        while progressed:
            progressed = False
            while cursor < len(plan.stages) and status[plan.stages[cursor]] in ("finished", "done"):
                if status[plan.stages[cursor]] == "finished":
                    _commit(root, plan.stages[cursor], status, records)
                    progressed = True
                cursor += 1
            if failure is not None:
                continue
            for stage in order:
                upstream = plan.upstream[stage]
                if status[stage] != "pending" or any(status[u] != "done" for u in upstream):
                    continue
                if not force and not _needs_run(root, plan, stage, records):
                    status[stage] = "done"
                    records[stage] = StageRecord(stage=stage, status="up-to-date", seconds=0.0)
                    progressed = True
                elif free_slots:
                    slot = free_slots.pop(0)
                    slot_env = slot_environment(slot, parallel, gpus) if parallel > 1 else None
                    started[stage] = time.perf_counter()
                    task_ = run_stage.with_options(
                        name=stage, task_run_name=stage, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
                        retry_condition_fn=_retry_condition,
                    )  # fmt: skip
                    future = task_.submit(str(root), stage, plan.commands[stage], force, slot_env, job)
                    running[future] = (stage, slot)
                    status[stage] = "running"
                    progressed = True
        if not running:
            # After a failure, what finished is still recorded (plan order); nothing else was started.
            for stage in plan.stages:
                if status[stage] == "finished":
                    _commit(root, stage, status, records)
            return failure
        future = next(as_completed(list(running)))
        stage, slot = running.pop(future)
        free_slots.append(slot)
        seconds = time.perf_counter() - started[stage]
        outcome = future.result(raise_on_failure=False)  # the task's return value, or its exception
        if outcome in ("ran", "restored"):
            status[stage] = "finished"
            records[stage] = StageRecord(stage=stage, status=outcome, seconds=seconds)
            continue
        error = outcome if isinstance(outcome, BaseException) else StageFailed(f"DVC stage {stage!r} failed: {outcome}")
        stopped = isinstance(error, StageStopped)
        records[stage] = StageRecord(stage=stage, status="stopped" if stopped else "failed", seconds=seconds)
        status[stage] = "failed"
        if failure is None and not stopped:
            failure = error
            _stop_running()


def _commit(root: Path, stage: str, status: dict[str, str], records: dict[str, StageRecord]) -> None:
    start = time.perf_counter()
    commit_stage(root, stage)
    records[stage]["seconds"] += time.perf_counter() - start
    status[stage] = "done"


def _needs_run(root: Path, plan: Plan, stage: str, records: Mapping[str, StageRecord]) -> bool:
    """Stale in the plan's one status pass; a stage below one that ran this time is asked again, as
    ``dvc repro`` does (an upstream that rewrote identical outputs leaves it up to date)."""
    if any(records.get(u, {}).get("status") in ("ran", "restored") for u in plan.upstream[stage]):
        return not stage_is_up_to_date(root, stage)
    return stage in plan.stale


STARTUP_ADVICE = (
    "Prefect's local API server did not start in time (the machine is probably busy). Set "
    f"{PREFECT_STARTUP_TIMEOUT_ENV} higher (the project's default is in advreid.settings), or start a "
    "server once with `prefect server start --host 127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api."
)


def main(argv: list[str] | None = None) -> int:
    """The command line (``python flows/pipeline.py`` runs the same through :func:`_flow_module`)."""
    return cli(argv, run_cli)


def run_cli(args: argparse.Namespace, plan: Plan | None) -> int:
    """Run the flow for :func:`advreid.pipeline_plan.cli` (``plan`` is None with ``--force``); the exit status."""
    options = {"project_dir": args.project_dir, "targets": args.targets, "max_parallel": args.max_parallel}
    options["stage_runner"] = args.stage_runner
    try:
        if plan is None:
            pipeline(force=args.force, **options)
        else:
            planned_pipeline(plan, **options)
    except PreflightFailed as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except StageFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        print(f"{exc}\n{STARTUP_ADVICE}", file=sys.stderr)
        return 1
    return 0
