"""`advreid audit` on the toy DVC project: a fresh repro verifies; edits to raw data, arrays and params
are found; an MLflow run id leads to its stage."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advreid.tracking.audit import CHANGED, EXTERNAL, MISSING, VERIFIED, audit, main, verify_dataset
from tests.unit.tracking import RAW, build_toy_project, tool_env


@pytest.fixture(autouse=True)
def _dvc_site_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the DVC site cache that in-process `Repo` opens out of /var/tmp."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("audit")
    root = tmp / "project"
    root.mkdir()
    return build_toy_project(root, tool_env(tmp))


@pytest.fixture
def project(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced project that a test may edit."""
    return Path(shutil.copytree(pristine, tmp_path / "project"))


def _links(report, kind=None, status=None):
    return [
        link
        for link in report.links
        if (kind is None or link.kind == kind) and (status is None or link.status == status)
    ]


def _link(report, kind: str, name: str):
    found = [link for link in report.links if link.kind == kind and link.name == name]
    assert len(found) == 1, f"expected one {kind} link {name!r}, found {found}"
    return found[0]


def test_fresh_repro_verifies_every_link(pristine: Path, capsys: pytest.CaptureFixture):
    report = audit("models/model.json", pristine)
    assert report.stage == "train" and report.ok
    assert {link.status for link in report.links} == {VERIFIED}
    out = _link(report, "out", "models/model.json")
    assert out.stage == "train"
    assert out.actual == hashlib.md5((pristine / "models/model.json").read_bytes()).hexdigest()
    assert _link(report, "param", "train").actual == json.dumps({"layers": [4, 2], "lr": 0.5}, sort_keys=True)
    assert _link(report, "param", "ingest.scale").stage == "ingest@toy"
    # the walk reached the upstream stage, its source dep and the raw directory
    assert {(link.stage, link.name) for link in _links(report, "dep")} == {
        ("train", "train.py"),
        ("train", "data/processed/toy"),
        ("ingest@toy", "ingest.py"),
        ("ingest@toy", "raw/toy"),
    }
    manifest = _link(report, "manifest", "toy/train.parquet")
    parquet = pristine / "data/processed/toy/train.parquet"
    assert manifest.actual == hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert _link(report, "raw", f"toy/train: {len(RAW)} files").actual == f"{len(RAW)} verified"
    assert _link(report, "raw", "toy/test: 2 array rows").status == VERIFIED

    assert main(["models/model.json", "--root", str(pristine)]) == 0
    table = capsys.readouterr().out
    assert "audit of models/model.json (stage train)" in table and table.rstrip().splitlines()[-1].startswith("OK")


def test_target_inside_an_output_directory_audits_its_stage(pristine: Path):
    report = audit(str(pristine / "data/processed/toy/train.parquet"), pristine)
    assert report.stage == "ingest@toy" and report.ok
    assert not [link for link in report.links if link.stage == "train"]
    assert audit("models", pristine).stage == "train"  # a directory holding outputs
    assert audit("train", pristine).stage == "train"  # a stage name
    assert audit(".", pristine).stage == "ingest@toy, train"


def test_changed_raw_file_is_reported(project: Path, capsys: pytest.CaptureFixture):
    new = b"BRAVO!"  # same length, different bytes
    (project / "raw/toy/b.bin").write_bytes(new)
    report = audit("models/model.json", project)
    assert not report.ok
    bad = _link(report, "raw", "toy/train: b.bin")
    assert (bad.status, bad.expected, bad.actual) == (
        CHANGED,
        hashlib.sha256(RAW["b.bin"]).hexdigest(),
        hashlib.sha256(new).hexdigest(),
    )
    assert _link(report, "raw", f"toy/train: {len(RAW)} files").actual == f"{len(RAW) - 1} verified"
    assert _link(report, "dep", "raw/toy").status == CHANGED
    # everything downstream of the raw folder is untouched
    assert _link(report, "out", "models/model.json").status == VERIFIED
    assert _link(report, "manifest", "toy/train.parquet").status == VERIFIED
    assert {link.name for link in report.problems} == {"toy/train: b.bin", f"toy/train: {len(RAW)} files", "raw/toy"}

    assert main(["models/model.json", "--json", "--root", str(project)]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] is False and printed["counts"][CHANGED] == 3


def test_missing_raw_file_is_reported(project: Path):
    (project / "raw/toy/c.bin").unlink()
    report = audit("data/processed/toy", project)
    assert _link(report, "raw", "toy/train: c.bin").status == MISSING
    assert main(["data/processed/toy", "--root", str(project)]) == 1


def test_changed_param_is_reported(project: Path):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.5", "lr: 0.25"))
    report = audit("models/model.json", project)
    param = _link(report, "param", "train")
    assert param.status == CHANGED
    assert json.loads(param.expected)["lr"] == 0.5 and json.loads(param.actual)["lr"] == 0.25
    assert _link(report, "param", "ingest.scale").status == VERIFIED
    assert [link.name for link in report.problems] == ["train"]


def test_removed_param_is_missing(project: Path):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  scale: 2\n", "  other: 1\n"))
    assert _link(audit("models/model.json", project), "param", "ingest.scale").status == MISSING


def test_changed_array_row_is_reported(project: Path):
    npy = project / "data/processed/toy/test.npy"
    images = np.load(npy)
    images[1, 0, 0, 0] ^= 0xFF
    np.save(npy, images)
    report = audit("models/model.json", project)
    row = _link(report, "raw", "toy/test: test.npy#1")
    assert row.status == CHANGED and row.actual == hashlib.sha256(images[1].tobytes()).hexdigest()
    assert _link(report, "out", "data/processed/toy").status == CHANGED
    assert _link(report, "manifest", "toy/test.parquet").status == VERIFIED


def test_audit_by_mlflow_run_id(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from advreid.tracking.mlflow_run import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("ADVREID_MLFLOW_PARENT_RUN_ID", raising=False)
    manifest = pristine / "data/processed/toy/train.parquet"
    with stage_run("train", {"lr": 0.5}, manifests={"toy/train": manifest}, root=pristine) as run:
        pass
    report = audit(run.run_id, pristine)
    assert report.stage == "train" and report.ok
    run_links = {link.name: link for link in _links(report, "run")}
    assert set(run_links) == {"dep train.py", "dep data/processed/toy", "manifest toy/train"}
    assert all(link.status == VERIFIED for link in run_links.values())
    assert main([run.run_id, "--root", str(pristine)]) == 0
    assert main(["0" * 32, "--root", str(pristine)]) == 2


def test_unknown_target_and_missing_lock(pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["raw/toy/a.bin", "--root", str(pristine)]) == 2
    assert "no stage" in capsys.readouterr().err
    assert main(["models/model.json", "--root", str(tmp_path)]) == 2
    assert "dvc.lock does not exist" in capsys.readouterr().err


def test_package_dataset_is_external_and_its_array_rows_checked(tmp_path: Path):
    images = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    np.save(tmp_path / "train.npy", images)

    pd.DataFrame(
        {
            "path": ["train.npy#0", "train.npy#1", "train.npy#2"],
            "sha256": [hashlib.sha256(images[i].tobytes()).hexdigest() for i in range(2)] + ["0" * 64],
            "array_file": ["train.npy"] * 3,
            "array_index": [0, 1, 2],
        }
    ).to_parquet(tmp_path / "train.parquet", index=False)
    sha = hashlib.sha256((tmp_path / "train.parquet").read_bytes()).hexdigest()
    meta = {"name": "digits", "root": "sklearn:digits", "splits": {"train": {"rows": 3, "sha256": sha}}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    links = {link.name: link for link in verify_dataset(tmp_path / "dataset.json", tmp_path)}
    assert links["sklearn:digits"].status == EXTERNAL and "sklearn" in links["sklearn:digits"].actual
    assert links["digits/train.parquet"].status == VERIFIED
    assert (links["digits/train: 3 array rows"].actual, links["digits/train: 3 array rows"].status) == (
        "2 verified",
        CHANGED,
    )
    assert links["digits/train: train.npy#2"].status == MISSING  # index past the array's end


def test_malformed_dataset_json_is_reported(tmp_path: Path):
    (tmp_path / "dataset.json").write_text('{"name": "x"}')
    [link] = verify_dataset(tmp_path / "dataset.json", tmp_path)
    assert link.status == CHANGED and "splits" in link.actual


def test_rewritten_manifest_parquet_is_reported_changed(project: Path):
    """Catches an audit that compares the manifest rows but not the parquet bytes dataset.json pins: the same
    rows rewritten with another compression are a different file, so not verified."""
    import pyarrow.parquet as pq

    parquet = project / "data/processed/toy/train.parquet"
    table = pq.read_table(parquet)
    before = parquet.read_bytes()
    pq.write_table(table, parquet, compression="gzip")
    assert parquet.read_bytes() != before
    report = audit("models/model.json", project)
    link = _link(report, "manifest", "toy/train.parquet")
    assert link.status == CHANGED and link.actual == hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert not report.ok


def test_run_tag_disagreeing_with_dvc_lock_is_reported_changed(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Catches an audit by run id that trusts the run's tags: a dep hash tag other than dvc.lock's is changed."""
    from advreid.tracking.mlflow_run import get_client, stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("ADVREID_MLFLOW_PARENT_RUN_ID", raising=False)
    with stage_run("train", {"lr": 0.5}, root=pristine) as run:
        pass
    get_client(pristine).set_tag(run.run_id, "advreid.dep.train.py.md5", "0" * 32)
    report = audit(run.run_id, pristine)
    link = _link(report, "run", "dep train.py")
    assert link.status == CHANGED and link.expected == "0" * 32 and link.actual != "0" * 32
    assert not report.ok
    assert main([run.run_id, "--root", str(pristine)]) != 0
