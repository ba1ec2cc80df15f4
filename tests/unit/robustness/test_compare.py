"""`advreid compare` on two tiny MLflow runs with known metrics: differences, intervals apart, children, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from advreid.robustness import compare


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ADVREID_ROOT", str(tmp_path))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("advreid", artifact_location=(tmp_path / "mlruns").as_uri())
    ids = []
    for name, rank1, low, high, child_value in (("a", 0.5, 0.3, 0.7, 1.0), ("b", 0.9, 0.8, 1.0, 3.0)):
        run = client.create_run(experiment, run_name=name)
        for key, value in {"rank1": rank1, "rank1_low": low, "rank1_high": high, "mAP": 0.4}.items():
            client.log_metric(run.info.run_id, key, value)
        child = client.create_run(experiment, run_name="eval_reid@m", tags={"mlflow.parentRunId": run.info.run_id})
        client.log_metric(child.info.run_id, "loss", child_value)
        ids.append(run.info.run_id)
    return ids[0], ids[1]


def test_two_runs_side_by_side(runs, tmp_path: Path):
    a, b = (compare.resolve(tmp_path, r) for r in runs)
    rows = {r.metric: r for r in compare.compare(a, b)}
    assert set(rows) == {"rank1", "mAP", "eval_reid@m/loss"}  # the bounds are not metrics of their own
    assert rows["rank1"].difference == pytest.approx(0.4)
    assert rows["rank1"].a_interval == (0.3, 0.7) and rows["rank1"].apart is True  # [0.3, 0.7] vs [0.8, 1.0]
    assert rows["mAP"].difference == 0.0 and rows["mAP"].apart is None  # no interval
    assert rows["eval_reid@m/loss"].difference == pytest.approx(2.0)
    assert [r.metric for r in compare.compare(a, b, changed_only=True)] == ["eval_reid@m/loss", "rank1"]


def test_overlapping_intervals_are_not_apart():
    a = compare.Side("a", "run", {"x": 0.5}, {"x": (0.3, 0.7)})
    b = compare.Side("b", "run", {"x": 0.6}, {"x": (0.65, 0.9)})
    assert compare.compare(a, b)[0].apart is False


def test_matrix_style_estimates_and_bounds():
    values = {"cells.k.rank1.estimate": 0.5, "cells.k.rank1.low": 0.2, "cells.k.rank1.high": 0.8, "n": 3.0}
    metrics, intervals = compare.split_intervals(values)
    assert metrics == {"cells.k.rank1": 0.5, "n": 3.0} and intervals == {"cells.k.rank1": (0.2, 0.8)}


def test_main_prints_json_and_a_table(runs, capsys: pytest.CaptureFixture):
    assert compare.main([*runs, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["metric"]: r["difference"] for r in out["rows"]}["rank1"] == pytest.approx(0.4)
    assert compare.main([*runs, "--filter", "rank1"]) == 0
    table = capsys.readouterr().out
    assert "rank1" in table and "yes" in table and "mAP" not in table
