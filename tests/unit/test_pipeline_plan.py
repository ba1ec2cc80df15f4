"""The flow's launch order: ``pipeline.first`` patterns move stages ahead, plan order otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from advreid.pipeline_plan import first_param, launch_order

PLAN = ["demo_data", "ingest@a", "pose@a", "train_gan@x", "train_gan@y", "eval_gan", "defense_seed@1", "report"]


def test_first_patterns_go_ahead_in_their_order_the_rest_keeps_plan_order():
    order = launch_order(PLAN, ["defense_seed@*", "train_gan@*"])
    assert order == ["defense_seed@1", "train_gan@x", "train_gan@y", "demo_data", "ingest@a", "pose@a", "eval_gan",
                     "report"]  # fmt: skip
    assert launch_order(PLAN, []) == PLAN
    assert launch_order(PLAN, ["nothing@*"]) == PLAN


def test_first_param_defaults_to_none_and_names_the_key_when_bad(tmp_path: Path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pipeline": {"max_parallel": 2}}))
    assert first_param(tmp_path) == []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pipeline": {"first": "train_gan@*"}}))
    with pytest.raises(ValueError, match=r"pipeline.first must be a list of patterns, got 'train_gan@\*'"):
        first_param(tmp_path)
