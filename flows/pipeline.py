"""The advreid pipeline as a Prefect flow: Prefect outside, DVC inside.

DVC decides what is stale and records lineage in ``dvc.lock``; Prefect adds retries, observability,
schedules and remote (GPU) execution. Each DVC stage is one Prefect task that runs
``dvc repro --single-item <stage>`` in a subprocess, so stage code never imports Prefect.

    python flows/pipeline.py [--project-dir DIR] [--targets STAGE ...] [--force]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fnmatch
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import yaml

from advreid.settings import apply_environment, quiet_tools

quiet_tools()  # before Prefect is imported: it reads its logging settings at import time

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from advreid.tracking.mlflow_run import log_parent_lock, numeric_leaves, parent_run  # noqa: E402

# The venv's own DVC, whatever PATH says (workers may start with a bare PATH).
DVC_COMMAND = (sys.executable, "-m", "dvc")
STDERR_TAIL_LINES = 40
RETRIES = 2
RETRY_DELAY_SECONDS = 30


class StageRecord(TypedDict):
    stage: str
    status: Literal["ran", "up-to-date", "failed"]
    seconds: float


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message ends with the tail of its stderr."""


@contextlib.contextmanager
def _open_repo(project_dir: str | os.PathLike) -> Iterator[Any]:
    """DVC's Repo for ``project_dir``, with the working directory there while it is open.

    DVC resolves targets (``dvc.yaml``, stage names) and names stages relative to the working
    directory, as its CLI does; the flow makes its DVC calls one at a time, so the chdir is safe.
    """
    from dvc.repo import Repo

    with contextlib.chdir(project_dir), Repo(os.curdir) as repo:
        yield repo


def plan_stages(project_dir: str | os.PathLike, targets: list[str] | None = None) -> list[str]:
    """Stage names in the order ``dvc repro`` runs them, dependencies first.

    foreach/matrix entries come out resolved (``ingest@market1501``). With ``targets`` (relative to
    ``project_dir``) only those stages and their upstream stages are planned; without, every stage of
    the root ``dvc.yaml``, as a bare ``dvc repro`` does. Raises DVC's ``StageNotFound`` for an
    unknown target.
    """
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    with _open_repo(project_dir) as repo:
        # DVC's own planner, so the order is exactly the one `dvc repro` would follow.
        graph = get_active_graph(repo.index.graph)
        plan = plan_repro(graph, collect_stages(repo, targets or [PROJECT_FILE]))
        # `dvc add`-ed data (.dvc files) are graph nodes too, but there is nothing to reproduce.
        return [stage.addressing for stage in plan if not stage.is_data_source]


def stage_is_up_to_date(project_dir: str | os.PathLike, stage: str) -> bool:
    """True when ``dvc status <stage>`` reports nothing changed (deps, params, outs, command)."""
    # A fresh Repo per call: an index cached before the previous stage's repro would be stale.
    with _open_repo(project_dir) as repo:
        return not repo.status(targets=[stage])


@task(cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS)
def run_stage(project_dir: str, stage: str, force: bool = False) -> StageRecord:
    """Reproduce one DVC stage if DVC says it is stale (or ``force``); raise ``StageFailed`` on error.

    No Prefect caching: DVC's hashes are the only cache, so a Prefect cache could only be wrong.
    """
    start = time.perf_counter()
    if not force and stage_is_up_to_date(project_dir, stage):
        return StageRecord(stage=stage, status="up-to-date", seconds=time.perf_counter() - start)
    command = [*DVC_COMMAND, "repro", "--single-item", *(["--force"] if force else []), stage]
    returncode, stderr_tail = _run_streaming_stderr(command, cwd=project_dir)
    if returncode != 0:
        raise StageFailed(
            f"DVC stage {stage!r} failed (exit code {returncode}) running {' '.join(command)!r} "
            f"in {project_dir}; stderr tail:\n{stderr_tail}"
        )
    return StageRecord(stage=stage, status="ran", seconds=time.perf_counter() - start)


def _run_streaming_stderr(command: list[str], cwd: str) -> tuple[int, str]:
    """Run ``command``; stdout passes through, stderr is echoed live and its last lines kept."""
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    with subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
        returncode = proc.wait()
    return returncode, "".join(tail).rstrip()


def headline_metrics(project_dir: str | os.PathLike) -> dict[str, float]:
    """Numeric metrics of the workspace's DVC metrics files, named ``<file>:<nested.key>``.

    Characters MLflow rejects are replaced by ``_``. A metrics file that does not exist yet (its stage was
    not part of this run) is skipped, where ``dvc.api.metrics_show`` would fail.
    """
    with _open_repo(project_dir) as repo:
        files = repo.metrics.show().get("", {}).get("data", {})
    merged = {
        f"{name}:{key}": value
        for name, entry in files.items()
        if "error" not in entry and "data" in entry
        for key, value in numeric_leaves(entry["data"]).items()
    }
    return {re.sub(r"[^/\w.\- :]", "_", name): value for name, value in merged.items()}


# Used when params.yaml has no `pipeline.headline`: every metric whose last key is one of these.
DEFAULT_HEADLINE = ("*.rank1", "*.mAP", "*.sca", "*.accuracy", "*.detection_rate")


def headline(metrics: Mapping[str, float], patterns: Sequence[str] = DEFAULT_HEADLINE) -> dict[str, float]:
    """The metrics a person wants to see at the end of a run: names matching any ``fnmatch`` pattern.

    A pattern with a ``file:`` part (``reports/metrics/pose/*.json:evaluation.pck_0.2.overall``) matches
    the whole name of :func:`headline_metrics`; a pattern without one matches the key alone.
    """

    def matches(name: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(name if ":" in pattern else name.rsplit(":", 1)[-1], pattern)

    return {name: value for name, value in metrics.items() if any(matches(name, p) for p in patterns)}


def headline_patterns(project_dir: str | os.PathLike) -> tuple[str, ...]:
    """``pipeline.headline`` of the project's params.yaml, or :data:`DEFAULT_HEADLINE`."""
    path = Path(project_dir) / "params.yaml"
    params = yaml.safe_load(path.read_text()) if path.is_file() else None
    patterns = ((params or {}).get("pipeline") or {}).get("headline")
    return tuple(patterns) if patterns else DEFAULT_HEADLINE


def format_summary(records: list[StageRecord], metrics: Mapping[str, float]) -> str:
    """A plain-text table: one row per stage (status, seconds), then one row per headline metric."""
    width = max([len("stage"), *(len(r["stage"]) for r in records), *(len(m) for m in metrics)])
    lines = [f"{'stage':<{width}}  {'status':<10}  {'seconds':>8}"]
    lines += [f"{r['stage']:<{width}}  {r['status']:<10}  {r['seconds']:>8.2f}" for r in records]
    if metrics:
        lines += ["", f"{'metric':<{width}}  value"]
        lines += [f"{name:<{width}}  {value:.6g}" for name, value in sorted(metrics.items())]
    return "\n".join(lines)


@flow(name="advreid-pipeline")
def pipeline(project_dir: str = ".", targets: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the DVC pipeline stage by stage inside one MLflow parent run; return the summary.

    Returns ``{"stages": [StageRecord...], "metrics": {...}, "parent_run_id": str, "summary": str}``.
    A failing stage stops the pipeline (as ``dvc repro`` does) and fails the flow with its stderr tail.
    """
    root = apply_environment(Path(project_dir))
    stages = plan_stages(root, targets)
    records: list[StageRecord] = []
    failure: BaseException | None = None
    run_params = {"targets": " ".join(targets or []) or "all", "force": force}
    # Stage processes started in this block nest their MLflow runs under it (ADVREID_MLFLOW_PARENT_RUN_ID).
    with parent_run("pipeline", run_params, root=root) as parent:
        # Sequential on purpose: DVC holds a repo-wide lock during a repro, so stages cannot overlap;
        # the order is DVC's own topological plan.
        for stage in stages:
            start = time.perf_counter()
            state = run_stage.with_options(name=stage, task_run_name=stage)(str(root), stage, force, return_state=True)
            if state.is_failed():
                failure = state.result(raise_on_failure=False)
                if not isinstance(failure, BaseException):  # a failed state without an exception
                    failure = StageFailed(f"DVC stage {stage!r} failed: {state.message}")
                records.append(StageRecord(stage=stage, status="failed", seconds=time.perf_counter() - start))
                break
            records.append(state.result())
        # dvc.lock is complete only now; it also holds the stages that finished before a failure.
        if (root / "dvc.lock").is_file():
            log_parent_lock(parent, root)
        metrics = headline_metrics(root) if failure is None else {}
        parent.log_metrics(metrics)
        summary = format_summary(records, headline(metrics, headline_patterns(root)))
        print(summary)
        if failure is not None:
            # Raised inside the parent run so that MLflow marks it FAILED too.
            raise failure
    return {"stages": records, "metrics": metrics, "parent_run_id": parent.run_id, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the advreid DVC pipeline as a Prefect flow.")
    parser.add_argument("--project-dir", default=".", help="the DVC project (default: current directory)")
    parser.add_argument("--targets", nargs="+", help="stages to reproduce, with their upstream stages")
    parser.add_argument("--force", action="store_true", help="reproduce even stages DVC reports up to date")
    args = parser.parse_args(argv)
    # Before the flow starts: Prefect's ephemeral API reads PREFECT_HOME when it starts up.
    apply_environment(Path(args.project_dir))
    try:
        pipeline(project_dir=args.project_dir, targets=args.targets, force=args.force)
    except StageFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
