"""The one tracking helper: one MLflow run per stage, nested under the pipeline's parent run.

A stage opens :func:`stage_run`; the Prefect flow opens :func:`parent_run` around ``dvc repro`` (its id
reaches the stage processes through ``ADVREID_MLFLOW_PARENT_RUN_ID``) and calls :func:`log_parent_lock`
once the repro is done, because a stage cannot see its own outs' hashes (DVC writes the lock entry
after the stage exits).

Runs are created through ``MlflowClient`` with explicit run ids rather than MLflow's fluent "active
run" stack, which is thread-local and refuses a parent that is not the active run. The tags MLflow's
fluent ``start_run(parent_run_id=...)`` would set (``mlflow.parentRunId``, ``mlflow.runName`` and the
source/user/git context tags) are set the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from advreid.io import sha256_file
from advreid.settings import project_root
from advreid.tracking import lineage
from advreid.tracking.metric_keys import numeric_leaves as numeric_leaves  # re-exported for the stages

PARENT_RUN_ENV = "ADVREID_MLFLOW_PARENT_RUN_ID"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
ARTIFACTS_ENV = "ADVREID_MLFLOW_ARTIFACTS"
DEFAULT_EXPERIMENT = "advreid"
STAGE_TAG = "advreid.stage"
TRUNCATED = "...[truncated]"


class TrackedRun:
    """A handle on one open MLflow run; every call names the run id, so threads can share it."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (numbers, numpy or torch scalars) at ``step`` (0 when None)."""
        now = _now_ms()
        entries = [Metric(key, _as_float(key, value), now, step or 0) for key, value in metrics.items()]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) params mapping flattened to ``a.b.c`` keys; see :func:`flatten_params`.

        Values over MLflow's length limit are cut and the whole mapping is also logged as the
        artifact ``params.json``, so nothing is lost.
        """
        flat = flatten_params(params)
        entries = [Param(key, _truncate(value, MAX_PARAM_VAL_LENGTH)) for key, value in flat.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        if any(len(value) > MAX_PARAM_VAL_LENGTH for value in flat.values()):
            self.client.log_dict(self.run_id, _jsonable(params), "params.json")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(key, _truncate(str(value), MAX_TAG_VAL_LENGTH)) for key, value in tags.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"log_artifact: {path} is not a file")
        self.client.log_artifact(self.run_id, os.fspath(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not Path(directory).is_dir():
            raise NotADirectoryError(f"log_artifacts: {directory} is not a directory")
        self.client.log_artifacts(self.run_id, os.fspath(directory), artifact_path)

    def log_figure(self, fig: Any, name: str) -> None:
        """Save a matplotlib figure as the artifact ``name`` (e.g. ``"plots/cmc.png"``)."""
        self.client.log_figure(self.run_id, fig, name)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}``; lists and tuples become JSON strings (``"[1, 2]"``)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, Mapping):
            flat[name] = "{}"
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(_jsonable(value))
        else:
            flat[name] = str(value)
    return flat


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's SQLite file ``<root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or project_root()).resolve() / 'mlflow.db'}"


def get_client(root: Path | None = None) -> MlflowClient:
    """A client of :func:`tracking_uri`. With a SQLite file, opening the store (which creates and migrates
    a new database) holds an exclusive lock on ``<db>-lock``: two stage processes starting at once on a
    fresh database otherwise both run MLflow's migrations and one fails (measured: ``duplicate column``)."""
    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri.removeprefix("sqlite:///"))
    lock_path = db.with_name(db.name + "-lock")  # git-ignored with the database (mlflow.db-*)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=uri)
            client._tracking_client.store  # noqa: B018 - the store is created (and migrated) here, under the lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def artifact_location(tracking: str, root: Path | None = None) -> str | None:
    """Where the project's experiments keep their artifacts, as a URI.

    ``$ADVREID_MLFLOW_ARTIFACTS`` when set: a URI (``s3://bucket/prefix``, with ``MLFLOW_S3_ENDPOINT_URL`` for
    a non-AWS server) or a path, relative paths taken from the project root. Otherwise, with a SQLite store,
    ``mlruns/`` beside the database file (rather than under whatever the current directory is); with a
    tracking server, None: the server's ``--default-artifact-root`` decides.
    """
    configured = os.environ.get(ARTIFACTS_ENV)
    if configured:
        if "://" in configured:
            return configured.rstrip("/")
        path = Path(configured)
        return (path if path.is_absolute() else (root or project_root()) / path).resolve().as_uri()
    if tracking.startswith("sqlite:///"):
        return (Path(tracking.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


def experiment_id(client: MlflowClient, root: Path | None = None) -> str:
    """Id of the experiment named by ``MLFLOW_EXPERIMENT_NAME`` (default ``advreid``), created if absent,
    with its artifacts at :func:`artifact_location`.

    MLflow stores an absolute artifact location (it resolves relative ones), so a moved or copied project
    would keep writing into the old folder: an existing experiment whose location is not the configured one
    (``$ADVREID_MLFLOW_ARTIFACTS`` set to another place, or, unset, an ``mlruns/`` that is not beside this
    database) is pointed at the configured one. Runs made before keep their own artifact URIs.
    """
    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    location = artifact_location(client.tracking_uri, root)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as err:  # another stage process created it first
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise MlflowException(
            f"MLflow experiment {name!r} is deleted; restore it or set {EXPERIMENT_ENV} to another name"
        )
    stored = experiment.artifact_location
    moved = stored.startswith("file:") and stored.rstrip("/").endswith("/mlruns")
    if location and stored != location and (os.environ.get(ARTIFACTS_ENV) or moved):
        _set_artifact_location(client, experiment.experiment_id, location)
    return experiment.experiment_id


def _set_artifact_location(client: MlflowClient, experiment: str, location: str) -> None:
    """Point an experiment at ``location``; MLflow has no public API for it, so its SQL store's own model
    is updated (only a SQL store keeps the location where the project can change it)."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        raise MlflowException(
            f"MLflow experiment {experiment} keeps its artifacts at another location than {location}; "
            f"{ARTIFACTS_ENV} can change it only with a SQL tracking store: unset {ARTIFACTS_ENV} or use a new "
            f"{EXPERIMENT_ENV}"
        )
    with store.ManagedSessionMaker() as session:
        session.query(SqlExperiment).filter(SqlExperiment.experiment_id == int(experiment)).update(
            {SqlExperiment.artifact_location: location}
        )


@contextlib.contextmanager
def stage_run(
    stage: str | None,
    params: Mapping[str, Any],
    *,
    manifests: Mapping[str, str | os.PathLike] | None = None,
    root: Path | None = None,
) -> Iterator[TrackedRun]:
    """Open one MLflow run for a pipeline stage and close it FINISHED, or FAILED on an exception.

    The run is named after the stage, nested under ``$ADVREID_MLFLOW_PARENT_RUN_ID`` when set, logs
    ``params`` flattened, and is tagged with ``advreid.stage``, ``advreid.git.commit``,
    ``advreid.git.dirty``, ``advreid.dep.<path>.md5`` for every dep ``dvc.yaml`` declares for the
    stage (the md5 the upstream stage's out has in ``dvc.lock``; see :func:`lineage.dep_hashes`) and
    ``advreid.manifest.<name>.sha256`` / ``.path`` for each manifest.

    Args:
        stage: DVC stage name (``ingest@market1501``); None takes ``$DVC_STAGE``.
        params: the stage's section of ``params.yaml``.
        manifests: name -> parquet manifest path consumed by the stage.
        root: project root; default :func:`advreid.settings.project_root`.
    """
    stage = stage or os.environ.get("DVC_STAGE")
    if not stage:
        raise ValueError("stage_run: no stage name given and DVC_STAGE is not set")
    root = (root or project_root()).resolve()
    tags: dict[str, Any] = {STAGE_TAG: stage, **_git_tags(root)}
    try:
        tags.update({f"advreid.dep.{path}.md5": md5 for path, md5 in lineage.dep_hashes(root, stage).items()})
    except lineage.LineageError as err:
        # Missing lineage must not stop a stage that is run by hand; the tag makes the gap visible.
        tags["advreid.lineage.error"] = str(err)
    for name, path in (manifests or {}).items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"stage_run: manifest {name!r} at {path} does not exist")
        tags[f"advreid.manifest.{name}.sha256"] = sha256_file(path)
        tags[f"advreid.manifest.{name}.path"] = lineage.normalize(path, root)
    with _run(root, stage, tags, os.environ.get(PARENT_RUN_ENV) or None) as run:
        run.log_params(params)
        yield run


@contextlib.contextmanager
def parent_run(name: str, params: Mapping[str, Any] | None = None, *, root: Path | None = None) -> Iterator[TrackedRun]:
    """Open the pipeline's parent run and export its id as ``ADVREID_MLFLOW_PARENT_RUN_ID`` for the
    stage processes started while it is open (nested itself when that variable was already set)."""
    root = (root or project_root()).resolve()
    previous = os.environ.get(PARENT_RUN_ENV)
    tags = {"advreid.pipeline": name, **_git_tags(root)}
    with _run(root, name, tags, previous or None) as run:
        os.environ[PARENT_RUN_ENV] = run.run_id
        try:
            if params:
                run.log_params(params)
            yield run
        finally:
            if previous is None:
                os.environ.pop(PARENT_RUN_ENV, None)
            else:
                os.environ[PARENT_RUN_ENV] = previous


def log_parent_lock(parent: TrackedRun, root: Path | None = None) -> list[str]:
    """Log ``dvc.lock`` as the artifact ``lineage/dvc.lock`` of the parent run and tag each finished
    child stage run with ``advreid.out.<path>.md5`` for its stage's outs in the lock.

    Call after ``dvc repro`` has returned. Returns the ids of the child runs that were tagged.
    """
    root = (root or project_root()).resolve()
    lock_path = root / lineage.LOCK_FILE
    if not lock_path.is_file():
        raise FileNotFoundError(f"log_parent_lock: {lock_path} does not exist")
    parent.client.log_artifact(parent.run_id, os.fspath(lock_path), "lineage")
    lock = lineage.read_lock(root)
    experiment = parent.client.get_run(parent.run_id).info.experiment_id
    children = parent.client.search_runs(
        [experiment], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.run_id}'"
    )
    tagged = []
    for child in children:
        stage = lock.get(child.data.tags.get(STAGE_TAG, ""))
        if stage is None or child.info.status != "FINISHED":
            continue
        TrackedRun(parent.client, child.info.run_id).set_tags(
            {f"advreid.out.{out.path}.md5": out.md5 for out in stage.outs if out.md5}
        )
        tagged.append(child.info.run_id)
    return tagged


@contextlib.contextmanager
def _run(root: Path, name: str, tags: dict[str, Any], parent_id: str | None) -> Iterator[TrackedRun]:
    client = get_client(root)
    tags = {**tags, MLFLOW_RUN_NAME: name}
    if parent_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_id
    created = client.create_run(experiment_id(client, root), tags=resolve_tags(tags), run_name=name)
    run = TrackedRun(client, created.info.run_id)
    try:
        yield run
    except BaseException as err:
        # A tracking error here must not hide the stage's own exception.
        with contextlib.suppress(MlflowException):
            run.set_tags({"advreid.error": f"{type(err).__name__}: {err}"})
        with contextlib.suppress(MlflowException):
            client.set_terminated(run.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run.run_id, "FINISHED")


def _git_tags(root: Path) -> dict[str, str]:
    commit, dirty = lineage.git_state(root)
    return {"advreid.git.commit": commit, "advreid.git.dirty": dirty}


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, str | bytes):
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {key!r}: expected a number or a one-element array, got {value!r}") from err


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(TRUNCATED)] + TRUNCATED


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so numpy / Path values become plain types."""
    return json.loads(json.dumps(value, default=str))


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)
