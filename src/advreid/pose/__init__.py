"""Pose: 18 OpenPose-order keypoints (MediaPipe or dataset annotations), Gaussian heatmaps, PCK.

- :mod:`advreid.pose.keypoints`: joint names, limbs, MediaPipe 33 -> 18 mapping and visibility rule,
  annotations, the keypoints table and :func:`lookup_keypoints` for a manifest frame.
- :mod:`advreid.pose.heatmaps`: :func:`pose_heatmaps` / :func:`batch_pose_heatmaps` (IPES-GAN's 18
  pose channels) and :func:`scale_keypoints`.
- :mod:`advreid.pose.quality`: :func:`pck`, :func:`joint_detection_rate`, :func:`person_height`.
- :mod:`advreid.pose.estimator`: :class:`PoseEstimator` and :func:`estimate_files` (worker processes);
  MediaPipe is imported only when an estimator is built.
"""

from advreid.pose.heatmaps import batch_pose_heatmaps, pose_heatmaps, scale_keypoints
from advreid.pose.keypoints import JOINTS, LIMBS, NUM_JOINTS, lookup_keypoints, read_poses
from advreid.pose.quality import joint_detection_rate, pck, person_height

__all__ = [
    "JOINTS",
    "LIMBS",
    "NUM_JOINTS",
    "batch_pose_heatmaps",
    "joint_detection_rate",
    "lookup_keypoints",
    "pck",
    "person_height",
    "pose_heatmaps",
    "read_poses",
    "scale_keypoints",
]
