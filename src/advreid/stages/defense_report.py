"""Stage ``defense_report``: the chapter-5 report from every ``eval_defense`` metrics file: Tables 5.1-5.7 (demo
rows beside the thesis' rows), the gradient-masking flags, the chapter's claims judged on the demo, and the
rank-1 vs eps plot.

Outputs: ``reports/metrics/mp_snn.json`` (``{model: {cell: {rank1, mAP, rank1_std}}}``, percent, with a ``clean``
cell; the masking checks stay in each ``reports/metrics/defense/<model>.json``),
``reports/defense/tables.md``, ``reports/defense/rank1_vs_eps.png``.
"""

from __future__ import annotations

import argparse
import json
import sys

from advreid.defense.report import cell_table, eps_figure, judge_claims, tables_markdown
from advreid.defense.training import DefenseParams
from advreid.io import write_json, write_text
from advreid.params import ParamsError, build, load_params
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid defense-report", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = apply_environment()
    params = build(DefenseParams, load_params("defense", root / "params.yaml"), "defense")
    budget = params.report.get("budget", "eps8")
    rerank_budget = params.report.get("rerank_budget")  # Table 5.5's budget (eps 5/255, re-ranking)
    for key, value in (("budget", budget), ("rerank_budget", rerank_budget)):
        if value is not None and value not in params.eval.get("budgets", {}):
            raise ParamsError(f"defense.report.{key}: {value!r} is not in defense.eval.budgets")
    metrics = {}
    for name in params.evaluate:
        path = root / "reports" / "metrics" / "defense" / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run eval_defense@{name} first")
        metrics[name] = json.loads(path.read_text())

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    with stage_run("defense_report", {"budget": budget, "models": list(metrics)}) as run:
        table = cell_table(metrics)
        masking = {name: m["masking"] for name, m in metrics.items()}
        claims = judge_claims(table, budget)
        write_json(root / "reports" / "metrics" / "mp_snn.json", table)
        write_text(
            root / "reports" / "defense" / "tables.md", tables_markdown(table, budget, masking, claims, rerank_budget)
        )
        figure = eps_figure(metrics, root / "reports" / "defense" / "rank1_vs_eps.png")
        run.log_metrics(numeric_leaves(table))
        for path in (root / "reports" / "defense" / "tables.md", figure):
            run.log_artifact(path, "defense")
    for line in claims:
        print(f"defense_report: {line}")
    flagged = [name for name, check in masking.items() if not check["passed"]]
    print(f"defense_report: gradient-masking check flagged {flagged or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
