"""Image classifiers of thesis chapter 6: the black-box targets of the certified defense (Sec. 6.4).

ResNet-110 for CIFAR-10 (He et al. 2016's CIFAR variant: 3 stages of 18 basic blocks, widths 16-32-64),
ResNet-18 for STL-10 and ResNet-50 for CIFAR-100 (torchvision's, with a 3x3 stride-1 stem and no max-pool
for inputs of 64 pixels or less), VGG-16 with batch norm (Table 6.8) and a small CIFAR-style ResNet for the
8x8 digits of the CPU demo. Every classifier takes images in [0, 1] ``(B, C, H, W)`` and returns logits
``(B, num_classes)``; the dataset normalisation is its first layer, so noise and perturbations live in pixel
space (Cohen et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from advreid.io import load_torch

SMALL_INPUT = 64  # inputs up to this side get the CIFAR stem: an ImageNet stem would shrink 32x32 to 8x8 at once


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the first layer of every classifier, for [0, 1] images ``(B, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must be equal-length, non-empty, std > 0; got {mean}, {std}")
        # persistent: the statistics are part of the trained model and must travel with its checkpoint
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected {self.mean.shape[1]} channels, got input of shape {tuple(x.shape)}")
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``Normalize`` followed by a network body returning logits."""

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))


class BasicBlock(nn.Module):
    """He et al.'s CIFAR basic block: two 3x3 conv-BN layers and an identity or 1x1-projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth 6n + 2 for small images (He et al. 2016, Sec. 4.2): a 3x3 conv, 3 stages of n basic
    blocks with widths w, 2w, 4w (stride 2 at stages 2 and 3), global average pooling and a linear layer.

    Args:
        depth: 6n + 2 (110 gives ResNet-110 with n = 18).
        num_classes: output logits.
        in_channels: image channels.
        width: w, the first stage's width (16 in the paper).
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        channels = width
        for stage in range(3):
            out_channels = width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(self.stem(x))  # (B, 4w, H/4, W/4)
        return self.fc(self.pool(h).flatten(1))


class VGG16(nn.Module):
    """VGG-16 with batch norm for small images: torchvision's 13 conv layers (config "D"), global average
    pooling and one linear layer (the CIFAR variant; the 4096-wide ImageNet head would dwarf a 32x32 input).
    Five 2x2 max-pools need inputs of at least 32 pixels."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        from torchvision.models.vgg import cfgs, make_layers  # torchvision costs seconds to import: only when used

        super().__init__()
        config = list(cfgs["D"])
        self.features = make_layers(config, batch_norm=True)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, config[0], 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"VGG-16 needs inputs of at least 32x32 (five 2x2 max-pools), got {tuple(x.shape)}")
        return self.fc(self.pool(self.features(x)).flatten(1))


def _torchvision_resnet(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torchvision.models  # costs seconds to import: only when a torchvision network is built

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if image_size <= SMALL_INPUT:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def resnet_digits(num_classes: int, in_channels: int = 1, image_size: int = 8, width: int = 16, depth: int = 8):
    """The demo's small ResNet for 8x8 digits: a CIFAR ResNet of depth 8 (one block per stage)."""
    return CifarResNet(depth, num_classes, in_channels, width)


def resnet110(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-110 (CIFAR-10 in the thesis): 3 stages x 18 basic blocks."""
    return CifarResNet(110, num_classes, in_channels, 16)


def resnet18_classifier(num_classes: int, in_channels: int = 3, image_size: int = 96) -> nn.Module:
    """torchvision ResNet-18 (STL-10 in the thesis)."""
    return _torchvision_resnet("resnet18", num_classes, in_channels, image_size)


def resnet50_classifier(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision ResNet-50 (CIFAR-100 in the thesis)."""
    return _torchvision_resnet("resnet50", num_classes, in_channels, image_size)


def vgg16(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """VGG-16 with batch norm (Table 6.8)."""
    return VGG16(num_classes, in_channels)


CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "resnet_digits": resnet_digits,
    "resnet110": resnet110,
    "resnet18": resnet18_classifier,
    "resnet50": resnet50_classifier,
    "vgg16": vgg16,
}


def build_classifier(
    name: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    **kwargs: int,
) -> Classifier:
    """Build a registered classifier with its normalisation layer.

    Args:
        name: a key of ``CLASSIFIERS``.
        num_classes: number of output logits.
        mean, std: per-channel statistics of the training images in [0, 1]; their length sets the channels.
        image_size: the (smaller) side of the input images; selects the stem of the torchvision ResNets.
        kwargs: extra arguments of the builder (e.g. ``width=8`` for ``resnet_digits``).
    """
    if name not in CLASSIFIERS:
        raise KeyError(f"unknown classifier {name!r}; valid names: {sorted(CLASSIFIERS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    body = CLASSIFIERS[name](num_classes, in_channels=len(mean), image_size=image_size, **kwargs)
    return Classifier(body, mean, std)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """A classifier saved with its builder arguments in ``meta`` (the train_classifier stage), in eval mode."""
    from advreid.reid.engine import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_classifier stage first")
    meta = load_torch(path, "train_classifier checkpoint")["meta"]
    model = build_classifier(
        meta["arch"], meta["num_classes"], meta["mean"], meta["std"], min(meta["image_size"]), **meta["options"]
    )
    load_checkpoint(path, model)
    return model.to(device).eval()
