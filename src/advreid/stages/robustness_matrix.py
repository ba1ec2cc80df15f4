"""Stage ``robustness_matrix``: every model and defense x every attack and budget, and every chapter-6 method x sigma
x radius, read from the attack, defense, IPES-GAN and certification stages' metrics files (no model is re-run).

Each cell becomes an MLflow child run of this stage's run, tagged with the producing stage's locked model and data
hashes and the attack config (``advreid audit <cell run id>`` verifies it); a cell whose fingerprint (numbers +
lineage) is unchanged since the last run keeps its run and creates none. Cells no stage produces are listed under
``missing``.

Outputs: ``reports/metrics/robustness_matrix.json`` (cells with their intervals, run ids and lineage; ``missing``),
``reports/matrix/cells.json`` (the fingerprint cache, DVC ``persist``), ``reports/matrix/<task>.png`` heatmaps.
With ``robustness.register_models`` each chapter's final model (``robustness.registry``) is registered in the MLflow
model registry with its lineage and its matrix row (advreid.robustness.registry).
"""

from __future__ import annotations

import argparse
import sys

from advreid.io import write_json
from advreid.params import build, load_params
from advreid.robustness.settings import RobustnessParams
from advreid.settings import apply_environment

STAGE = "robustness_matrix"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid robustness-matrix", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = apply_environment()
    params = build(RobustnessParams, load_params("robustness", root / "params.yaml"), "robustness").check()

    from advreid.robustness.cells import log_cells, read_cache
    from advreid.robustness.matrix import collect
    from advreid.robustness.plots import heatmap
    from advreid.tracking import lineage
    from advreid.tracking.mlflow_run import stage_run

    # the seed of the main chapter-5 stages, the first of the defense_seeds cells (defense_seed@<k> adds the others)
    everything = load_params(path=root / "params.yaml")
    main_seed = int(((everything.get("defense") or {}).get("train") or {}).get("seed", 0))
    certify_main_seed = int(everything.get("seed", 0))  # chapter 6's main stages' (certify_seed@<k> adds the others)
    cells, missing = collect(root, teacher=params.teacher, main_seed=main_seed, certify_main_seed=certify_main_seed)
    lock = lineage.read_lock(root)
    cache_path = root / "reports" / "matrix" / "cells.json"
    with stage_run(STAGE, {"teacher": params.teacher, "heatmaps": list(params.heatmaps)}) as run:
        records, created = log_cells(run, cells, lock, read_cache(cache_path))
        matrix = {
            "cells": {c.key: {**c.as_dict(), **records[c.key]} for c in cells},
            "missing": missing,
        }
        write_json(root / "reports" / "metrics" / "robustness_matrix.json", matrix)
        write_json(cache_path, records)
        figures = [heatmap(cells, t, root / "reports" / "matrix" / f"{t}.png") for t in params.heatmaps]
        registered = []
        if params.register_models:
            from advreid.robustness.registry import register_final_models

            registered = register_final_models(run.client, root, params.registry, matrix["cells"], run.run_id, lock)
        run.log_metrics({"cells": len(cells), "cells_created": created, "cells_missing": len(missing)})
        run.log_artifact(root / "reports" / "metrics" / "robustness_matrix.json", "matrix")
        for figure in figures:
            run.log_artifact(figure, "matrix")
    print(f"{STAGE}: {len(cells)} cells ({created} new MLflow cell runs, {len(cells) - created} unchanged), "
          f"{len(missing)} missing")  # fmt: skip
    for model in registered:
        print(f"{STAGE}: registered model {model.name} version {model.version}{' (new)' if model.created else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
