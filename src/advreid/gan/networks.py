"""IPES-GAN's networks (thesis sec. 3.2 and 3.3.2; layer details from DG-Net, spec ipes_gan.md sec. 1.1).

Per domain X in {S, T}: a pose encoder E^X_p (image + 18 pose heat-map channels = 21 in; two downsampling
convolutions, residual blocks, ASPP), a style encoder E^X_s (6 convolutions, global pooling, a code f_style and a
camera classifier over that domain's cameras) and an AdaIN decoder G_X rendering persons of domain X. Shared by
both domains: the identity encoder E_id (a Re-ID model of :mod:`advreid.models.reid`, built elsewhere) and one
multi-scale LSGAN discriminator D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

POSE_CHANNELS = 18


@dataclass(frozen=True)
class NetworkSizes:
    """Channel widths and depths (thesis scale: d = 16, 4 residual blocks, d_s = 16, s = 128, D 3 scales of 32)."""

    pose_width: int = 16  # d: f_pose has 8d channels at H/4 x W/4
    res_blocks: int = 4  # in each pose encoder and decoder
    style_width: int = 16  # d_s
    style_dim: int = 128  # s
    mlp_dim: int = 512  # hidden width of the AdaIN parameter MLP
    dis_width: int = 32
    dis_scales: int = 3
    dis_res_blocks: int = 4
    decoder_kernel: int = 5  # of the two upsampling convolutions (DG-Net: 5)


def _conv(
    c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1, norm: str = "in", pad: str = "reflect"
) -> nn.Sequential:
    # reflect padding as DG-Net; zeros for ASPP's dilated branches and the style encoder's last layers, whose
    # padding can exceed a small map (the style encoder downsamples 32x)
    mode = pad if dilation == 1 else "zeros"
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation, padding_mode=mode)
    ]
    if norm == "in":
        layers.append(nn.InstanceNorm2d(c_out, affine=True))
    elif norm == "ln":  # DG-Net's LayerNorm: per sample over (C, H, W), per-channel affine = GroupNorm with 1 group
        layers.append(nn.GroupNorm(1, c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """x + conv(conv(x)), 3x3 convolutions with instance norm (or none, for the discriminator)."""

    def __init__(self, channels: int, norm: str = "in"):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3, norm=norm), _conv(channels, channels, 3, norm=norm))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2018): 1x1 and dilated 3x3 branches (3, 6, 9), fused by 1x1."""

    def __init__(self, c_in: int, c_out: int, dilations: tuple[int, ...] = (3, 6, 9)):
        super().__init__()
        branch = c_out // 4
        self.branches = nn.ModuleList(
            [_conv(c_in, branch, 1)] + [_conv(c_in, branch, 3, dilation=d) for d in dilations]
        )
        self.fuse = _conv(branch * (1 + len(dilations)), c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


class PoseEncoder(nn.Module):
    """E^X_p: [image; 18 pose maps] (B, 3 + 18, H, W) -> f_pose (B, 8d, H/4, W/4)."""

    def __init__(self, sizes: NetworkSizes):
        super().__init__()
        d = sizes.pose_width
        self.net = nn.Sequential(
            _conv(3 + POSE_CHANNELS, d, 3, stride=2),
            _conv(d, 2 * d, 3),
            _conv(2 * d, 2 * d, 3),
            _conv(2 * d, 4 * d, 3, stride=2),
            *[ResBlock(4 * d) for _ in range(sizes.res_blocks)],
            ASPP(4 * d, 8 * d),
        )
        self.out_channels = 8 * d

    def forward(self, image: Tensor, pose: Tensor) -> Tensor:
        return self.net(torch.cat([image, pose], dim=1))


class StyleEncoder(nn.Module):
    """E^X_s: image (B, 3, H, W) -> f_style (B, s); ``camera_logits`` classifies a code over this domain's cameras."""

    def __init__(self, sizes: NetworkSizes, num_cameras: int):
        super().__init__()
        w = sizes.style_width
        self.net = nn.Sequential(
            _conv(3, w, 3, stride=2, norm="none", pad="zeros"),
            _conv(w, w, 3, norm="none", pad="zeros"),
            _conv(w, 2 * w, 3, stride=2, norm="none", pad="zeros"),
            _conv(2 * w, 4 * w, 3, stride=2, norm="none", pad="zeros"),
            _conv(4 * w, 4 * w, 3, stride=2, norm="none", pad="zeros"),
            _conv(4 * w, 4 * w, 3, stride=2, norm="none", pad="zeros"),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(4 * w, sizes.style_dim, 1),
        )
        self.camera_head = nn.Linear(sizes.style_dim, num_cameras)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image).flatten(1)

    def camera_logits(self, style: Tensor) -> Tensor:
        return self.camera_head(style)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: instance-normalise, then scale and shift by (gamma, beta) set per sample."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.gamma: Tensor | None = None
        self.beta: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.gamma is None or self.beta is None:
            raise RuntimeError("AdaIN: the decoder sets gamma and beta before use")
        return F.instance_norm(x) * (1 + self.gamma[:, :, None, None]) + self.beta[:, :, None, None]


class AdaINResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm1 = AdaIN(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm2 = AdaIN(channels)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        return x + self.norm2(self.conv2(h))


class Decoder(nn.Module):
    """G_X: f_pose (B, 8d, H/4, W/4) and the global code [f_style; f_ind] -> image (B, 3, H, W) in [0, 1].

    The AdaIN (gamma, beta) of every residual block come from an MLP on the global code."""

    def __init__(self, sizes: NetworkSizes, id_dim: int):
        super().__init__()
        d = sizes.pose_width
        self.blocks = nn.ModuleList([AdaINResBlock(8 * d) for _ in range(sizes.res_blocks)])
        self.adain = [m for m in self.blocks.modules() if isinstance(m, AdaIN)]
        self.mlp = nn.Sequential(
            nn.Linear(sizes.style_dim + id_dim, sizes.mlp_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(sizes.mlp_dim, sizes.mlp_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(sizes.mlp_dim, 2 * sum(m.channels for m in self.adain)),
        )
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2),
            _conv(8 * d, 4 * d, sizes.decoder_kernel, norm="ln"),
            nn.Upsample(scale_factor=2),
            _conv(4 * d, 2 * d, sizes.decoder_kernel, norm="ln"),
            _conv(2 * d, 2 * d, 3, norm="ln"),
            _conv(2 * d, 2 * d, 3, norm="ln"),
            nn.Conv2d(2 * d, 3, 1),
        )

    def forward(self, pose: Tensor, style: Tensor, identity: Tensor) -> Tensor:
        params = self.mlp(torch.cat([style, identity], dim=1))
        start = 0
        for norm in self.adain:
            norm.gamma = params[:, start : start + norm.channels]
            norm.beta = params[:, start + norm.channels : start + 2 * norm.channels]
            start += 2 * norm.channels
        x = pose
        for block in self.blocks:
            x = block(x)
        return torch.sigmoid(self.up(x))


class MultiScaleDiscriminator(nn.Module):
    """D: a patch discriminator at each of ``dis_scales`` scales (average-pooled x1/2 between); a list of maps."""

    def __init__(self, sizes: NetworkSizes):
        super().__init__()
        w = sizes.dis_width

        def scale() -> nn.Sequential:
            return nn.Sequential(
                _conv(3, w, 1, norm="none"),
                _conv(w, w, 3, norm="none"),
                _conv(w, 2 * w, 3, stride=2, norm="none"),
                _conv(2 * w, 2 * w, 3, norm="none"),
                _conv(2 * w, 2 * w, 3, stride=2, norm="none"),
                *[ResBlock(2 * w, norm="none") for _ in range(sizes.dis_res_blocks)],
                nn.Conv2d(2 * w, 1, 1),
            )

        self.scales = nn.ModuleList([scale() for _ in range(sizes.dis_scales)])

    def forward(self, image: Tensor) -> list[Tensor]:
        outputs = []
        for i, net in enumerate(self.scales):
            if i > 0:
                image = F.avg_pool2d(image, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(net(image))
        return outputs


class Generator(nn.Module):
    """The private, per-domain modules: pose and style encoders and decoders of S and T (the Adam set with D apart).

    Attribute names end in ``_source`` / ``_target``: ``decoder_source`` is G_S (renders source persons)."""

    def __init__(self, sizes: NetworkSizes, id_dim: int, source_cameras: int, target_cameras: int):
        super().__init__()
        self.pose_source, self.pose_target = PoseEncoder(sizes), PoseEncoder(sizes)
        self.style_source = StyleEncoder(sizes, source_cameras)
        self.style_target = StyleEncoder(sizes, target_cameras)
        self.decoder_source, self.decoder_target = Decoder(sizes, id_dim), Decoder(sizes, id_dim)
