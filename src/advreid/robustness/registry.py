"""Each chapter's final model in the MLflow model registry, with its lineage as tags and its row of the robustness
matrix as the description, so that ``mlflow models`` / the registry UI users find it and what it is worth.

A version points at the DVC-tracked file or directory (``file://`` URI; the bytes stay in DVC's cache, nothing is
copied into MLflow) and is tagged with the md5 ``dvc.lock`` records for it; a new version is created only when that
md5 changes, so re-running the stage registers nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from advreid.robustness.html import cell_text
from advreid.tracking import lineage

MD5_TAG = "advreid.model.md5"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    created: bool


def matrix_row(cells: dict[str, dict[str, Any]], task: str, model: str) -> str:
    """The model's row of the matrix as Markdown: ``| attack | metric [95% interval] | run |``."""
    from advreid.robustness.plots import HEATMAPS

    metric = HEATMAPS[task][0]
    row = [c for c in cells.values() if c["task"] == task and c["model"] == model and metric in c["metrics"]]
    if not row:
        raise ValueError(f"robustness matrix: no {task!r} row for model {model!r}")
    lines = [f"Robustness matrix row ({task}, {metric} in %, 95% interval):", "", "| attack | budget | value | run |",
             "|---|---|---|---|"]  # fmt: skip
    for c in sorted(row, key=lambda c: (c["attack"] != "clean", c["attack"], c["budget"])):
        lines.append(f"| {c['attack']} | {c['budget']} | {cell_text(c['metrics'][metric])} | {c.get('run_id', '')} |")
    return "\n".join(lines)


def register_final_models(
    client,
    root: Path,
    entries: dict[str, dict[str, str]],
    cells: dict[str, dict[str, Any]],
    run_id: str,
    lock: dict[str, lineage.LockedStage],
) -> list[Registered]:
    """Register ``entries`` (registry name -> ``{path, task, row, chapter}``) under the run ``run_id``."""
    done = []
    for name, entry in entries.items():
        missing = sorted({"path", "task", "row", "chapter"} - set(entry))
        if missing:
            raise ValueError(f"robustness.registry.{name}: missing key(s) {missing}")
        path = lineage.normalize(entry["path"], root)
        found = lineage.producer_of(path, lock)
        if found is None or not (root / path).exists():
            raise FileNotFoundError(f"robustness.registry.{name}: {path} is not a DVC output on disk")
        stage, out = found
        md5 = out.md5 if out.path == path else lineage.hash_path(root / path)
        description = matrix_row(cells, entry["task"], entry["row"])
        tags = {
            MD5_TAG: md5 or "-",
            "advreid.model.path": path,
            "advreid.model.stage": stage.name,
            "advreid.chapter": str(entry["chapter"]),
            "advreid.git.commit": lineage.git_state(root)[0],
            **{f"advreid.dep.{d.path}.md5": d.md5 for d in stage.deps if d.md5 and not d.path.startswith("src/")},
        }
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, tags={"advreid.chapter": str(entry["chapter"])})
        latest = _latest(client, name)
        if latest is not None and latest.tags.get(MD5_TAG) == tags[MD5_TAG]:
            client.update_model_version(name, latest.version, description=description)
            done.append(Registered(name, str(latest.version), False))
            continue
        version = client.create_model_version(
            name, source=(root / path).resolve().as_uri(), run_id=run_id, tags=tags, description=description
        )
        client.update_registered_model(name, description=description)
        done.append(Registered(name, str(version.version), True))
    return done


def _latest(client, name: str):
    versions = client.search_model_versions(f"name = '{name}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None
