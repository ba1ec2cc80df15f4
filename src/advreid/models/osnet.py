"""OSNet, the omni-scale network (Zhou et al. 2019, "Omni-Scale Feature Learning for Person Re-Identification").

Each residual block runs T = 4 streams of 1..4 stacked lite 3x3 convolutions (1x1 pointwise then 3x3 depthwise),
so the streams see receptive fields of growing scale; a unified aggregation gate (one channel-wise gate shared by
all streams, its weights computed from each stream's own input) mixes them. Module names follow torchreid's
``osnet.py`` so its ImageNet checkpoints load into :class:`OSNetBackbone` with ``strict=False``.
"""

from __future__ import annotations

from torch import Tensor, nn

_BASE_CHANNELS = (64, 256, 384, 512)
_BLOCKS_PER_STAGE = (2, 2, 2)


class ConvLayer(nn.Module):
    """Convolution + batch norm + ReLU (the 7x7 stem)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(nn.Module):
    """1x1 convolution + batch norm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    """1x1 convolution + batch norm, no activation (block output and shortcut projection)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Lite 3x3: pointwise 1x1 then depthwise 3x3 convolution, batch norm, ReLU (paper Fig. 3)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, groups=out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate: global pool -> MLP (reduction 16) -> sigmoid, rescaling the input's channels."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))  # (B, C, 1, 1)
        return x * gate


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: 1x1 reduce, four lite-3x3 streams (depth 1..4), shared gate, 1x1 expand."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_reduction: int = 4):
        super().__init__()
        mid = out_channels // bottleneck_reduction
        self.conv1 = Conv1x1(in_channels, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)  # one gate shared by the four streams: the "unified" aggregation
        self.conv3 = Conv1x1Linear(mid, out_channels)
        self.downsample = Conv1x1Linear(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        x1 = self.conv1(x)
        x2 = self.gate(self.conv2a(x1)) + self.gate(self.conv2b(x1)) + self.gate(self.conv2c(x1))
        x2 = x2 + self.gate(self.conv2d(x1))
        return nn.functional.relu(self.conv3(x2) + identity)


def _stage(in_channels: int, out_channels: int, blocks: int, reduce_spatial_size: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(in_channels, out_channels)]
    layers.extend(OSBlock(out_channels, out_channels) for _ in range(1, blocks))
    if reduce_spatial_size:  # transition: 1x1 conv then 2x2 average pooling
        layers.append(nn.Sequential(Conv1x1(out_channels, out_channels), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNetBackbone(nn.Module):
    """OSNet up to conv5: (B, 3, H, W) normalised images -> (B, C, H/16, W/16) feature map, C = 512 x width.

    Args:
        width: channel width multiplier (1.0 is osnet_x1_0, 0.25 is osnet_x0_25).
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"OSNet width multiplier must be > 0, got {width}")
        c = [max(int(ch * width), 4) for ch in _BASE_CHANNELS]
        self.out_channels = c[3]
        self.conv1 = ConvLayer(3, c[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c[0], c[1], _BLOCKS_PER_STAGE[0], reduce_spatial_size=True)
        self.conv3 = _stage(c[1], c[2], _BLOCKS_PER_STAGE[1], reduce_spatial_size=True)
        self.conv4 = _stage(c[2], c[3], _BLOCKS_PER_STAGE[2], reduce_spatial_size=False)
        self.conv5 = Conv1x1(c[3], c[3])
        self._init_params()

    def _init_params(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))  # (B, c0, H/4, W/4)
        x = self.conv3(self.conv2(x))  # (B, c2, H/16, W/16)
        return self.conv5(self.conv4(x))  # (B, c3, H/16, W/16)
