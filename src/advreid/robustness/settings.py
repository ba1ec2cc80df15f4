"""The ``robustness`` section of params.yaml: the matrix, the claims and the HTML report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from advreid.params import ParamsError
from advreid.robustness.plots import HEATMAPS


@dataclass(frozen=True)
class RobustnessParams:
    """``heatmaps``: tasks drawn (keys of advreid.robustness.plots.HEATMAPS); ``teacher``: the Re-ID model IPES-GAN
    adapts (names the direct-transfer row); ``seeds``: the seeds the claims' training stages run (recorded with each
    claim; chapter 3 trains ``gan.seeds``); ``register_models``: register each chapter's final model in the MLflow
    model registry: ``registry`` maps a registry name to ``{path, task, row, chapter}`` (the DVC output, and the
    matrix row that becomes its description); ``report``: ``mlflow_ui`` (the MLflow UI address the HTML page links
    to), ``tables`` and ``figures`` (title -> path of a chapter stage's Markdown table / PNG figure, embedded)."""

    teacher: str
    seeds: tuple[int, ...] = (0, 1, 2)
    heatmaps: tuple[str, ...] = tuple(HEATMAPS)
    register_models: bool = True
    report: dict[str, Any] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)

    def check(self, where: str = "robustness") -> RobustnessParams:
        unknown = sorted(set(self.heatmaps) - set(HEATMAPS))
        if unknown:
            raise ParamsError(f"{where}.heatmaps: unknown task(s) {unknown}; valid: {sorted(HEATMAPS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(f"{where}.seeds: need distinct seeds, got {list(self.seeds)}")
        for key in ("tables", "figures"):
            if not isinstance(self.report.get(key, {}), dict):
                raise ParamsError(f"{where}.report.{key}: expected a mapping title -> path")
        unknown = sorted(set(self.report) - {"mlflow_ui", "tables", "figures"})
        if unknown:
            raise ParamsError(f"{where}.report: unknown key(s) {unknown}; valid: ['figures', 'mlflow_ui', 'tables']")
        return self
