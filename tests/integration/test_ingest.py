"""The ingest stage on generated datasets: byte-stable manifests, GX pass/fail, bad input isolation."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from advreid.data.formats.base import DatasetFormatError
from advreid.data.manifest import CORE_COLUMNS, read_manifest
from advreid.data.processed import write_dataset
from advreid.data.registry import read_dataset
from advreid.data.validation import ValidationFailed
from advreid.io import sha256_file
from advreid.stages import ingest
from tests.fixtures_reid import truncate_file, write_market1501


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A project root with params.yaml naming a good Market dataset, a truncated one and an inconsistent one."""
    raw = tmp_path / "data" / "raw"
    write_market1501(raw / "good", size=(128, 64))
    bad = write_market1501(raw / "bad", size=(128, 64))
    truncate_file(bad.root / bad.expected["path"].iloc[3])
    # a query identity with no gallery image: Market layout is fine, the validation must fail
    lonely = write_market1501(raw / "lonely", size=(128, 64))
    for path in (lonely.root / "bounding_box_test").glob("0005_*.jpg"):
        path.unlink()
    params = {
        "ingest": {
            "datasets": {
                name: {"format": "market1501", "root": f"data/raw/{name}"} for name in ("good", "bad", "lonely")
            }
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("ADVREID_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_manifests_have_the_schema_sorted_rows_and_stable_bytes(tmp_path):
    data = write_market1501(tmp_path / "raw", size=(128, 64))
    raw = read_dataset("market1501", data.root, name="m")
    first = write_dataset(raw, tmp_path / "one", "raw")
    second = write_dataset(read_dataset("market1501", data.root, name="m"), tmp_path / "two", "raw")
    assert first == second
    for name in sorted(p.name for p in (tmp_path / "one").iterdir()):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    table = pq.read_table(tmp_path / "one" / "gallery.parquet")
    assert table.schema.metadata is None  # no pandas index or metadata in the bytes
    for column, arrow_type, _ in CORE_COLUMNS:
        assert table.schema.field(column).type == arrow_type
    paths = table.column("path").to_pylist()
    assert paths == sorted(paths)
    info = json.loads((tmp_path / "one" / "dataset.json").read_text())
    assert info["splits"]["gallery"]["sha256"] == sha256_file(tmp_path / "one" / "gallery.parquet")
    assert sum(s["rows"] for s in info["splits"].values()) == len(data.expected)


def test_array_datasets_store_pixels_once_and_rows_point_into_them(tmp_path):
    import shutil

    from advreid.data.formats.classification import sklearn_digits_file

    (tmp_path / "digits").mkdir()
    shutil.copy(sklearn_digits_file(), tmp_path / "digits" / "digits.csv.gz")
    write_dataset(read_dataset("digits", tmp_path / "digits", name="digits"), tmp_path / "out", "digits")
    frame = read_manifest(tmp_path / "out" / "test.parquet")
    pixels = np.load(tmp_path / "out" / "test.npy")
    row = frame.iloc[7]
    assert row["path"] == f"test.npy#{row['array_index']}"
    import hashlib

    assert hashlib.sha256(pixels[row["array_index"]].tobytes()).hexdigest() == row["sha256"]


def test_ingest_stage_writes_manifests_reports_and_metrics(project):
    assert ingest.main(["good"]) == 0
    out = project / "data" / "processed" / "good"
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json",
        "gallery.parquet",
        "query.parquet",
        "train.parquet",
    ]
    report = json.loads((project / "reports" / "validation" / "good.json").read_text())
    assert report["success"] is True
    metrics = json.loads((project / "reports" / "metrics" / "ingest" / "good.json").read_text())
    assert metrics["rows"]["query"] == len(read_manifest(out / "query.parquet"))


def test_a_truncated_image_fails_its_stage_only_and_leaves_no_output(project):
    with pytest.raises(DatasetFormatError, match=r"bad/.*\.jpg"):
        ingest.main(["bad"])
    assert not (project / "data" / "processed" / "bad").exists()
    assert ingest.main(["good"]) == 0  # the valid dataset beside it is not affected
    leftovers = [p for p in (project / "data" / "processed").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_validation_failure_writes_the_report_and_no_manifest(project):
    with pytest.raises(ValidationFailed, match="0005"):
        ingest.main(["lonely"])
    assert not (project / "data" / "processed" / "lonely").exists()
    report = json.loads((project / "reports" / "validation" / "lonely.json").read_text())
    assert report["success"] is False
    assert "0005" in (project / "reports" / "validation" / "lonely.md").read_text()


def test_unknown_dataset_names_the_params_key(project):
    with pytest.raises(ValueError, match="ingest.datasets has no 'nope'"):
        ingest.main(["nope"])
