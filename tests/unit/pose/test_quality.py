"""PCK and joint detection rate on hand-built poses with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from advreid.pose.quality import joint_detection_rate, pck, person_height

NAN = float("nan")
MISSING = (NAN, NAN, 0.0)


def _cases() -> tuple[torch.Tensor, torch.Tensor]:
    """Three images of a 3-joint body.

    Image 0: truth (0, 0), (0, 100), (10, 50) -> height 100; estimate off by 5 and 15, third joint missed.
    Image 1: truth (0, 0), (0, 50), joint 2 unlabelled -> height 50; estimate off by 10 and 0, plus a
    joint 2 that must not be scored. Image 2: one labelled joint -> no height, left out of PCK.
    """
    truth = torch.tensor(
        [
            [(0.0, 0.0, 1.0), (0.0, 100.0, 1.0), (10.0, 50.0, 1.0)],
            [(0.0, 0.0, 1.0), (0.0, 50.0, 1.0), MISSING],
            [(5.0, 5.0, 1.0), MISSING, MISSING],
        ],
        dtype=torch.float64,
    )
    pred = torch.tensor(
        [
            [(3.0, 4.0, 0.9), (0.0, 115.0, 0.8), MISSING],
            [(6.0, 8.0, 0.9), (0.0, 50.0, 0.9), (1.0, 1.0, 0.9)],
            [(5.0, 5.0, 0.9), MISSING, MISSING],
        ],
        dtype=torch.float64,
    )
    return pred, truth


def test_person_height_is_the_vertical_extent_of_visible_annotated_joints():
    _, truth = _cases()
    height = person_height(truth)
    assert height[:2].tolist() == [100.0, 50.0]
    assert math.isnan(height[2].item())  # a single joint has no extent


def test_pck_at_0_1_and_0_2_match_hand_counts():
    pred, truth = _cases()
    # alpha 0.1: thresholds 10 and 5 px -> image 0: [5 ok, 15 no, missed]; image 1: [10 no, 0 ok].
    per_joint, overall = pck(pred, truth, 0.1)
    assert per_joint.tolist() == [0.5, 0.5, 0.0]
    assert overall.item() == pytest.approx(2 / 5)
    # alpha 0.2: thresholds 20 and 10 px (inclusive) -> image 0: [ok, ok, missed]; image 1: [ok, ok].
    per_joint, overall = pck(pred, truth, 0.2)
    assert per_joint.tolist() == [1.0, 1.0, 0.0]
    assert overall.item() == pytest.approx(4 / 5)


def test_pck_is_nan_for_a_joint_never_scored_and_one_for_a_perfect_estimate():
    pred, truth = _cases()
    truth[:, 2] = torch.tensor(MISSING, dtype=torch.float64)
    per_joint, overall = pck(truth.clone(), truth, 0.01)
    assert per_joint[:2].tolist() == [1.0, 1.0] and math.isnan(per_joint[2].item())
    assert overall.item() == 1.0


def test_joint_detection_rate_counts_annotated_joints_the_estimate_has():
    pred, truth = _cases()
    per_joint, overall = joint_detection_rate(pred, truth)
    # Annotated: joint 0 in 3 images, joint 1 in 2, joint 2 in 1; found: 3, 2, 0.
    assert per_joint.tolist() == [1.0, 1.0, 0.0]
    assert overall.item() == pytest.approx(5 / 6)


def test_shape_and_alpha_errors():
    pred, truth = _cases()
    with pytest.raises(ValueError, match=r"\(N, J, 3\)"):
        pck(pred[:2], truth, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        pck(pred, truth, 0.0)
