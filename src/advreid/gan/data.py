"""IPES-GAN's training data: one domain's train images, cameras and pose keypoints in memory, and the batches.

The source domain keeps its identity labels; the target domain is unlabelled (thesis sec. 3.2: only camera ids
are known), so :func:`load_domain` with ``labelled=False`` never reads the manifest's ``label`` column into the
object the trainer receives. Batches are a pure function of (seed, iteration), which makes resuming exact.
Source batch (thesis sec. 3.3.2): "a random ID and ... images from different cameras" — B / k identities, k images
each spread over cameras; target batch: images "from different cameras", one camera after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advreid.data.torch_data import ManifestImages, load_split
from advreid.pose.heatmaps import batch_pose_heatmaps, scale_keypoints
from advreid.pose.keypoints import lookup_keypoints, read_poses


@dataclass(frozen=True)
class DomainImages:
    """One domain's training images (uint8, (N, 3, H, W)), contiguous camera ids, keypoints in pixels of H x W;
    ``labels`` (contiguous identity classes) only for the labelled source domain."""

    name: str
    images: Tensor
    cameras: Tensor
    keypoints: Tensor  # (N, 18, 3)
    num_cameras: int
    labels: Tensor | None = None
    num_classes: int = 0

    def __len__(self) -> int:
        return len(self.images)


def load_domain(
    processed_dir: str | Path,
    poses_path: str | Path,
    size: tuple[int, int],
    *,
    labelled: bool,
    resize: bool = False,
    root: str | Path = ".",
    split: str = "train",
) -> DomainImages:
    """The ``split`` images of a processed dataset at ``size`` (H, W) with their pose-stage keypoints.

    Raises:
        ValueError: an image whose size differs from ``size`` (unless ``resize``), or an image without a row in
            the keypoints table, naming the file.
    """
    frame, raw_root = load_split(processed_dir, split, root)
    if not resize:
        wrong = frame[(frame["height"] != size[0]) | (frame["width"] != size[1])]
        if len(wrong):
            row = wrong.iloc[0]
            raise ValueError(
                f"{raw_root / row['path']}: image is {row['height']}x{row['width']}, params ask for "
                f"{size[0]}x{size[1]} ({len(wrong)} such images in {processed_dir}); set resize: true to resize"
            )
    try:
        keypoints = torch.from_numpy(lookup_keypoints(frame, read_poses(poses_path)))
    except KeyError as err:
        raise ValueError(f"{poses_path}: {err.args[0]}") from err
    original = frame[["height", "width"]].to_numpy(dtype=np.float32)
    keypoints = torch.stack(
        [scale_keypoints(k, (float(h), float(w)), size) for k, (h, w) in zip(keypoints, original.tolist(), strict=True)]
    )
    # labels are read (relabel) only for the source; the target's are dropped before anything reaches the trainer
    dataset = ManifestImages(frame.assign(label=0) if not labelled else frame, raw_root, relabel=labelled, size=size)
    images = torch.stack([dataset.image(i).mul(255).round().to(torch.uint8) for i in range(len(dataset))])
    cameras = np.unique(frame["camera"].to_numpy(), return_inverse=True)[1]
    return DomainImages(
        name=Path(processed_dir).name,
        images=images,
        cameras=torch.as_tensor(cameras, dtype=torch.long),
        keypoints=keypoints,
        num_cameras=int(cameras.max()) + 1,
        labels=torch.as_tensor(dataset.labels, dtype=torch.long) if labelled else None,
        num_classes=dataset.num_classes if labelled else 0,
    )


def _spread_over_cameras(indices: np.ndarray, cameras: np.ndarray, count: int, rng: np.random.Generator) -> list:
    """``count`` of ``indices`` (shuffled), taking one camera after another so the batch spans cameras."""
    by_camera = [rng.permutation(indices[cameras[indices] == c]).tolist() for c in rng.permutation(np.unique(cameras))]
    picked: list[int] = []
    while len(picked) < count:
        for members in by_camera:
            if members and len(picked) < count:
                picked.append(members.pop())
        if not any(by_camera):  # fewer images than asked: draw the rest with replacement
            picked += rng.choice(indices, size=count - len(picked)).tolist()
    return picked


def batch_indices(
    source: DomainImages, target: DomainImages, batch_size: int, source_k: int, seed: int, iteration: int
) -> tuple[list[int], list[int]]:
    """The source and target rows of one iteration, a pure function of (seed, iteration)."""
    rng = np.random.default_rng([seed, iteration])
    labels = source.labels.numpy()
    cameras = source.cameras.numpy()
    identities = rng.choice(np.unique(labels), size=-(-batch_size // source_k), replace=False)
    rows: list[int] = []
    for identity in identities:
        rows += _spread_over_cameras(np.flatnonzero(labels == identity), cameras, source_k, rng)
    target_rows = _spread_over_cameras(np.arange(len(target)), target.cameras.numpy(), batch_size, rng)
    return rows[:batch_size], target_rows


def domain_batch(domain: DomainImages, rows: list[int], sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """(images in [0, 1], cameras, 18-channel pose heat maps) of ``rows``."""
    index = torch.as_tensor(rows, dtype=torch.long)
    images = domain.images[index].float().div(255.0)
    pose = batch_pose_heatmaps(domain.keypoints[index], images.shape[2], images.shape[3], sigma)
    return images, domain.cameras[index], pose
