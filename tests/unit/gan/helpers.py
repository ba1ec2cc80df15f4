"""Tiny in-memory domains and settings for the IPES-GAN unit tests (32 x 16 images, widths of 2-4 channels)."""

from __future__ import annotations

import torch

from advreid.gan.data import DomainImages
from advreid.gan.trainer import GANSettings
from advreid.models.reid import build_reid_model

HEIGHT, WIDTH = 32, 16
TINY = GANSettings(
    max_iter=6,
    batch_size=4,
    source_k=2,
    height=HEIGHT,
    width=WIDTH,
    pose_width=2,
    res_blocks=1,
    style_width=2,
    style_dim=4,
    mlp_dim=8,
    dis_width=2,
    dis_scales=1,
    dis_res_blocks=0,
    decoder_kernel=3,
    ramp_start=2,
    ramp_length=2,
    checkpoint_every=2,
    log_every=1,
)


def tiny_domain(name: str, identities: int, cameras: int, per_camera: int, seed: int, labelled: bool) -> DomainImages:
    """Images: a person-shaped block of an identity's colour on a camera-tinted background; random keypoints."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(identities, 3, generator=g)
    tints = torch.rand(cameras, 3, generator=g)
    images, labels, cams = [], [], []
    for identity in range(identities):
        for camera in range(cameras):
            for _ in range(per_camera):
                image = tints[camera][:, None, None].expand(3, HEIGHT, WIDTH).clone()
                image[:, 6:28, 4:12] = colours[identity][:, None, None]
                images.append(image.add(0.05 * torch.rand(3, HEIGHT, WIDTH, generator=g)).clamp(0, 1))
                labels.append(identity)
                cams.append(camera)
    n = len(images)
    keypoints = torch.cat(
        [torch.rand(n, 18, 1, generator=g) * WIDTH, torch.rand(n, 18, 1, generator=g) * HEIGHT, torch.ones(n, 18, 1)],
        dim=2,
    )
    return DomainImages(
        name=name,
        images=torch.stack(images).mul(255).round().to(torch.uint8),
        cameras=torch.tensor(cams),
        keypoints=keypoints,
        num_cameras=cameras,
        labels=torch.tensor(labels) if labelled else None,
        num_classes=identities if labelled else 0,
    )


def tiny_teacher(num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_reid_model("small_cnn", num_classes).eval()
