"""Gaussian pose heatmaps: peak at the keypoint's pixel, exact Gaussian values, zero channels for missing joints."""

from __future__ import annotations

import math

import pytest
import torch

from advreid.pose.heatmaps import batch_pose_heatmaps, pose_heatmaps, scale_keypoints


def _keypoints(*points: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32)


@pytest.mark.parametrize(("height", "width"), [(128, 64), (17, 33), (40, 40)])
def test_peak_is_one_at_the_pixel_holding_the_keypoint(height, width):
    # Pixel (row i, col j) spans x in [j, j+1), y in [i, i+1): its centre is (j + 0.5, i + 0.5).
    kp = _keypoints((10.5, 12.5, 1.0), (3.2, 7.9, 0.7), (width - 0.5, height - 0.5, 1.0))
    maps = pose_heatmaps(kp, height, width, sigma=2.0)
    assert maps.shape == (3, height, width)
    for channel, (x, y, _) in zip(maps, kp.tolist(), strict=True):
        row, col = divmod(int(channel.argmax()), width)
        assert (row, col) == (math.floor(y), math.floor(x))
    assert maps[0, 12, 10].item() == 1.0 and maps[2, height - 1, width - 1].item() == 1.0
    assert maps.max() <= 1.0 and maps.min() >= 0.0


def test_values_are_the_gaussian_of_the_distance_to_pixel_centres():
    maps = pose_heatmaps(_keypoints((10.5, 20.5, 1.0)).double(), 40, 30, sigma=2.0)
    # Two pixels right of the peak: exp(-2^2 / (2 * 2^2)); one right and one down: exp(-2 / 8).
    assert maps[0, 20, 12].item() == pytest.approx(math.exp(-0.5), rel=1e-12)
    assert maps[0, 21, 11].item() == pytest.approx(math.exp(-0.25), rel=1e-12)
    assert maps.dtype == torch.float64


def test_missing_joints_give_zero_channels():
    kp = _keypoints((5.0, 5.0, 1.0), (5.0, 5.0, 0.0), (float("nan"), float("nan"), 0.0), (float("nan"), 3.0, 1.0))
    maps = pose_heatmaps(kp, 16, 12, sigma=1.5)
    # (5, 5) is a pixel corner: the four nearest centres are sqrt(0.5) away -> exp(-0.5 / (2 * 1.5^2)).
    assert maps[0].max().item() == pytest.approx(math.exp(-0.5 / 4.5), rel=1e-6)
    assert (maps[1:] == 0).all()
    assert torch.isfinite(maps).all()


def test_batched_variant_equals_one_by_one_for_18_channels():
    gen = torch.Generator().manual_seed(0)
    kp = torch.rand(4, 18, 3, generator=gen) * torch.tensor([64.0, 128.0, 1.0])
    kp[1, 5, 2] = 0.0
    maps = batch_pose_heatmaps(kp, 128, 64, sigma=3.0)
    assert maps.shape == (4, 18, 128, 64)
    for b in range(4):
        torch.testing.assert_close(maps[b], pose_heatmaps(kp[b], 128, 64, sigma=3.0))
    assert (maps[1, 5] == 0).all()


def test_scaled_keypoints_peak_in_the_resized_image():
    kp = _keypoints((20.3, 100.7, 1.0), (float("nan"), float("nan"), 0.0))
    big = scale_keypoints(kp, (128, 64), (256, 128))
    torch.testing.assert_close(big[0], torch.tensor([40.6, 201.4, 1.0]))
    assert torch.isnan(big[1, :2]).all() and big[1, 2] == 0
    maps = pose_heatmaps(big, 256, 128, sigma=4.0)
    assert divmod(int(maps[0].argmax()), 128) == (201, 40)


def test_bad_arguments_are_named():
    kp = _keypoints((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="sigma"):
        pose_heatmaps(kp, 8, 8, sigma=0.0)
    with pytest.raises(ValueError, match="height and width"):
        pose_heatmaps(kp, 0, 8, sigma=1.0)
    with pytest.raises(ValueError, match=r"\(J, 3\)"):
        pose_heatmaps(kp[0], 8, 8, sigma=1.0)


def test_scale_keypoints_with_a_non_uniform_resize_scales_x_by_width_and_y_by_height():
    """Catches swapped factors, invisible under a uniform resize: 128 x 64 -> 64 x 256 halves y, quadruples x."""
    kp = _keypoints((10.0, 100.0, 0.7), (63.5, 0.5, 1.0))
    out = scale_keypoints(kp, (128, 64), (64, 256))
    torch.testing.assert_close(out, _keypoints((40.0, 50.0, 0.7), (254.0, 0.25, 1.0)))
