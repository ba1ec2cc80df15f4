"""Denoisers of thesis chapter 6: DnCNN, wide-DnCNN, RDUNet (Fig. 6.2) and the AE of the ZO-AE variants.

Every denoiser is residual: it predicts the noise map d of its input x* and returns x* - d
(thesis Sec. 6.3.1: x_hat = x* + (-d)), and starts at the identity: its last layer is zero, so the untrained
residual is exactly 0 and training starts from "pass the noisy image through" instead of a random residual as
large as the noise itself (an untrained RDUNet's is 0.25 RMS). Images are float ``(B, C, H, W)``, nominally in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017) as used by Salman et al. 2020: conv-ReLU, (depth - 2) x conv-BN-ReLU, conv.

    Args:
        channels: image channels.
        depth: number of convolution layers (17 in the papers).
        width: feature channels (64; 128 for wide-DnCNN).
    """

    def __init__(self, channels: int, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be >= 2, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),  # BN supplies the bias
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        # Zhang et al. 2022 (ZO-AE-DS, whose DnCNN is Salman et al.'s): orthogonal conv weights, zero biases, BN
        # at weight 1, bias 0, eps 1e-4 and momentum 0.95 (the thesis is silent); the last conv is then zeroed so
        # that the denoiser starts at the identity.
        for module in self.body.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = 1e-4, 0.95
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(layers[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)  # the body estimates the noise


def wide_dncnn(channels: int, depth: int = 17, width: int = 128) -> DnCNN:
    """Wide-DnCNN: DnCNN with 128 feature channels (Salman et al. 2020's ``dncnn_wide``)."""
    return DnCNN(channels, depth=depth, width=width)


class DoubleConv(nn.Module):
    """DConv of Fig. 6.2: two (3x3 conv, BN, ReLU) layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class RDUNet(nn.Module):
    """Robust UNet denoiser (thesis Sec. 6.3.1, Fig. 6.2).

    Feedforward path: DConv, then 4 x (MaxPool + DConv), doubling the width at each level.
    Feedback path: 4 x (ConvTranspose2d upsampling, concatenation with the lateral feature of the same
    resolution, DConv), then a 1x1 convolution to the residual map d; the output is x* - d.
    Inputs whose height or width is not a multiple of 16 are reflect-padded (replicate-padded when
    too small to reflect) and the output is cropped back.

    Args:
        channels: image channels.
        base_width: width of the first level (64 in the thesis; small for CPU demos).
    """

    levels = 4

    def __init__(self, channels: int, base_width: int = 64) -> None:
        super().__init__()
        widths = [base_width * 2**k for k in range(self.levels + 1)]  # e.g. 64, 128, 256, 512, 1024
        self.inc = DoubleConv(channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[k], widths[k + 1])) for k in range(self.levels)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[k + 1], widths[k], kernel_size=2, stride=2) for k in reversed(range(self.levels))
        )
        self.fuse = nn.ModuleList(DoubleConv(2 * widths[k], widths[k]) for k in reversed(range(self.levels)))
        self.residual = nn.Conv2d(widths[0], channels, kernel_size=1)
        nn.init.zeros_(self.residual.weight)  # d = 0: the untrained RDUNet is the identity
        nn.init.zeros_(self.residual.bias)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        padded = _pad_to_multiple(x, 2**self.levels)
        features = [self.inc(padded)]  # lateral features, finest first
        for down in self.down:
            features.append(down(features[-1]))
        h = features.pop()  # the bottleneck
        for up, fuse in zip(self.up, self.fuse, strict=True):
            h = fuse(torch.cat([features.pop(), up(h)], dim=1))
        d = self.residual(h)[..., :height, :width]
        return x - d


class ConvEncoder(nn.Module):
    """Encoder of the ZO-AE variants: images ``(B, C, H, W)`` -> latent vectors ``(B, latent_dim)``.

    A 3x3 conv-BN-ReLU stem, ``num_down`` stride-2 conv-BN-ReLU layers (doubling the width), then a
    linear map to the latent. Zeroth-order estimation runs on this latent, so CGE costs 2 x latent_dim
    queries per sample (thesis eq. 6.19).

    Args:
        channels: image channels.
        latent_dim: size of the latent vector.
        size: ``(H, W)`` (or one int for square images) of the inputs.
        width: stem width.
        num_down: number of stride-2 layers.
    """

    def __init__(
        self, channels: int, latent_dim: int, size: int | tuple[int, int], width: int = 32, num_down: int = 2
    ) -> None:
        super().__init__()
        height, wide = _size_pair(size)
        # Zhang et al. 2022's autoencoders (the thesis is silent) have no normalisation, a ReLU latent and PyTorch's
        # default init; we keep their default init and sigmoid output but not the rest: measured on the demo's
        # digits (3 pre-training epochs), their form reconstructs to MSE 0.075 (pixel variance 0.141) against 0.033
        # with BN, and every AE defense fell to chance (noisy accuracy 0.09), so BN and a linear latent stay.
        layers: list[nn.Module] = [_conv_bn_relu(channels, width, stride=1)]
        for k in range(num_down):
            layers.append(_conv_bn_relu(width * 2**k, width * 2 ** (k + 1), stride=2))
            height, wide = (height + 1) // 2, (wide + 1) // 2  # 3x3, stride 2, padding 1 rounds up
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(width * 2**num_down * height * wide, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """Decoder of the ZO-AE variants: latent ``(B, latent_dim)`` -> images ``(B, C, H, W)`` in (0, 1).

    Mirrors ``ConvEncoder``: a linear map to a small feature map, ``num_down`` stride-2 transposed
    conv-BN-ReLU layers, a 3x3 conv and a sigmoid (the decoder feeds the classifier images in
    [0, 1], as in Zhang et al. 2022); the map is cropped to ``size``. In the AE variants it sits on the
    black-box side with the classifier.

    Args:
        latent_dim: size of the latent vector.
        channels: image channels.
        size: ``(H, W)`` (or one int) of the images to produce.
        width: width of the last layer before the output conv (matches the encoder's stem).
        num_down: number of upsampling layers.
    """

    def __init__(
        self, latent_dim: int, channels: int, size: int | tuple[int, int], width: int = 32, num_down: int = 2
    ) -> None:
        super().__init__()
        self.size = _size_pair(size)
        height, wide = self.size
        for _ in range(num_down):
            height, wide = (height + 1) // 2, (wide + 1) // 2
        self.start = (width * 2**num_down, height, wide)
        self.project = nn.Sequential(nn.Linear(latent_dim, width * 2**num_down * height * wide), nn.ReLU())
        layers: list[nn.Module] = []  # BN kept for the reason given in ConvEncoder
        for k in reversed(range(num_down)):
            layers += [
                nn.ConvTranspose2d(width * 2 ** (k + 1), width * 2**k, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width * 2**k),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], *self.start)
        out = self.body(h)[..., : self.size[0], : self.size[1]]
        return torch.sigmoid(out)


DENOISERS: dict[str, Callable[..., nn.Module]] = {
    "dncnn": DnCNN,
    "wide_dncnn": wide_dncnn,
    "rdunet": RDUNet,
}


def build_denoiser(name: str, channels: int, **kwargs: int) -> nn.Module:
    """Build a registered denoiser by name; ``kwargs`` go to its constructor (e.g. ``base_width=8``)."""
    if name not in DENOISERS:
        raise KeyError(f"unknown denoiser {name!r}; valid names: {sorted(DENOISERS)}")
    return DENOISERS[name](channels, **kwargs)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size}")
    return int(pair[0]), int(pair[1])


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the last two dims at the bottom/right up to a multiple (reflect if possible, else replicate)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
