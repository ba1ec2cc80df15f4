"""stage_run / parent_run / log_parent_lock against a real `dvc repro`, and the lineage helpers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from advreid.tracking import lineage
from advreid.tracking.mlflow_run import (
    PARENT_RUN_ENV,
    TRUNCATED,
    flatten_params,
    get_client,
    log_parent_lock,
    parent_run,
    stage_run,
)
from tests.unit.tracking import RAW, build_toy_project, tool_env


@dataclass
class Toy:
    root: Path
    tmp: Path
    parent_id: str
    tagged: list[str]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    """The toy project reproduced once inside a parent run, its `train` stage tracked by stage_run."""
    tmp = tmp_path_factory.mktemp("tracking")
    root = tmp / "project"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "advreid-test")
        mp.setenv("DVC_SITE_CACHE_DIR", str(tmp / "dvc-site-cache"))
        for name in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
            mp.setenv(name, "true")
        mp.delenv(PARENT_RUN_ENV, raising=False)
        mp.delenv("DVC_STAGE", raising=False)
        with parent_run("toy-pipeline", {"profile": "test"}, root=root) as parent:
            build_toy_project(root, tool_env(tmp, TOY_TRACK="1"), git=True)
            tagged = log_parent_lock(parent, root)
        yield Toy(root, tmp, parent.run_id, tagged)


def _lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _children(toy: Toy):
    client = get_client(toy.root)
    experiment = client.get_run(toy.parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{toy.parent_id}'")


def test_flatten_params_dotted_keys_and_list_strings():
    params = {"a": {"b": 1, "c": {"d": "x"}}, "lst": [1, 2.5], "t": (True, None), "e": {}}
    assert flatten_params(params) == {
        "a.b": "1",
        "a.c.d": "x",
        "lst": "[1, 2.5]",
        "t": "[true, null]",
        "e": "{}",
    }


def test_stage_run_inside_dvc_repro_nests_and_tags_lineage(toy: Toy):
    children = _children(toy)
    assert [run.info.run_name for run in children] == ["train"]
    run = children[0]
    tags, lock = run.data.tags, _lock(toy.root)
    assert run.info.status == "FINISHED"
    assert tags["advreid.stage"] == "train"  # taken from DVC_STAGE
    assert tags["mlflow.parentRunId"] == toy.parent_id
    assert run.data.params == {"lr": "0.5", "layers": "[4, 2]"}
    assert run.data.metrics == {"rows": float(len(RAW))}
    # the dep on an upstream out carries the md5 that the upstream stage's lock entry records ...
    ingest_out = lock["ingest@toy"]["outs"][0]
    assert ingest_out["path"] == "data/processed/toy"
    assert tags["advreid.dep.data/processed/toy.md5"] == ingest_out["md5"]
    # ... which is what DVC then locked as train's dep; a source dep carries its file md5
    train_deps = {d["path"]: d["md5"] for d in lock["train"]["deps"]}
    assert tags["advreid.dep.data/processed/toy.md5"] == train_deps["data/processed/toy"]
    assert tags["advreid.dep.train.py.md5"] == _md5(toy.root / "train.py") == train_deps["train.py"]
    parquet = toy.root / "data/processed/toy/train.parquet"
    assert tags["advreid.manifest.toy/train.sha256"] == hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert tags["advreid.manifest.toy/train.path"] == "data/processed/toy/train.parquet"
    # the stage ran on the first commit, with only DVC's products (ingest@toy's lock entry, DVC's .gitignore
    # files) not yet committed: those are not the user's changes, so the tree counts as clean
    first = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=toy.root, capture_output=True, text=True)
    assert (tags["advreid.git.commit"], tags["advreid.git.dirty"]) == (first.stdout.strip(), "false")


def test_log_parent_lock_logs_lock_and_tags_child_outs(toy: Toy):
    client = get_client(toy.root)
    child = _children(toy)[0]
    assert toy.tagged == [child.info.run_id]
    assert child.data.tags["advreid.out.models/model.json.md5"] == _md5(toy.root / "models/model.json")
    logged = client.download_artifacts(toy.parent_id, "lineage/dvc.lock", str(toy.tmp / "download"))
    assert Path(logged).read_bytes() == (toy.root / "dvc.lock").read_bytes()
    parent = client.get_run(toy.parent_id)
    assert parent.data.params == {"profile": "test"}
    assert parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags


def test_parent_run_sets_env_only_while_open(toy: Toy, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    with parent_run("outer", root=toy.root) as outer:
        assert outer.run_id and os.environ[PARENT_RUN_ENV] == outer.run_id
        with parent_run("inner", root=toy.root) as inner:
            with stage_run("train", {}, root=toy.root) as child:
                pass
        assert os.environ[PARENT_RUN_ENV] == outer.run_id
    assert PARENT_RUN_ENV not in os.environ
    client = get_client(toy.root)
    assert client.get_run(inner.run_id).data.tags["mlflow.parentRunId"] == outer.run_id
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == inner.run_id


def test_stage_run_marks_failure_and_reraises(toy: Toy):
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("train", {"lr": 1}, root=toy.root) as run:
            run.log_metrics({"loss": 0.25}, step=3)
            raise RuntimeError("boom")
    record = get_client(toy.root).get_run(run.run_id)
    assert record.info.status == "FAILED"
    assert record.data.tags["advreid.error"] == "RuntimeError: boom"
    assert record.data.metrics == {"loss": 0.25}


def test_long_param_is_cut_and_kept_whole_in_an_artifact(toy: Toy):
    long = "x" * 7000
    with stage_run("train", {"note": long, "k": 1}, root=toy.root) as run:
        pass
    client = get_client(toy.root)
    logged = client.get_run(run.run_id).data.params["note"]
    assert len(logged) == 6000 and logged.endswith(TRUNCATED) and logged.startswith("x" * 5000)
    path = client.download_artifacts(run.run_id, "params.json", str(toy.tmp / "params-download"))
    assert json.loads(Path(path).read_text()) == {"note": long, "k": 1}


def test_log_metrics_takes_numpy_scalars_and_rejects_text(toy: Toy):
    with stage_run("train", {}, root=toy.root) as run:
        run.log_metrics({"acc": np.float32(0.5), "n": np.int64(3)}, step=1)
        with pytest.raises(TypeError, match="'name'"):
            run.log_metrics({"name": "abc"})
    metrics = get_client(toy.root).get_run(run.run_id).data.metrics
    assert metrics == {"acc": 0.5, "n": 3.0}


def test_stage_name_from_dvc_stage_resolves_foreach_deps(toy: Toy, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(ValueError, match="DVC_STAGE"):
        with stage_run(None, {}, root=toy.root):
            pass
    monkeypatch.setenv("DVC_STAGE", "ingest@toy")
    with stage_run(None, {"scale": 2}, root=toy.root) as run:
        pass
    tags = get_client(toy.root).get_run(run.run_id).data.tags
    locked = {d["path"]: d["md5"] for d in _lock(toy.root)["ingest@toy"]["deps"]}
    assert tags["advreid.stage"] == "ingest@toy"
    # raw/toy has no producing stage: its md5 is computed now, and must equal what DVC locked
    assert tags["advreid.dep.raw/toy.md5"] == locked["raw/toy"]
    assert tags["advreid.dep.ingest.py.md5"] == locked["ingest.py"]


def test_missing_manifest_is_an_error(toy: Toy):
    with pytest.raises(FileNotFoundError, match="'toy/val'"):
        with stage_run("train", {}, manifests={"toy/val": toy.root / "nope.parquet"}, root=toy.root):
            pass


def test_unknown_stage_is_tagged_not_fatal(toy: Toy):
    with stage_run("nonexistent", {}, root=toy.root) as run:
        pass
    tags = get_client(toy.root).get_run(run.run_id).data.tags
    assert "nonexistent" in tags["advreid.lineage.error"]
    assert not any(key.startswith("advreid.dep.") for key in tags)


def test_git_state_clean_dirty_and_unknown(toy: Toy, tmp_path: Path):
    project = tmp_path / "copy"
    shutil.copytree(toy.root, project)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    assert lineage.git_state(project) == (head.strip(), "false")
    # What `dvc repro` rewrites is not dirt: dvc.lock, a git-tracked out (made tracked here, as a
    # `cache: false` report is), DVC's .gitignore beside an out.
    assert "data/processed/toy" in lineage.pipeline_products(project)
    (project / "dvc.lock").write_text((project / "dvc.lock").read_text() + "# rewritten\n")
    (project / "data/processed/.gitignore").write_text("/toy\n/other\n")
    subprocess.run(["git", "add", "-f", "data/processed/toy/dataset.json"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "track a report"], cwd=project, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    (project / "data/processed/toy/dataset.json").write_text("{}")
    assert lineage.git_state(project) == (head.strip(), "false")
    # What the user changes is: a tracked source or params file, a new untracked file.
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "# edited\n")
    assert lineage.git_state(project) == (head.strip(), "true")
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=project, check=True)
    assert lineage.git_state(project) == (head.strip(), "false")
    (project / "notes.py").write_text("x = 1\n")
    assert lineage.git_state(project) == (head.strip(), "true")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert lineage.git_state(plain) == ("unknown", "unknown")


def test_the_resolved_pipeline_is_cached_under_the_hash_of_dvc_yaml_and_params(toy: Toy, tmp_path: Path, monkeypatch):
    project = tmp_path / "copy"
    shutil.copytree(toy.root, project)
    first = lineage.resolved_pipeline(project)
    assert "data/processed/toy" in first["outs"] and (project / lineage.RESOLVED_CACHE).is_file()
    deps = lineage.stage_deps(project, "train")
    import dvc.repo

    def no_repo(*args, **kwargs):
        raise AssertionError("DVC's Repo opened although dvc.yaml and params.yaml did not change")

    monkeypatch.setattr(dvc.repo, "Repo", no_repo)
    assert lineage.resolved_pipeline(project) == first  # from the cache
    assert lineage.stage_deps(project, "train") == deps
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "# edited\n")
    with pytest.raises(AssertionError, match="Repo opened"):
        lineage.resolved_pipeline(project)  # another key: DVC resolves the pipeline again
    monkeypatch.undo()
    assert lineage.resolved_pipeline(project) == first


def test_hash_path_matches_what_dvc_locked(toy: Toy):
    lock = _lock(toy.root)
    entries = [e for stage in lock.values() for e in stage["deps"] + stage["outs"]]
    assert {e["path"] for e in entries} >= {"raw/toy", "data/processed/toy", "models/model.json"}
    ignore = lineage.dvc_ignore(toy.root)
    for entry in entries:
        assert lineage.hash_path(toy.root / entry["path"], ignore=ignore) == entry["md5"], entry["path"]
    # a file's hash is its plain md5; a directory's carries the .dir suffix
    assert lineage.hash_path(toy.root / "raw/toy/a.bin") == hashlib.md5(RAW["a.bin"]).hexdigest()
    assert lineage.hash_path(toy.root / "raw/toy").endswith(".dir")


def test_hash_path_directory_changes_with_content(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"1")
    before = lineage.hash_path(tmp_path / "d")
    (tmp_path / "d" / "f").write_bytes(b"2")
    assert lineage.hash_path(tmp_path / "d") != before
    with pytest.raises(FileNotFoundError, match="nothing"):
        lineage.hash_path(tmp_path / "nothing")


def test_lock_helpers(toy: Toy):
    lock = lineage.read_lock(toy.root)
    stage, out = lineage.producer_of("data/processed/toy/train.parquet", lock)
    assert (stage.name, out.path) == ("ingest@toy", "data/processed/toy")
    assert lineage.producer_of("raw/toy", lock) is None
    assert lineage.upstream_stages(lock["train"], lock) == ["ingest@toy"]
    assert lineage.upstream_stages(lock["ingest@toy"], lock) == []
    assert [s.name for s, _ in lineage.producers_within("data", lock)] == ["ingest@toy"]
    assert lock["train"].params == {"params.yaml": {"train": {"lr": 0.5, "layers": [4, 2]}}}
    assert lineage.stage_deps(toy.root, "ingest@toy") == ["ingest.py", "raw/toy"]
    with pytest.raises(lineage.LineageError, match="nope"):
        lineage.stage_deps(toy.root, "nope")


def test_lookup_param_and_missing_lock(tmp_path: Path):
    params = {"train": {"lr": 0.1, "layers": [4, 2]}}
    assert lineage.lookup_param(params, "train.lr") == 0.1
    assert lineage.lookup_param(params, "train.layers.1") == 2
    assert lineage.lookup_param(params, "train") == params["train"]
    assert lineage.lookup_param(params, "train.wd") is lineage.MISSING
    with pytest.raises(lineage.LineageError, match="dvc.lock does not exist"):
        lineage.read_lock(tmp_path)
    assert lineage.normalize(tmp_path / "a" / ".." / "b", tmp_path) == "b"
    assert lineage.normalize("./x//y", tmp_path) == "x/y"


def test_numeric_leaves_flattens_numbers_and_leaves_out_text_and_booleans():
    from advreid.tracking.mlflow_run import numeric_leaves

    tree = {"demo_b": {"rank1": 1, "mAP": 0.5, "ap_convention": "noninterp", "rerank": {"mAP": 0.75}}, "ok": True}
    assert numeric_leaves(tree, "eval.") == {
        "eval.demo_b.rank1": 1.0,
        "eval.demo_b.mAP": 0.5,
        "eval.demo_b.rerank.mAP": 0.75,
    }
