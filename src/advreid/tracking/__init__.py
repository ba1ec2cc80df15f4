"""MLflow and lineage helpers.

- :mod:`advreid.tracking.mlflow_run`: ``stage_run`` (one MLflow run per stage, lineage tags),
  ``parent_run`` and ``log_parent_lock`` for the pipeline flow.
- :mod:`advreid.tracking.lineage`: ``dvc.lock`` / ``dvc.yaml`` lineage and DVC-compatible hashing.
- :mod:`advreid.tracking.audit`: the ``advreid audit`` command.
- :mod:`advreid.tracking.metric_keys`: flat MLflow metric keys from metrics JSON, without MLflow.

Nothing is imported here so that ``advreid audit`` on a path does not pay MLflow's import time.
"""
