"""``advreid compare A B``: the metrics of two runs side by side, their difference, and whether the two intervals
are apart.

A and B are each an MLflow run id (a pipeline parent run, a stage run or a matrix cell run: the run's own metrics
plus those of its child runs, prefixed ``<child run name>/``, two levels down) or a DVC experiment name or git
revision (the metrics files DVC tracks at that revision, ``dvc metrics show``). An interval is read from a metric's
siblings: ``<m>_low`` / ``<m>_high`` (MLflow cell runs) or ``<m>.low`` / ``<m>.high`` beside ``<m>.estimate``
(the matrix JSON). ``apart`` is True when both metrics have intervals and they do not overlap, False when they
overlap, and empty when either has none.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CHILD_DEPTH = 2  # parent pipeline run -> stage runs -> matrix cell runs


@dataclass(frozen=True)
class Side:
    """One compared thing: its metrics and the intervals found beside them."""

    name: str
    kind: str  # run | revision
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Row:
    metric: str
    a: float | None
    b: float | None
    difference: float | None
    a_interval: tuple[float, float] | None
    b_interval: tuple[float, float] | None
    apart: bool | None


def split_intervals(values: dict[str, float]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Separate interval bounds from the metrics: ``m_low``/``m_high`` beside ``m``, and ``m.low``/``m.high``
    beside ``m.estimate`` (reported as the metric ``m``), become the interval of ``m``."""
    metrics, intervals = {}, {}
    for key, value in values.items():
        if key.endswith(".estimate"):
            name = key.removesuffix(".estimate")
            low, high = values.get(f"{name}.low"), values.get(f"{name}.high")
        elif _is_bound(key, values):
            continue
        else:
            name = key
            low, high = values.get(f"{key}_low"), values.get(f"{key}_high")
        metrics[name] = value
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            intervals[name] = (low, high)
    return metrics, intervals


def _is_bound(key: str, values: dict[str, float]) -> bool:
    for suffix, sibling in (("_low", ""), ("_high", ""), (".low", ".estimate"), (".high", ".estimate")):
        if key.endswith(suffix) and key.removesuffix(suffix) + sibling in values:
            return True
    return False


def compare(a: Side, b: Side, *, changed_only: bool = False) -> list[Row]:
    """One row per metric of either side (sorted); ``changed_only`` keeps rows whose values differ."""
    rows = []
    for metric in sorted(set(a.metrics) | set(b.metrics)):
        va, vb = a.metrics.get(metric), b.metrics.get(metric)
        if changed_only and va == vb:
            continue
        ia, ib = a.intervals.get(metric), b.intervals.get(metric)
        apart = None if ia is None or ib is None else bool(ia[1] < ib[0] or ib[1] < ia[0])
        difference = None if va is None or vb is None else vb - va
        rows.append(Row(metric, va, vb, difference, ia, ib, apart))
    return rows


def load_run(client, run_id: str, depth: int = CHILD_DEPTH) -> Side:
    """An MLflow run's metrics and, ``depth`` levels down, its children's (prefixed by the child's run name)."""
    run = client.get_run(run_id)
    values = dict(run.data.metrics)
    values.update(_children(client, run.info.experiment_id, run_id, depth, prefix=""))
    metrics, intervals = split_intervals(values)
    return Side(run.data.tags.get("mlflow.runName", run_id), "run", metrics, intervals)


def _children(client, experiment: str, run_id: str, depth: int, prefix: str) -> dict[str, float]:
    if depth == 0:
        return {}
    values: dict[str, float] = {}
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    names: dict[str, int] = {}
    for child in sorted(children, key=lambda r: r.info.start_time):
        name = child.data.tags.get("mlflow.runName", child.info.run_id)
        names[name] = names.get(name, 0) + 1
        label = name if names[name] == 1 else f"{name}#{names[name]}"  # a stage run twice under one parent
        values.update({f"{prefix}{label}/{k}": v for k, v in child.data.metrics.items()})
        values.update(_children(client, experiment, child.info.run_id, depth - 1, f"{prefix}{label}/"))
    return values


def load_revision(root: Path, rev: str) -> Side:
    """The DVC-tracked metrics files at a git revision or DVC experiment name (``dvc metrics show``)."""
    import dvc.api
    from dvc.exceptions import DvcException

    from advreid.tracking.mlflow_run import numeric_leaves

    try:
        shown = dvc.api.metrics_show(repo=str(root), rev=rev)
    except DvcException as err:
        raise ValueError(f"{rev!r} is neither an MLflow run id nor a git revision / DVC experiment: {err}") from err
    metrics, intervals = split_intervals(numeric_leaves(shown))
    return Side(rev, "revision", metrics, intervals)


def resolve(root: Path, target: str, client=None) -> Side:
    """A run id that MLflow knows, else a revision."""
    if RUN_ID.match(target):
        from mlflow.exceptions import MlflowException

        from advreid.tracking.mlflow_run import get_client

        client = client or get_client(root)
        try:
            return load_run(client, target)
        except MlflowException:  # a 32-hex git sha is possible: try it as a revision
            return load_revision(root, target)
    return load_revision(root, target)


def format_table(a: Side, b: Side, rows: list[Row]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    def span(interval: tuple[float, float] | None) -> str:
        return "" if interval is None else f"[{interval[0]:.3g}, {interval[1]:.3g}]"

    header = ("METRIC", f"A ({a.name})", f"B ({b.name})", "B-A", "A INTERVAL", "B INTERVAL", "APART")
    body = [(r.metric, num(r.a), num(r.b), num(r.difference), span(r.a_interval), span(r.b_interval),
             "" if r.apart is None else ("yes" if r.apart else "no")) for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]]
    apart = sum(r.apart is True for r in rows)
    lines.append(f"{len(rows)} metrics, {sum(r.difference not in (None, 0.0) for r in rows)} differ, "
                 f"{apart} with intervals apart")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="MLflow run id, DVC experiment name or git revision")
    parser.add_argument("b", help="MLflow run id, DVC experiment name or git revision")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--changed", action="store_true", help="only the metrics whose values differ")
    parser.add_argument("--filter", default="", help="only metrics whose name contains this text")
    args = parser.parse_args(argv)
    from advreid.settings import project_root

    root = project_root()
    a, b = resolve(root, args.a), resolve(root, args.b)
    rows = [r for r in compare(a, b, changed_only=args.changed) if args.filter in r.metric]
    if args.json:
        out: dict[str, Any] = {"a": {"name": a.name, "kind": a.kind}, "b": {"name": b.name, "kind": b.kind},
                               "rows": [asdict(r) for r in rows]}  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        print(format_table(a, b, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
