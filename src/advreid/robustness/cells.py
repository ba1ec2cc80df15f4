"""Each matrix cell as an MLflow child run with its lineage, created only when the cell is new or changed.

The child run is tagged ``advreid.stage`` = the stage that produced the cell's numbers (``attack@small_cnn``), with
that stage's locked dep hashes (``advreid.dep.<path>.md5``: the model file and the processed data among them) and
its metrics file's out hash, so ``advreid audit <cell run id>`` re-verifies the cell's whole lineage and ``dvc repro
<stage>`` re-runs it alone. ``advreid.cell.*`` tags name the cell and its attack config.

A cache (``fingerprint -> run id``, persisted between runs) makes a second run with unchanged inputs create no run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from advreid.robustness.matrix import Cell
from advreid.tracking import lineage
from advreid.tracking.mlflow_run import STAGE_TAG, TrackedRun, experiment_id, flatten_params

CELL_TAG = "advreid.cell"
MATRIX_STAGE = "robustness_matrix"


@dataclass(frozen=True)
class CellLineage:
    """The producing stage of a cell and the hashes dvc.lock records for it."""

    stage: str
    deps: dict[str, str]
    outs: dict[str, str]

    @property
    def model_md5(self) -> str:
        return ";".join(f"{p}={h}" for p, h in sorted(self.deps.items()) if p.startswith("models/")) or "-"

    @property
    def data_md5(self) -> str:
        return ";".join(f"{p}={h}" for p, h in sorted(self.deps.items()) if p.startswith("data/")) or "-"

    def hashes(self) -> dict[str, str]:
        return {**{f"dep {p}": h for p, h in self.deps.items()}, **{f"out {p}": h for p, h in self.outs.items()}}


def cell_lineage(cell: Cell, lock: dict[str, lineage.LockedStage]) -> CellLineage:
    """The locked stage whose out holds ``cell.source``; raises LineageError when dvc.lock has none."""
    found = lineage.producer_of(cell.source, lock)
    if found is None:
        raise lineage.LineageError(f"dvc.lock: no stage produces {cell.source} (cell {cell.key})")
    stage, out = found
    deps = {d.path: d.md5 for d in stage.deps if d.md5 and not d.path.startswith("src/")}
    return CellLineage(stage.name, deps, {out.path: out.md5} if out.md5 else {})


def log_cells(
    parent: TrackedRun,
    cells: list[Cell],
    lock: dict[str, lineage.LockedStage],
    cache: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], int]:
    """One child run of ``parent`` per cell whose fingerprint is not in ``cache`` (fingerprint -> run id) or whose
    cached run is gone; returns ``{cell key: {fingerprint, run_id, stage, model_md5, data_md5, source_md5}}`` and
    how many runs were created."""
    client = parent.client
    experiment = experiment_id(client)
    records, created = {}, 0
    for cell in cells:
        where = cell_lineage(cell, lock)
        fingerprint = cell.fingerprint(where.hashes())
        run_id = cache.get(fingerprint)
        if run_id is None or not _exists(client, run_id):
            run_id = _create_cell_run(parent, experiment, cell, where)
            created += 1
        records[cell.key] = {
            "fingerprint": fingerprint,
            "run_id": run_id,
            "stage": where.stage,
            "model_md5": where.model_md5,
            "data_md5": where.data_md5,
            "source_md5": where.outs.get(cell.source, "-"),
        }
    return records, created


def _create_cell_run(parent: TrackedRun, experiment: str, cell: Cell, where: CellLineage) -> str:
    tags = {
        MLFLOW_RUN_NAME: f"cell {cell.key}",
        MLFLOW_PARENT_RUN_ID: parent.run_id,
        STAGE_TAG: where.stage,
        f"{CELL_TAG}.task": cell.task,
        f"{CELL_TAG}.model": cell.model,
        f"{CELL_TAG}.attack": cell.attack,
        f"{CELL_TAG}.budget": cell.budget,
        f"{CELL_TAG}.source": cell.source,
        f"{CELL_TAG}.matrix_stage": MATRIX_STAGE,
        f"{CELL_TAG}.model_md5": where.model_md5,
        f"{CELL_TAG}.data_md5": where.data_md5,
        **{f"advreid.dep.{p}.md5": h for p, h in where.deps.items()},
        **{f"advreid.out.{p}.md5": h for p, h in where.outs.items()},
        **{f"{CELL_TAG}.config.{k}": v for k, v in flatten_params(cell.config).items()},
    }
    run = parent.client.create_run(experiment, tags=tags, run_name=tags[MLFLOW_RUN_NAME])
    child = TrackedRun(parent.client, run.info.run_id)
    values: dict[str, float] = {}
    for name, spread in cell.metrics.items():
        interval = spread.interval()
        values[name] = spread.estimate
        values.update({f"{name}_{b}": v for b, v in (("low", interval.low), ("high", interval.high)) if v == v})
    child.log_metrics(values)
    parent.client.set_terminated(child.run_id, "FINISHED")
    return child.run_id


def _exists(client, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def read_cache(path: Path) -> dict[str, str]:
    """``fingerprint -> run id`` from a previous matrix (``reports/matrix/cells.json``); empty when absent."""
    import json

    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it to rebuild every cell") from err
    return {r["fingerprint"]: r["run_id"] for r in records.values()}
