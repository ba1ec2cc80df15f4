"""The pipeline flow's plan and summary, without Prefect or MLflow: DVC's planner and one status pass.

``python flows/pipeline.py`` runs :func:`cli` before anything imports Prefect: when DVC reports every planned
stage up to date, it prints the summary table and exits 0 having imported neither Prefect nor MLflow, started
no Prefect API server and opened no MLflow run (together seconds; ~20 s on a loaded machine), so a no-op costs
about what ``dvc repro``'s does. When a stage is stale, the flow gets this plan and does not ask DVC again.
Every DVC call of the flow goes through :func:`open_repo`.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from advreid.io import load_yaml
from advreid.settings import apply_environment
from advreid.tracking.metric_keys import metric_name, numeric_leaves

# Used when params.yaml has no `pipeline.headline`: every metric whose last key is one of these.
DEFAULT_HEADLINE = ("*.rank1", "*.mAP", "*.sca", "*.accuracy", "*.detection_rate")
# Where stage commands run: local processes, or one Kubernetes Job each (flows/k8s_jobs.py).
STAGE_RUNNERS = ("local", "k8s")

_DVC_LOCK = threading.RLock()


class StageRecord(TypedDict):
    stage: str
    status: Literal["ran", "restored", "up-to-date", "failed", "stopped"]
    seconds: float


@dataclass
class Plan:
    """The stages ``dvc repro`` would visit, in its order, with their direct upstream stages and the ones
    DVC reports stale now (one status pass over the whole plan)."""

    stages: list[str]
    upstream: dict[str, list[str]] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    commands: dict[str, list[str]] = field(default_factory=dict)


@contextlib.contextmanager
def open_repo(project_dir: str | os.PathLike, lock: bool = False) -> Iterator[Any]:
    """DVC's Repo for ``project_dir``, with the working directory there while it is open.

    DVC resolves targets (``dvc.yaml``, stage names) and names stages relative to the working
    directory, as its CLI does. Every DVC call of the flow goes through here under one process-wide lock,
    so the chdir is safe while stage processes run in other threads. With ``lock``, DVC's repository lock
    is held too (DVC's stage methods assert it), which also keeps a concurrent ``dvc`` command out.
    """
    from dvc.repo import Repo

    with _DVC_LOCK, contextlib.chdir(project_dir), Repo(os.curdir) as repo:
        if not lock:
            yield repo
            return
        with repo.lock:
            yield repo


def _collect_plan(repo: Any, targets: list[str] | None) -> tuple[list[Any], Any]:
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    # DVC's own planner, so the order is exactly the one `dvc repro` would follow.
    graph = get_active_graph(repo.index.graph)
    plan = plan_repro(graph, collect_stages(repo, targets or [PROJECT_FILE]))
    # `dvc add`-ed data (.dvc files) are graph nodes too, but there is nothing to reproduce.
    return [stage for stage in plan if not stage.is_data_source], graph


def plan_stages(project_dir: str | os.PathLike, targets: list[str] | None = None) -> list[str]:
    """Stage names in the order ``dvc repro`` runs them, dependencies first.

    foreach/matrix entries come out resolved (``ingest@market1501``). With ``targets`` (relative to
    ``project_dir``) only those stages and their upstream stages are planned; without, every stage of
    the root ``dvc.yaml``, as a bare ``dvc repro`` does. Raises DVC's ``StageNotFound`` for an
    unknown target.
    """
    with open_repo(project_dir) as repo:
        stages, _ = _collect_plan(repo, targets)
        return [stage.addressing for stage in stages]


def build_plan(project_dir: str | os.PathLike, targets: list[str] | None = None) -> Plan:
    """:func:`plan_stages` plus each stage's upstream stages, commands and whether it is stale now."""
    with open_repo(project_dir, lock=True) as repo:
        return _plan_of(repo, targets)


def _plan_of(repo: Any, targets: list[str] | None) -> Plan:
    stages, graph = _collect_plan(repo, targets)
    names = {stage.addressing for stage in stages}
    plan = Plan(stages=[stage.addressing for stage in stages])
    for stage in stages:
        plan.upstream[stage.addressing] = [s.addressing for s in graph.successors(stage) if s.addressing in names]
        plan.commands[stage.addressing] = _commands(stage)
        # A frozen stage is never run by `dvc repro`; its outputs are only verified.
        if not stage.frozen and stage.changed():
            plan.stale.add(stage.addressing)
    return plan


def _commands(stage: Any) -> list[str]:
    return list(stage.cmd) if isinstance(stage.cmd, list) else str(stage.cmd or "").splitlines()


def collect_stage(repo: Any, name: str) -> Any:
    """The one DVC stage ``name`` (``train`` or ``ingest@demo_a``) of an open ``repo``."""
    (stage,) = repo.stage.collect(name)
    return stage


def stage_is_up_to_date(project_dir: str | os.PathLike, stage: str) -> bool:
    """True when DVC reports nothing changed for ``stage`` (deps, params, outs, command), or it is frozen."""
    with open_repo(project_dir, lock=True) as repo:
        found = collect_stage(repo, stage)
        return found.frozen or not found.changed()


def pipeline_params(project_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``pipeline`` section of the project's params.yaml (empty when there is none)."""
    path = Path(project_dir) / "params.yaml"
    params = load_yaml(path.read_text()) if path.is_file() else None
    return (params or {}).get("pipeline") or {}


def max_parallel_param(project_dir: str | os.PathLike) -> int:
    """``pipeline.max_parallel`` of the project's params.yaml (default 1: one stage at a time, as DVC)."""
    value = pipeline_params(project_dir).get("max_parallel", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{Path(project_dir) / 'params.yaml'}: pipeline.max_parallel must be an integer >= 1, got {value!r}"
        )
    return value


def first_param(project_dir: str | os.PathLike) -> list[str]:
    """``pipeline.first`` of the project's params.yaml: fnmatch patterns of stages to launch first (default none)."""
    value = pipeline_params(project_dir).get("first", [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        where = Path(project_dir) / "params.yaml"
        raise ValueError(f"{where}: pipeline.first must be a list of patterns, got {value!r}")
    return value


def launch_order(stages: list[str], first: list[str]) -> list[str]:
    """``stages`` (plan order) with those matching a pattern of ``first`` moved ahead, in the patterns' order: when
    slots free up, ready stages are launched in this order. Long stages that little depends on (seed replicates)
    go first so that a parallel run does not end waiting for one of them; ``dvc.lock`` keeps the plan order."""

    def rank(stage: str) -> int:
        return next((i for i, pattern in enumerate(first) if fnmatch.fnmatchcase(stage, pattern)), len(first))

    return sorted(stages, key=rank)  # stable: plan order within a rank


def headline_metrics(project_dir: str | os.PathLike) -> dict[str, float]:
    """Numeric metrics of the workspace's DVC metrics files, named ``<file>:<nested.key>``.

    Characters MLflow rejects are replaced by ``_``. A metrics file that does not exist yet (its stage was
    not part of this run) is skipped, where ``dvc.api.metrics_show`` would fail.
    """
    with open_repo(project_dir) as repo:
        return _metrics_of(repo)


def _metrics_of(repo: Any) -> dict[str, float]:
    files = repo.metrics.show().get("", {}).get("data", {})
    merged = {
        f"{name}:{key}": value
        for name, entry in files.items()
        if "error" not in entry and "data" in entry
        for key, value in numeric_leaves(entry["data"]).items()
    }
    return {metric_name(name): value for name, value in merged.items()}


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
    patterns = pipeline_params(project_dir).get("headline")
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flow's command line: ``[--project-dir DIR] [--targets STAGE ...] [--force] [--max-parallel N]
    [--stage-runner {local,k8s}]``."""
    parser = argparse.ArgumentParser(description="Run the advreid DVC pipeline as a Prefect flow.")
    parser.add_argument("--project-dir", default=".", help="the DVC project (default: current directory)")
    parser.add_argument("--targets", nargs="+", help="stages to reproduce, with their upstream stages")
    parser.add_argument("--force", action="store_true", help="reproduce even stages DVC reports up to date")
    parser.add_argument("--max-parallel", type=int, help="stages at once (default: pipeline.max_parallel)")
    parser.add_argument(
        "--stage-runner", choices=STAGE_RUNNERS, help="local processes or one Kubernetes Job per stage "
        "(default: pipeline.stage_runner, settings in pipeline.k8s)",
    )  # fmt: skip
    return parser.parse_args(argv)


def cli(argv: Sequence[str] | None, run_flow: Callable[[argparse.Namespace, Plan | None], int]) -> int:
    """Answer an up-to-date pipeline here (summary table, exit 0); otherwise return ``run_flow(args, plan)``.

    ``plan`` is the one status pass the flow then reuses, or None with ``--force`` (every planned stage runs,
    so asking DVC what is stale would be wasted). ``run_flow`` is where Prefect gets imported.
    """
    args = parse_args(argv)
    # Before the flow starts: Prefect's ephemeral API reads PREFECT_HOME when it starts up.
    root = apply_environment(Path(args.project_dir))
    if args.force:
        return run_flow(args, None)
    # One DVC repository (one index) for the status and, when nothing is stale, the summary's metrics.
    with open_repo(root, lock=True) as repo:
        plan = _plan_of(repo, args.targets)
        metrics = None if plan.stale else _metrics_of(repo)
    if metrics is None:
        return run_flow(args, plan)
    records = [StageRecord(stage=stage, status="up-to-date", seconds=0.0) for stage in plan.stages]
    print(format_summary(records, headline(metrics, headline_patterns(root))))
    return 0
