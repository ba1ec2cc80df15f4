"""MediaPipe on a real photograph, worker processes, incremental estimation and the stage's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from advreid.data.processed import write_dataset
from advreid.data.registry import read_dataset
from advreid.data.synthetic import DemoSpec, generate_domain
from advreid.params import ParamsError
from advreid.pose.estimator import EstimatorSettings, PoseEstimator, PoseResult, estimate_files, update_estimates
from advreid.pose.extraction import PoseParams, run_pose
from advreid.pose.keypoints import JOINT_INDEX, missing_keypoints, present, read_poses, read_poses_metadata

J = JOINT_INDEX


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()  # 512 x 512, a woman facing the camera, cut at the waist


@pytest.fixture(scope="module")
def estimator():
    with PoseEstimator() as est:
        yield est


def test_astronaut_pose_is_upright_and_faces_the_camera(estimator, astronaut):
    kp = estimator.estimate(astronaut)
    there = present(kp)
    for name in ("nose", "neck", "r_shoulder", "l_shoulder", "r_eye", "l_eye"):
        assert there[J[name]], name
    assert kp[J["nose"], 1] < kp[J["neck"], 1]
    # She faces the camera, so her left shoulder and left eye are on the image's right.
    assert kp[J["l_shoulder"], 0] > kp[J["neck"], 0] > kp[J["r_shoulder"], 0]
    assert kp[J["l_eye"], 0] > kp[J["r_eye"], 0]
    # Her legs are outside the picture: nothing is invented for them.
    for name in ("r_knee", "l_knee", "r_ankle", "l_ankle"):
        assert not there[J[name]], name
    assert (kp[there, 0] >= 0).all() and (kp[there, 0] < 512).all() and (kp[there, 1] < 512).all()


def test_astronaut_hips_are_below_the_neck_when_low_visibility_is_accepted(astronaut):
    # Her hips are at the bottom edge, where MediaPipe's visibility is low (~0.2): missing at the
    # default threshold, present and below the neck at threshold 0; the hip outside the frame stays missing.
    with PoseEstimator(EstimatorSettings(min_visibility=0.0)) as est:
        kp = est.estimate(astronaut)
    hips = [J["r_hip"], J["l_hip"]]
    assert present(kp)[hips].any()
    for hip in hips:
        if present(kp)[hip]:
            assert kp[J["nose"], 1] < kp[J["neck"], 1] < kp[hip, 1] < 512


def test_upscaled_estimates_are_reported_in_original_pixels(estimator, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((128, 128), Image.Resampling.BILINEAR))
    with PoseEstimator(EstimatorSettings(upscale=4)) as est:
        upscaled = est.estimate(small)
    plain = estimator.estimate(small)
    full = estimator.estimate(astronaut)
    for name in ("nose", "neck", "r_shoulder", "l_shoulder", "r_eye", "l_eye"):
        j = J[name]
        assert np.abs(upscaled[j, :2] - plain[j, :2]).max() < 4.0, name
        assert np.abs(full[j, :2] / 4 - plain[j, :2]).max() < 4.0, name


def test_unreadable_file_is_failed_with_its_name(estimator, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = estimator.estimate_file(bad)
    assert result.status == "failed" and "broken.jpg" in result.error
    assert not present(result.keypoints).any()
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((128, 64, 3), np.uint8)).save(blank)
    assert estimator.estimate_file(blank).status == "no_detection"


@pytest.mark.slow
def test_worker_processes_give_the_in_process_results_in_order(estimator, astronaut, tmp_path):
    photo, bad = tmp_path / "astronaut.png", tmp_path / "bad.jpg"
    Image.fromarray(astronaut).resize((256, 256)).save(photo)
    bad.write_bytes(b"garbage")
    results = estimate_files([photo, bad, photo], workers=2, progress=False)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    np.testing.assert_array_equal(results[0].keypoints, estimator.estimate_file(photo).keypoints)
    np.testing.assert_array_equal(results[2].keypoints, results[0].keypoints)
    assert "bad.jpg" in results[1].error


class CountingEstimator:
    """A stand-in for MediaPipe that records which files it was asked for; keypoints encode the call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, paths: list[Path]) -> list[PoseResult]:
        self.calls.append([p.name for p in paths])
        out = []
        for i, _ in enumerate(paths):
            kp = missing_keypoints()
            kp[0] = (len(self.calls), i, 1.0)
            out.append(PoseResult(kp, "ok"))
        return out


def test_update_estimates_only_estimates_unseen_sha256s():
    fake = CountingEstimator()
    images = pd.DataFrame({"sha256": ["a", "b", "c"], "path": ["q/1.jpg", "q/2.jpg", "q/3.jpg"]})
    first, failed, n = update_estimates(images, "/data", None, fake)
    assert n == 3 and failed == {} and fake.calls == [["1.jpg", "2.jpg", "3.jpg"]]
    first.loc[first["sha256"] == "b", "status"] = "failed"  # a failure is retried, not reused
    grown = pd.DataFrame({"sha256": ["a", "b", "c", "d"], "path": ["moved/1.jpg", "q/2.jpg", "q/3.jpg", "q/4.jpg"]})
    second, _, n = update_estimates(grown, "/data", first, fake)
    assert n == 2 and fake.calls[1] == ["2.jpg", "4.jpg"]
    by_sha = second.set_index("sha256")
    assert by_sha.loc["a", "path"] == "moved/1.jpg"  # keyed by content: a moved file keeps its estimate
    assert by_sha.loc["a", "x_0"] == 1.0 and by_sha.loc["c", "x_0"] == 1.0  # from the first call
    assert by_sha.loc["b", "x_0"] == 2.0 and by_sha.loc["d", "x_0"] == 2.0
    assert second["path"].is_monotonic_increasing


# --------------------------------------------------------------------------------------------------
# The stage, without MLflow: a tiny synthetic domain ingested into a temporary project


def _project(root: Path, num_train_ids: int) -> None:
    raw = root / "data" / "raw" / "tiny"
    generate_domain(raw, "a", DemoSpec(num_train_ids, 1, cameras=2, images_per_camera=2), progress=False)
    dataset = read_dataset("market1501", raw, name="tiny")
    write_dataset(dataset, root / "data" / "processed" / "tiny", "data/raw/tiny")


def _params(**overrides) -> PoseParams:
    return PoseParams(**{"datasets": {"tiny": "data/raw/tiny"}, "workers": 1, "grid_images": 4, **overrides})


def test_stage_incremental_rerun_estimates_only_new_images(tmp_path):
    _project(tmp_path, num_train_ids=1)  # 8 images
    fake = CountingEstimator()
    out = run_pose("tiny", tmp_path, _params(source="estimator"), fake)
    assert len(fake.calls[0]) == 8 and out.work == {"estimated": 8, "reused": 0}
    # Grown: person 2 moves from the test split to train with the same image bytes (sha256), so only the
    # 4 images of the new test person 3 are new.
    _project(tmp_path, num_train_ids=2)
    out = run_pose("tiny", tmp_path, _params(source="estimator"), fake)
    assert len(fake.calls[1]) == 4 and all(name.startswith("0003_") for name in fake.calls[1])
    assert out.work == {"estimated": 4, "reused": 8}
    assert json.loads(out.report.read_text())["this_run"] == out.work
    table = read_poses(out.table)
    assert len(table) == 12 and set(table["source"]) == {"estimator"}
    # New estimator settings invalidate every stored estimate.
    run_pose("tiny", tmp_path, _params(source="estimator", upscale=3), fake)
    assert len(fake.calls[2]) == 12
    assert json.loads(read_poses_metadata(out.estimates)["advreid.pose.estimator"])["upscale"] == 3


def test_stage_auto_uses_annotations_and_scores_the_estimator_against_them(tmp_path):
    _project(tmp_path, num_train_ids=1)
    fake = CountingEstimator()  # puts the nose at (call, index): far from the truth
    out = run_pose("tiny", tmp_path, _params(source="auto"), fake)
    table = read_poses(out.table)
    assert set(table["source"]) == {"annotations"}
    annotations = json.loads((tmp_path / "data/raw/tiny/keypoints.json").read_text())["images"]
    row = table.iloc[0]
    x, y, v = annotations[row["path"]][J["neck"]]
    assert v == 1 and (row["x_1"], row["y_1"], row["c_1"]) == pytest.approx((x, y, 1.0))
    evaluation = out.metrics["evaluation"]
    assert evaluation["images"] == 8
    # The fake only ever reports the nose, so every other annotated joint is missed.
    assert evaluation["joint_detection_rate"]["per_joint"]["neck"] == 0.0
    assert evaluation["pck_0.2"]["per_joint"]["neck"] == 0.0
    saved = json.loads(out.metrics_file.read_text())
    assert saved["evaluation"]["pck_0.1"]["overall"] == evaluation["pck_0.1"]["overall"]
    assert all(f.is_file() for f in out.figures)


def test_evaluate_images_scores_the_estimator_on_a_subset_that_holds_the_grid(tmp_path):
    _project(tmp_path, num_train_ids=1)  # 8 annotated images
    fake = CountingEstimator()
    out = run_pose("tiny", tmp_path, _params(source="auto", evaluate_images=3, grid_images=2), fake)
    # rows 0, 4 (rounded 3.5), 7 evenly spaced; the grid's picks 0 and 7 are among them
    table = read_poses(out.table)
    assert len(fake.calls) == 1 and len(set(fake.calls[0])) == 3
    assert out.metrics["evaluation"]["images"] == 3 and out.metrics["estimator"]["ok"] == 3
    assert set(table["source"]) == {"annotations"} and len(table) == 8  # the keypoints are still every image's
    fake = CountingEstimator()
    run_pose("tiny", tmp_path, _params(source="auto", evaluate_images=1, grid_images=2), fake)
    assert not any(fake.calls)  # rows 0 and 7 (grid) were estimated by the last run: reused
    with pytest.raises(ParamsError, match="pose.evaluate_images: must be >= 0"):
        _params(evaluate_images=-1)


def test_stage_records_a_corrupt_image_as_failed_and_finishes(estimator, tmp_path):
    _project(tmp_path, num_train_ids=1)
    victim = sorted((tmp_path / "data/raw/tiny/bounding_box_train").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated after ingest
    # MediaPipe in this process (the worker pool is tested above) keeps the test quick.
    out = run_pose(
        "tiny", tmp_path, _params(source="estimator"), lambda paths: list(map(estimator.estimate_file, paths))
    )
    report = json.loads(out.report.read_text())
    assert [f["path"] for f in report["failed_files"]] == [f"bounding_box_train/{victim.name}"]
    assert victim.name in report["failed_files"][0]["error"]
    assert report["status"]["failed"] == 1 and report["images"] == 8
    table = read_poses(out.table).set_index("path")
    assert table.loc[f"bounding_box_train/{victim.name}", "status"] == "failed"
    assert not present(np.array([[table.loc[f"bounding_box_train/{victim.name}", "x_1"], 0, 0]])).any()
    assert report["status"]["ok"] >= 6  # MediaPipe finds most synthetic figures of domain a
    assert out.figures[0].is_file()


def test_stage_annotations_only_runs_no_estimator_and_names_a_missing_file(tmp_path):
    _project(tmp_path, num_train_ids=1)
    fake = CountingEstimator()
    out = run_pose("tiny", tmp_path, _params(source="annotations", evaluate=False), fake)
    assert fake.calls == [] and out.work == {"estimated": 0, "reused": 0}
    assert out.metrics["sources"] == {"annotations": 8, "estimator": 0} and "evaluation" not in out.metrics
    assert out.estimates.is_file() and len(read_poses(out.estimates)) == 0
    with pytest.raises(FileNotFoundError, match="none.json"):
        run_pose("tiny", tmp_path, _params(source="annotations", annotations="none.json"), fake)


def test_stage_params_name_the_bad_key():
    from advreid.params import ParamsError

    with pytest.raises(ParamsError, match="pose.source"):
        _params(source="openpose")
    with pytest.raises(ParamsError, match="upscale"):
        _params(upscale=0).estimator_settings()
