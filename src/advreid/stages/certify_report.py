"""Stage ``certify_report``: Tables 6.1-6.7 of chapter 6 as one metrics JSON, Fig. 6.4 and Fig. 6.6.

Reads what ``certify@<method>``, ``certify_baseline`` and ``train_denoiser@<method>`` wrote for the methods of
``train_denoiser.methods``, including the per-point results for the paired tests (McNemar, paired bootstrap) and
the Clopper-Pearson intervals of ``statistics``. A table whose methods were not run says which to add instead
of printing numbers.

Outputs: ``reports/metrics/certify_report.json`` (the tables), ``reports/certify/tables.md`` (the same, for
reading, with the certification settings and how they differ from the thesis), and the figures
``reports/certify/certified_accuracy.png`` (certified accuracy vs L2 radius, all methods, one panel per sigma)
and ``reports/certify/training_curves.png`` (noisy validation accuracy per epoch).
"""

from __future__ import annotations

import argparse

from advreid.io import write_json, write_text
from advreid.params import load_params
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid certify-report", description=__doc__.splitlines()[0]).parse_args(argv)
    root = apply_environment()
    methods = list(load_params("train_denoiser.methods", root / "params.yaml"))
    q = int(load_params("train_denoiser.settings.q", root / "params.yaml"))
    dataset = load_params("train_classifier.dataset", root / "params.yaml")

    from advreid.certify.certification import read_points
    from advreid.certify.plots import plot_certified_accuracy, plot_training_curves
    from advreid.certify.report import BASELINE, build_tables, read_csv, read_json, render_markdown
    from advreid.tracking.mlflow_run import stage_run

    results = {
        name: read_json(root / "reports" / "metrics" / "certify" / f"{name}.json") for name in [BASELINE, *methods]
    }
    curves = {name: read_csv(root / "reports" / "certify" / "curves" / f"{name}.csv") for name in results}
    training = {name: read_csv(root / "reports" / "certify" / "training" / f"{name}.csv") for name in methods}
    folder = root / "reports" / "certify" / "points"
    points = {
        name: {s: read_points(folder / f"{name}_sigma_{s}.csv") for s in results[name]["sigma"]} for name in results
    }
    tables = build_tables(results, q, dataset, points)
    out = root / "reports" / "certify"
    with stage_run("certify_report", {"methods": methods, "q": q, "dataset": dataset}) as run:
        write_json(root / "reports" / "metrics" / "certify_report.json", tables)
        write_text(out / "tables.md", render_markdown(tables, results))
        figures = [
            plot_certified_accuracy(curves, results, out / "certified_accuracy.png"),
            plot_training_curves(training, results, out / "training_curves.png"),
        ]
        for path in [*figures, out / "tables.md"]:
            run.log_artifact(path, "certify")
        main_rows = tables["table_6_1"]["rows"]
        run.log_metrics(
            {f"table_6_1.{m}.{k}": v for m, row in main_rows.items() for k, v in row.items() if k != "type"}
        )
        for claim in tables["statistics"]["claims"]:
            for at, entry in claim["radii"].items():
                run.log_metrics(
                    {f"claim.{claim['better']}_vs_{claim['worse']}.{at}.pvalue": entry["mcnemar"]["pvalue"]}
                )
    settings = tables["settings"]
    print(f"certify_report: {len(methods)} methods; n = {settings['n']} (thesis {settings['thesis_n']}) -> {out}")
    return 0
