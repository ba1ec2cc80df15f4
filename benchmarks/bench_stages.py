"""Each stage's wall time in the project's last full pipeline run (the flow logs ``seconds.<stage>`` to its MLflow
parent run), with the run's own wall time: what `make run` costs, stage by stage, as it was last measured here.

Nothing is run: a whole demo pipeline takes minutes, so this reads the most recent finished parent run of
``python flows/pipeline.py`` (``make run``; ``--force`` for a run of every stage) that ran more than half of the
pipeline's stages. Without one it reports nothing and says so.
"""

from __future__ import annotations

import sys

from .common import Measurement

MIN_FRACTION = 0.5  # a parent run that ran fewer of the stages is a partial re-run, not the pipeline's cost


def run() -> list[Measurement]:
    from mlflow import MlflowClient

    from advreid.pipeline_plan import build_plan
    from advreid.settings import project_root
    from advreid.tracking.mlflow_run import DEFAULT_EXPERIMENT

    root = project_root()
    client = MlflowClient()
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    stages = build_plan(root).stages
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            "tags.`advreid.pipeline` = 'pipeline' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
        for found in runs:
            seconds = {k.removeprefix("seconds."): v for k, v in found.data.metrics.items() if k.startswith("seconds.")}
            if len(seconds) < MIN_FRACTION * len(stages):
                continue
            wall = (found.info.end_time - found.info.start_time) / 1000
            params = found.data.params
            note = f"run {found.info.run_id[:8]}, force={params.get('force')}"
            note += f", max_parallel={params.get('max_parallel')}"
            results = [
                Measurement("pipeline wall", wall, "s", f"{note}, {len(seconds)} of {len(stages)} stages ran"),
                Measurement("sum of stage walls", sum(seconds.values()), "s", "over the stages that ran"),
            ]
            ordered = sorted(seconds.items(), key=lambda item: -item[1])
            return results + [Measurement(f"  {stage}", s, "s", "flow summary") for stage, s in ordered]
    print("bench_stages: no finished pipeline run in MLflow ran most stages: run `make run` first", file=sys.stderr)
    return []
