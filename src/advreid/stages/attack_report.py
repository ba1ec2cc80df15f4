"""Stage ``attack_report``: the chapter-4 tables from ``attack@<model>`` and ``attack_sweep``, cross-model transfer
(Table 4.5) and the attack figures.

Tables (``reports/metrics/attack_report.json``, and ``reports/attack/tables.md`` for reading): white-box rank-1/5/10
and mAP before and after every attack on every model (Tables 4.1-4.4), the targeted attack's success, SSIM and MMD
(Table 4.6), transfer (Table 4.5: the adversarial images made on model A scored by model B, for every ordered pair of
models and every cell) and WMA's lambda / kernel-size sweeps. Figures: ``reports/attack/cmc.png`` (CMC before and
after, one panel per model) and ``reports/attack/samples/<model>.png``: clean / perturbation / adversarial images per
attack (Figs. 4.4-4.5).
"""

from __future__ import annotations

import argparse
import sys

from advreid.attacks.grid import AttackParams
from advreid.attacks.plots import plot_cmc, sample_grid
from advreid.attacks.report import ReportSettings, build_tables, read_cmc, read_json, render_markdown, transfer_table
from advreid.device import select_device, set_threads
from advreid.io import atomic_path, write_json, write_text
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid attack-report", description=__doc__.splitlines()[0]).parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(AttackParams, load_params("attack", root / "params.yaml"), "attack").check()
    settings = build(ReportSettings, params.report, "attack.report").check()
    models = list(reid.models)
    results = {m: read_json(root / "reports" / "metrics" / "attack" / f"{m}.json") for m in models}
    cells = {m: [cell.name for cell in params.grid()] for m in models}  # in params order
    for m in models:
        missing = sorted(set(cells[m]) - set(results[m]["cells"]))
        if missing:
            raise ValueError(f"reports/metrics/attack/{m}.json lacks cells {missing} of params.yaml: rerun attack@{m}")
        results[m]["cells"] = {name: results[m]["cells"][name] for name in cells[m]}
    sweep_path = root / "reports" / "metrics" / "attack_sweep.json"
    sweep = read_json(sweep_path) if sweep_path.is_file() else None
    curves = {m: read_cmc(root / "reports" / "attack" / "cmc" / f"{m}.csv") for m in models}
    set_threads(reid.threads, "reid.threads")
    device = select_device(reid.device)

    from advreid.tracking.mlflow_run import stage_run

    out = root / "reports" / "attack"
    with stage_run("attack_report", {"models": models, "source": reid.source, "report": params.report}) as run:
        transfer = transfer_table(models, cells, root, reid, params.batch_size, device)
        tables = build_tables(results, transfer, sweep)
        metrics_path = root / "reports" / "metrics" / "attack_report.json"
        write_json(metrics_path, tables)
        write_text(out / "tables.md", render_markdown(tables, results))
        figures = [plot_cmc(curves, out / "cmc.png")]
        with atomic_path(out / "samples", is_dir=True) as tmp:
            for m in models:
                sample_grid(m, results[m], root, settings.images, tmp / f"{m}.png")
        for path in [metrics_path, out / "tables.md", *figures, *(out / "samples").glob("*.png")]:
            run.log_artifact(path, "attack")
        run.log_metrics(
            {
                f"transfer.{pair.replace('->', '_to_')}.{cell}.mAP": s["mAP"]  # MLflow keys allow no '>'
                for pair, row in transfer.items()
                for cell, s in row.items()
            }
        )
    for model, rows in tables["white_box"].items():
        clean = rows["clean"]
        worst = min((c for c in rows if c != "clean"), key=lambda c: rows[c]["mAP"])
        print(
            f"attack_report: {model}: clean mAP {clean['mAP']:.3f}; "
            f"lowest after attack {rows[worst]['mAP']:.3f} ({worst})"
        )
    for pair, row in transfer.items():
        print(f"attack_report: transfer {pair}: " + ", ".join(f"{c} mAP {s['mAP']:.3f}" for c, s in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
