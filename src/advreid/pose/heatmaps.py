"""Gaussian pose heatmaps: the 18-channel pose map IPES-GAN's pose encoder takes beside the image.

The thesis (sec. 3.2.1, "Pose Guided Generation") concatenates an image in R^{C x H x W} with a pose in
R^{18 x H x W} into the 21-channel input of the pose encoder. Channel j is
``exp(-((u - x_j)^2 + (v - y_j)^2) / (2 sigma^2))`` over pixel centres ``(u, v) = (col + 0.5, row + 0.5)``,
so it peaks at the pixel that contains keypoint j, with value 1 when the keypoint sits on that pixel's
centre; a missing joint gives an all-zero channel.
"""

from __future__ import annotations

import torch
from torch import Tensor


def batch_pose_heatmaps(keypoints: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Heatmaps for a batch of poses.

    Args:
        keypoints: (B, J, 3) float ``(x, y, confidence)`` in pixels of an ``height x width`` image (see
            :mod:`advreid.pose.keypoints`); a joint with confidence <= 0 or non-finite coordinates is missing.
        height, width: output size in pixels (any, not necessarily square).
        sigma: Gaussian standard deviation in pixels, > 0.

    Returns:
        (B, J, height, width) heatmaps in [0, 1], dtype and device of ``keypoints``.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must have shape (B, J, 3), got {tuple(keypoints.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not keypoints.is_floating_point():
        keypoints = keypoints.float()
    x, y, confidence = keypoints.unbind(-1)  # each (B, J)
    there = (confidence > 0) & torch.isfinite(x) & torch.isfinite(y)
    # Missing joints get a harmless finite centre; the mask zeroes their channel afterwards.
    x = torch.where(there, x, torch.zeros_like(x))
    y = torch.where(there, y, torch.zeros_like(y))
    cols = torch.arange(width, dtype=keypoints.dtype, device=keypoints.device) + 0.5
    rows = torch.arange(height, dtype=keypoints.dtype, device=keypoints.device) + 0.5
    # The 2-D Gaussian is separable: an outer product of a row and a column profile.
    gx = torch.exp(-((cols - x[..., None]) ** 2) / (2 * sigma**2))  # (B, J, W)
    gy = torch.exp(-((rows - y[..., None]) ** 2) / (2 * sigma**2))  # (B, J, H)
    maps = gy[..., :, None] * gx[..., None, :]  # (B, J, H, W)
    return maps * there[..., None, None].to(maps.dtype)


def pose_heatmaps(keypoints: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Heatmaps of one pose: (J, 3) keypoints -> (J, height, width); see :func:`batch_pose_heatmaps`."""
    if keypoints.ndim != 2:
        raise ValueError(f"keypoints must have shape (J, 3), got {tuple(keypoints.shape)}")
    return batch_pose_heatmaps(keypoints[None], height, width, sigma)[0]


def scale_keypoints(keypoints: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Keypoints of an image of ``from_size = (H, W)`` expressed in pixels of the image resized to ``to_size``.

    Exact for a plain resize under the pixel-edge convention (x in [0, W)); confidence is unchanged.
    """
    (h0, w0), (h1, w1) = from_size, to_size
    factor = keypoints.new_tensor([w1 / w0, h1 / h0, 1.0])
    return keypoints * factor
