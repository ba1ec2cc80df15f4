"""Manifest validation: valid frames pass, each broken rule fails with the right count and rows."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from advreid.data.manifest import ManifestError
from advreid.data.validation import (
    ManifestRules,
    ValidationFailed,
    ValidationReport,
    check,
    class_counts,
    validate_manifest,
    write_report,
)

REID_RULES = ManifestRules(
    kind="reid",
    label_range=(0, 10),
    camera_range=(1, 2),
    splits=("train", "query", "gallery"),
    image_size=None,
    min_size=(16, 8),
)
CLS_RULES = ManifestRules(
    kind="classification",
    label_range=(0, 2),
    camera_range=None,
    splits=("train", "test"),
    image_size=(8, 8),
    num_classes=3,
    balance_tolerance=0.5,
)
REID_ROWS = 10
CLS_ROWS = 9


def _row(split: str, path: str, label: int, camera: int, height: int = 128, width: int = 64) -> dict:
    return {
        "dataset": "demo",
        "split": split,
        "domain": "demo",
        "path": path,
        "sha256": hashlib.sha256(path.encode()).hexdigest(),
        "width": width,
        "height": height,
        "label": label,
        "camera": camera,
    }


def reid_frame() -> pd.DataFrame:
    """Train ids 1, 2; query ids 3, 4; gallery ids 3, 4 plus a distractor (0) and a junk image (-1)."""
    rows = [
        _row("train", "train/0001_c1.jpg", 1, 1),
        _row("train", "train/0001_c2.jpg", 1, 2),
        _row("train", "train/0002_c1.jpg", 2, 1),
        _row("train", "train/0002_c2.jpg", 2, 2),
        _row("query", "query/0003_c1.jpg", 3, 1),
        _row("query", "query/0004_c1.jpg", 4, 1),
        _row("gallery", "gallery/0003_c2.jpg", 3, 2),
        _row("gallery", "gallery/0004_c2.jpg", 4, 2),
        _row("gallery", "gallery/0000_c1.jpg", 0, 1),
        _row("gallery", "gallery/-001_c2.jpg", -1, 2),
    ]
    return pd.DataFrame(rows)


def cls_frame() -> pd.DataFrame:
    """Train: two images of each of 3 classes; test: one of each. All 8 x 8, camera -1."""
    rows = [_row("train", f"train.npy#{i}", i % 3, -1, 8, 8) for i in range(6)]
    rows += [_row("test", f"test.npy#{i}", i, -1, 8, 8) for i in range(3)]
    frame = pd.DataFrame(rows)
    frame["class_name"] = frame["label"].map({0: "cat", 1: "dog", 2: "ship"})
    return frame


def failed(report: ValidationReport) -> dict[tuple[str, str], int]:
    return {(r.expectation, r.column): r.unexpected_count for r in report.failures}


def outcome(report: ValidationReport, expectation: str, column: str):
    (match,) = [r for r in report.results if r.expectation == expectation and r.column == column]
    return match


def test_valid_reid_frame_passes() -> None:
    report = validate_manifest(reid_frame(), REID_RULES, "demo")
    assert report.success, report.summary()
    assert all(r.success and r.unexpected_count == 0 and r.error is None for r in report.results)
    unconditioned = outcome(report, "expect_column_values_to_be_unique", "path")
    assert unconditioned.element_count == REID_ROWS
    query_rule = [r for r in report.results if r.kwargs.get("row_condition") == "split == 'query'"]
    assert [r.element_count for r in query_rule] == [2]
    assert query_rule[0].kwargs["value_set"] == [0, 3, 4]  # gallery ids without junk
    junk_rule = outcome(report, "expect_column_values_to_not_be_in_set", "label")
    assert junk_rule.element_count == 6  # every row outside the gallery


def test_valid_classification_frame_passes() -> None:
    report = validate_manifest(cls_frame(), CLS_RULES, "toy")
    assert report.success, report.summary()
    balance = [r for r in report.results if r.batch == "class_counts"]
    assert len(balance) == 1 and balance[0].element_count == 2 * 3  # (split, class) pairs


def _set(index: int, column: str, value):
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame.at[index, column] = value
        return frame

    return mutate


def _duplicate_path(frame: pd.DataFrame) -> pd.DataFrame:
    frame.at[1, "path"] = frame.at[0, "path"]
    return frame


# (mutation, {(expectation, column): unexpected count}, a path the failing rows must show)
REID_BREAKS = {
    "null": (
        _set(2, "sha256", None),
        {("expect_column_values_to_not_be_null", "sha256"): 1},
        "train/0002_c1.jpg",
    ),
    "bad split": (
        _set(0, "split", "val"),
        {("expect_column_values_to_be_in_set", "split"): 1},
        "train/0001_c1.jpg",
    ),
    "duplicate path": (
        _duplicate_path,
        {("expect_column_values_to_be_unique", "path"): 2},
        "train/0001_c1.jpg",
    ),
    "bad checksum": (
        _set(3, "sha256", "AB" * 32),
        {("expect_column_values_to_match_regex", "sha256"): 1},
        "train/0002_c2.jpg",
    ),
    "short checksum": (
        _set(3, "sha256", "ab" * 31),
        {("expect_column_values_to_match_regex", "sha256"): 1},
        "train/0002_c2.jpg",
    ),
    "camera out of range": (
        _set(6, "camera", 3),
        {("expect_column_values_to_be_between", "camera"): 1},
        "gallery/0003_c2.jpg",
    ),
    # id 1 exists (in train) and is within the label range, but not in the gallery
    "query id missing from gallery": (
        _set(5, "label", 1),
        {("expect_column_values_to_be_in_set", "label"): 1},
        "query/0004_c1.jpg",
    ),
    "label out of range": (
        _set(1, "label", 11),
        {("expect_column_values_to_be_between", "label"): 1},
        "train/0001_c2.jpg",
    ),
    "junk label outside gallery": (
        _set(2, "label", -1),
        {("expect_column_values_to_not_be_in_set", "label"): 1},
        "train/0002_c1.jpg",
    ),
    "image too small": (
        _set(8, "height", 15),
        {("expect_column_values_to_be_between", "height"): 1},
        "gallery/0000_c1.jpg",
    ),
}


@pytest.mark.parametrize("case", list(REID_BREAKS))
def test_each_reid_rule_fails_when_broken(case: str) -> None:
    mutate, expected, path = REID_BREAKS[case]
    report = validate_manifest(mutate(reid_frame()), REID_RULES, "demo")
    assert not report.success
    assert failed(report) == expected
    for r in report.failures:
        assert r.error is None
        assert path in [row["path"] for row in r.examples]
        assert all({"path", "split", "label", "camera", r.column} <= set(row) for row in r.examples)
        assert r.description in report.summary() and path in report.summary()


def test_junk_query_breaks_two_rules() -> None:
    # A junk query is both junk outside the gallery and an id the gallery cannot match.
    report = validate_manifest(_set(4, "label", -1)(reid_frame()), REID_RULES, "demo")
    assert failed(report) == {
        ("expect_column_values_to_not_be_in_set", "label"): 1,
        ("expect_column_values_to_be_in_set", "label"): 1,
    }


def test_example_rows_follow_paths_not_the_frame_index() -> None:
    # Splits concatenated without ignore_index repeat index values 0, 1, ...
    frame = reid_frame()
    parts = [part.reset_index(drop=True) for _, part in frame.groupby("split", sort=False)]
    parts[1].at[1, "camera"] = 7  # second query image
    report = validate_manifest(pd.concat(parts), REID_RULES, "demo")
    (failure,) = report.failures
    assert [(row["path"], row["camera"]) for row in failure.examples] == [("query/0004_c1.jpg", 7)]


def test_fixed_image_size_and_examples_are_capped() -> None:
    frame = cls_frame()
    frame.loc[frame["split"] == "train", "width"] = 9  # all 6 train images
    report = validate_manifest(frame, CLS_RULES, "toy")
    assert failed(report) == {("expect_column_values_to_be_in_set", "width"): 6}
    (failure,) = report.failures
    assert failure.kwargs["value_set"] == [8]
    assert len(failure.examples) == 5
    assert {row["path"] for row in failure.examples} <= {f"train.npy#{i}" for i in range(6)}


def test_classification_camera_must_be_minus_one() -> None:
    report = validate_manifest(_set(7, "camera", 1)(cls_frame()), CLS_RULES, "toy")
    assert failed(report) == {("expect_column_values_to_be_in_set", "camera"): 1}
    assert report.failures[0].examples[0]["path"] == "test.npy#1"


def test_class_counts_by_hand() -> None:
    frame = cls_frame()
    frame.at[2, "label"] = 0
    frame.at[5, "label"] = 0  # train classes [0, 1, 0, 0, 1, 0]: counts 4, 2, 0
    frame.at[8, "label"] = 5  # out of range: left out of the counts
    counts = class_counts(frame, 3).set_index(["split", "label"])
    assert counts["count"].to_dict() == {
        ("test", 0): 1,
        ("test", 1): 1,
        ("test", 2): 0,
        ("train", 0): 4,
        ("train", 1): 2,
        ("train", 2): 0,
    }
    # mean count: train 6 / 3 = 2, test 2 / 3
    assert counts.loc[("train", 0), "count_ratio"] == pytest.approx(2.0)
    assert counts.loc[("test", 1), "count_ratio"] == pytest.approx(1.5)


@pytest.mark.parametrize(("tolerance", "unbalanced"), [(0.5, 0), (0.4, 2)])
def test_class_balance_tolerance_is_inclusive(tolerance: float, unbalanced: int) -> None:
    # Train counts 3, 2, 1 around a mean of 2: ratios 1.5, 1.0, 0.5 sit exactly on the 0.5 bounds.
    frame = cls_frame()
    frame.at[5, "label"] = 0
    rules = ManifestRules(**{**CLS_RULES.__dict__, "balance_tolerance": tolerance})
    report = validate_manifest(frame, rules, "toy")
    assert report.success == (unbalanced == 0)
    if unbalanced:
        assert failed(report) == {("expect_column_values_to_be_between", "count_ratio"): 2}
        (failure,) = report.failures
        assert failure.batch == "class_counts" and failure.element_count == 6
        assert {(row["split"], row["label"], row["count"]) for row in failure.examples} == {
            ("train", 0, 3),
            ("train", 2, 1),
        }


def test_missing_class_and_out_of_range_label() -> None:
    frame = cls_frame()
    frame.at[8, "label"] = 3  # test loses its only class-2 image to a non-existent class 3
    report = validate_manifest(frame, CLS_RULES, "toy")
    assert failed(report) == {
        ("expect_column_values_to_be_between", "label"): 1,
        ("expect_column_values_to_be_between", "count_ratio"): 1,
    }
    by_column = {r.column: r for r in report.failures}
    assert by_column["label"].examples[0]["path"] == "test.npy#2"
    assert by_column["count_ratio"].examples[0] == {"split": "test", "label": 2, "count": 0, "count_ratio": 0}


def test_long_value_sets_are_shortened_in_reports() -> None:
    rows = [_row("gallery", f"g/{i}.jpg", i, 1) for i in range(1, 31)] + [_row("query", "q/1.jpg", 1, 2)]
    rules = ManifestRules(**{**REID_RULES.__dict__, "label_range": (0, 40)})
    report = validate_manifest(pd.DataFrame(rows), rules, "many")
    assert report.success, report.summary()
    (query_rule,) = [r for r in report.results if r.kwargs.get("row_condition") == "split == 'query'"]
    assert query_rule.kwargs["value_set"].endswith("... (30 values)]")


def test_check_writes_reports_and_raises_only_on_failure(tmp_path) -> None:
    report = check(reid_frame(), REID_RULES, "good", tmp_path)
    assert report.success
    saved = json.loads((tmp_path / "good.json").read_text())
    assert saved["success"] is True and saved["failed"] == 0 and saved["evaluated"] == len(report.results)
    markdown = (tmp_path / "good.md").read_text()
    assert "PASSED" in markdown and f"observed {REID_ROWS}" in markdown

    with pytest.raises(ValidationFailed) as caught:
        check(_set(6, "camera", 3)(reid_frame()), REID_RULES, "bad", tmp_path)
    assert not caught.value.report.success
    message = str(caught.value)
    assert "expect_column_values_to_be_between(camera)" in message
    assert "1 of 10 rows" in message and "gallery/0003_c2.jpg" in message
    assert str(tmp_path / "bad.md") in message
    saved = json.loads((tmp_path / "bad.json").read_text())
    assert saved["success"] is False and saved["failed"] == 1
    (bad,) = [r for r in saved["results"] if not r["success"]]
    assert bad["unexpected_count"] == 1 and bad["examples"][0]["path"] == "gallery/0003_c2.jpg"
    markdown = (tmp_path / "bad.md").read_text()
    assert "FAILED" in markdown and "| gallery/0003_c2.jpg | gallery | 3 | 3 |" in markdown


def test_write_report_rejects_unsafe_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="file name"):
        write_report(ValidationReport(name="../x", success=True, results=[]), tmp_path)


def test_empty_manifest_fails() -> None:
    report = validate_manifest(reid_frame().iloc[:0], REID_RULES, "empty")
    (failure,) = report.failures
    assert failure.expectation == "expect_table_row_count_to_be_between" and failure.observed_value == 0
    assert "observed 0" in report.summary() and "observed 0" in report.to_markdown()


def test_missing_core_column_is_named() -> None:
    with pytest.raises(ManifestError, match=r"demo: manifest lacks column\(s\) \['sha256'\]"):
        validate_manifest(reid_frame().drop(columns="sha256"), REID_RULES, "demo")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "detection"}, "kind"),
        ({"label_range": (5, 1)}, "label_range"),
        ({"camera_range": None}, "camera_range"),
        ({"splits": ()}, "splits"),
        ({"min_size": (0, 4)}, "min_size"),
        ({"num_classes": 3}, "num_classes"),
        ({"balance_tolerance": -0.1}, "balance_tolerance"),
    ],
)
def test_bad_rules_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"ManifestRules.{field}"):
        ManifestRules(**{**REID_RULES.__dict__, **changes})


def test_label_is_a_class_id_even_inside_a_wider_declared_range() -> None:
    """Catches a lost "label is a class id" rule: with label_range 0..9 but 3 classes, label 5 passes the range
    rule and must still fail as no class id (and stay out of the class counts)."""
    frame = cls_frame()
    frame = pd.concat([frame, pd.DataFrame([_row("train", "train.npy#6", 5, -1, 8, 8)])], ignore_index=True)
    frame.loc[6, "class_name"] = "cat"
    rules = ManifestRules(**{**CLS_RULES.__dict__, "label_range": (0, 9)})
    report = validate_manifest(frame, rules, "toy")
    assert failed(report) == {("expect_column_values_to_be_between", "label"): 1}
    (failure,) = report.failures
    assert failure.kwargs["max_value"] == 2 and failure.examples[0]["path"] == "train.npy#6"
    assert validate_manifest(cls_frame(), rules, "toy").success  # class ids 0..2 pass both rules
