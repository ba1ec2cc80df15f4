"""The 18 OpenPose-order joints, MediaPipe's 33 -> 18 mapping and visibility rule, annotations and the table."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from advreid.pose.keypoints import (
    JOINT_INDEX,
    JOINTS,
    LIMBS,
    MEDIAPIPE_INDEX,
    draw_skeleton,
    frame_keypoints,
    from_mediapipe,
    lookup_keypoints,
    poses_frame,
    present,
    read_annotations,
    read_poses,
    read_poses_metadata,
    write_poses,
)


@dataclass
class FakeLandmark:
    x: float
    y: float
    visibility: float


def landmarks(visibility: float = 0.9) -> list[FakeLandmark]:
    """33 landmarks at distinct positions inside the image: landmark i at x = (i + 1) / 40, y = (i + 1) / 50."""
    return [FakeLandmark((i + 1) / 40, (i + 1) / 50, visibility) for i in range(33)]


def test_joint_order_is_openpose_and_matches_the_demo_annotations():
    assert len(JOINTS) == 18
    assert JOINTS[:2] == ("nose", "neck") and JOINTS[-4:] == ("r_eye", "l_eye", "r_ear", "l_ear")
    assert all(0 <= a < 18 and 0 <= b < 18 for a, b in LIMBS)


def test_mapping_agrees_with_mediapipe_pose_landmark_enum():
    from mediapipe.python.solutions.pose import PoseLandmark

    for name in JOINTS:
        if name == "neck":
            assert MEDIAPIPE_INDEX[name] == (PoseLandmark.LEFT_SHOULDER, PoseLandmark.RIGHT_SHOULDER)
            continue
        side = {"r": "RIGHT_", "l": "LEFT_"}.get(name[:1], "") if name[1:2] == "_" else ""
        enum_name = side + (name[2:] if side else name).upper()
        assert MEDIAPIPE_INDEX[name] == PoseLandmark[enum_name].value, name
    # The map measured on this machine (ENVIRONMENT.md), neck aside.
    flat = [MEDIAPIPE_INDEX[n] for n in JOINTS if n != "neck"]
    assert flat == [0, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]


def test_from_mediapipe_maps_positions_to_pixels_with_visibility_as_confidence():
    height, width = 100, 50
    kp = from_mediapipe(landmarks(0.9), height, width)
    assert kp.shape == (18, 3)
    for name, index in MEDIAPIPE_INDEX.items():
        if name == "neck":
            continue
        j = JOINT_INDEX[name]
        np.testing.assert_allclose(kp[j], [(index + 1) / 40 * width, (index + 1) / 50 * height, 0.9], rtol=1e-6)
    # The subject's right shoulder is MediaPipe's landmark 12, the left 11.
    np.testing.assert_allclose(kp[JOINT_INDEX["r_shoulder"], :2], [13 / 40 * 50, 13 / 50 * 100], rtol=1e-6)
    np.testing.assert_allclose(kp[JOINT_INDEX["l_shoulder"], :2], [12 / 40 * 50, 12 / 50 * 100], rtol=1e-6)


def test_neck_is_the_shoulder_midpoint_with_the_lower_visibility():
    lms = landmarks(0.9)
    lms[11] = FakeLandmark(0.2, 0.3, 0.8)
    lms[12] = FakeLandmark(0.6, 0.5, 0.6)
    kp = from_mediapipe(lms, 200, 100)
    np.testing.assert_allclose(kp[JOINT_INDEX["neck"]], [40.0, 80.0, 0.6], rtol=1e-6)
    # One shoulder below the threshold: that shoulder and the neck are missing, the other shoulder is kept.
    lms[11] = FakeLandmark(0.2, 0.3, 0.3)
    kp = from_mediapipe(lms, 200, 100)
    assert not present(kp)[JOINT_INDEX["neck"]] and not present(kp)[JOINT_INDEX["l_shoulder"]]
    assert present(kp)[JOINT_INDEX["r_shoulder"]]


def test_visibility_threshold_is_inclusive_and_missing_joints_are_nan_with_zero_confidence():
    lms = landmarks(0.9)
    lms[14] = FakeLandmark(0.5, 0.5, 0.49)  # r_elbow
    lms[13] = FakeLandmark(0.5, 0.5, 0.5)  # l_elbow
    kp = from_mediapipe(lms, 100, 50, min_visibility=0.5)
    r_elbow, l_elbow = kp[JOINT_INDEX["r_elbow"]], kp[JOINT_INDEX["l_elbow"]]
    assert np.isnan(r_elbow[:2]).all() and r_elbow[2] == 0.0
    np.testing.assert_allclose(l_elbow, [25.0, 50.0, 0.5])
    assert present(kp).sum() == 17
    assert present(from_mediapipe(lms, 100, 50, min_visibility=0.0)).all()


@pytest.mark.parametrize(
    ("x", "y", "kept"),
    [(0.0, 0.0, True), (0.999, 0.999, True), (1.0, 0.5, False), (-0.01, 0.5, False), (0.5, 1.2, False)],
)
def test_a_landmark_outside_the_image_is_missing(x, y, kept):
    lms = landmarks(0.9)
    lms[16] = FakeLandmark(x, y, 0.99)  # r_wrist, confidently placed
    kp = from_mediapipe(lms, 128, 64)
    assert present(kp)[JOINT_INDEX["r_wrist"]] == kept


def test_no_detection_gives_all_missing_and_wrong_input_is_rejected():
    kp = from_mediapipe(None, 128, 64)
    assert not present(kp).any() and np.isnan(kp[:, :2]).all() and (kp[:, 2] == 0).all()
    with pytest.raises(ValueError, match="33 MediaPipe landmarks"):
        from_mediapipe(landmarks()[:32], 128, 64)
    with pytest.raises(ValueError, match="min_visibility"):
        from_mediapipe(landmarks(), 128, 64, min_visibility=1.5)


def _annotation_file(tmp_path, images, joints=JOINTS):
    path = tmp_path / "keypoints.json"
    path.write_text(json.dumps({"format": "coco18", "joints": list(joints), "images": images}))
    return path


def test_read_annotations_turns_unlabelled_joints_into_missing(tmp_path):
    triples = [[float(j), float(2 * j), 1] for j in range(18)]
    triples[3] = [0.0, 0.0, 0]
    out = read_annotations(_annotation_file(tmp_path, {"query/a.jpg": triples}))
    kp = out["query/a.jpg"]
    assert kp.dtype == np.float32 and kp.shape == (18, 3)
    assert np.isnan(kp[3, :2]).all() and kp[3, 2] == 0
    np.testing.assert_array_equal(kp[5], [5.0, 10.0, 1.0])


def test_read_annotations_names_the_file_and_field_that_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="'joints'"):
        read_annotations(_annotation_file(tmp_path, {}, joints=JOINTS[::-1]))
    with pytest.raises(ValueError, match=r"images\['a.jpg'\].*shape"):
        read_annotations(_annotation_file(tmp_path, {"a.jpg": [[1.0, 2.0, 1]] * 17}))
    with pytest.raises(ValueError, match="keypoints.json"):
        read_annotations(_annotation_file(tmp_path, {"a.jpg": [[1.0, 2.0, 2]] * 18}))


def _table(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    kp = rng.uniform(0, 60, size=(n, 18, 3)).astype(np.float32)
    kp[0, 4] = (np.nan, np.nan, 0.0)
    sha = [f"{i:064x}" for i in range(n)]
    paths = [f"train/{n - i:03d}.jpg" for i in range(n)]
    frame = poses_frame(sha, paths, kp, ["estimator"] * n, ["ok"] * (n - 1) + ["no_detection"])
    return frame, kp


def test_keypoints_table_round_trips_and_is_sorted_by_path(tmp_path):
    frame, kp = _table(5, np.random.default_rng(0))
    assert frame["path"].is_monotonic_increasing
    assert list(frame.columns[:4]) == ["sha256", "path", "source", "status"]
    assert list(frame.columns[4:7]) == ["x_0", "x_1", "x_2"] and frame.columns[-1] == "c_17"
    write_poses(frame, tmp_path / "p.parquet", {"k": "v"})
    back = read_poses(tmp_path / "p.parquet")
    assert read_poses_metadata(tmp_path / "p.parquet") == {"k": "v"}
    by_sha = back.set_index("sha256")
    for i in range(5):
        np.testing.assert_array_equal(frame_keypoints(by_sha.loc[[f"{i:064x}"]])[0], kp[i])
    assert by_sha.loc[f"{0:064x}", "x_4"] != by_sha.loc[f"{0:064x}", "x_4"]  # NaN survives
    assert by_sha.loc[f"{0:064x}", "y_4"] != by_sha.loc[f"{0:064x}", "y_4"]
    # Stable bytes: writing the same table again gives the same file.
    write_poses(frame, tmp_path / "q.parquet", {"k": "v"})
    assert (tmp_path / "p.parquet").read_bytes() == (tmp_path / "q.parquet").read_bytes()


def test_poses_frame_rejects_unknown_status_and_repeated_keys():
    kp = np.zeros((2, 18, 3), np.float32)
    with pytest.raises(ValueError, match="status"):
        poses_frame(["a", "b"], ["x", "y"], kp, ["estimator"] * 2, ["ok", "fine"])
    with pytest.raises(ValueError, match="repeats"):
        poses_frame(["a", "a"], ["x", "y"], kp, ["estimator"] * 2, ["ok", "ok"])


def test_lookup_keypoints_follows_the_manifest_order_by_sha256():
    poses, kp = _table(6, np.random.default_rng(1))
    manifest = pd.DataFrame({"sha256": [f"{i:064x}" for i in (4, 0, 2, 4)], "path": ["a", "b", "c", "d"]})
    got = lookup_keypoints(manifest, poses)
    np.testing.assert_array_equal(got, kp[[4, 0, 2, 4]])
    unknown = pd.DataFrame({"sha256": [f"{1:064x}", "f" * 64], "path": ["known.jpg", "new/img.jpg"]})
    with pytest.raises(KeyError, match=r"lacks 1 of 2 .*new/img\.jpg"):
        lookup_keypoints(unknown, poses)


def test_draw_skeleton_marks_present_joints_only():
    image = np.full((20, 10, 3), 128, np.uint8)
    kp = np.full((18, 3), np.nan, np.float32)
    kp[:, 2] = 0
    plain = draw_skeleton(image, kp, scale=3)
    assert plain.shape == (60, 30, 3)
    assert (plain == 128).all()
    kp[JOINT_INDEX["r_wrist"]] = (5.5, 10.5, 1.0)  # centre of pixel (10, 5) -> (31, 16) at scale 3
    drawn = draw_skeleton(image, kp, scale=3)
    assert tuple(drawn[31, 16]) == (230, 40, 20)  # the subject's right side is red
    assert (drawn[:20] == 128).all()  # nothing else drawn: no limb has both ends present
