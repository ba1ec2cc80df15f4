"""Re-ID networks: a backbone, ImageNet normalisation as the first layer, and the BNNeck head; plus the registry.

Inputs are images in [0, 1] (B, 3, H, W); normalisation belongs to the model so attacks and noise live in pixel
space. The BNNeck head (Luo et al. 2019, "Bag of Tricks and a Strong Baseline for Deep Person Re-ID") pools the
backbone's map into f_t (for the triplet loss), batch-normalises it without a bias into f_i (for the classifier
and for retrieval at test time) and classifies f_i with a bias-free linear layer. In train mode a model returns
:class:`ReIDOutput`; in eval mode it returns f_i alone.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from advreid.io import load_torch
from advreid.models.osnet import OSNetBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ReIDOutput(NamedTuple):
    """What a Re-ID model returns in train mode."""

    logits: Tensor  # (B, num_classes), from f_i
    feat_triplet: Tensor  # (B, D) f_t, pooled features before the BNNeck
    feat: Tensor  # (B, D) f_i, after the BNNeck


class ImageNetNormalize(nn.Module):
    """(x - mean) / std per channel, for [0, 1] images (B, 3, H, W)."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        # not persistent: constants, so state dicts hold only learnt weights and statistics
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class BNNeckHead(nn.Module):
    """Global average pooling -> f_t -> BatchNorm1d (bias frozen at 0) -> f_i -> bias-free Linear -> logits."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.BatchNorm1d(in_features)
        # Luo et al.: no shift, so f_i stays centred where the classifier's hyperplanes pass through the origin
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature_map: Tensor) -> ReIDOutput | Tensor:
        feat_triplet = self.pool(feature_map).flatten(1)  # (B, D)
        feat = self.bottleneck(feat_triplet)  # (B, D)
        if not self.training:
            return feat
        return ReIDOutput(self.classifier(feat), feat_triplet, feat)


@dataclass(frozen=True)
class PretrainedReport:
    """Outcome of loading a state dict into a backbone with ``strict=False``."""

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # backbone keys the file did not provide (left at their initialisation)
    unexpected: tuple[str, ...]  # file keys the backbone has no place for (e.g. the ImageNet ``fc``)
    mismatched: tuple[str, ...]  # keys present in both with different shapes (skipped)


class ReIDModel(nn.Module):
    """ImageNet normalisation -> backbone (feature map) -> BNNeck head.

    Attributes:
        feature_dim: D, the length of f_t and f_i.
        pretrained: the :class:`PretrainedReport` of the weights loaded at build time, or None (from scratch).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.normalize = ImageNetNormalize()
        self.backbone = backbone
        self.head = BNNeckHead(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.pretrained: PretrainedReport | None = None

    def forward(self, x: Tensor) -> ReIDOutput | Tensor:
        return self.head(self.backbone(self.normalize(x)))


class IBN(nn.Module):
    """Instance-batch normalisation (IBN-a, Pan et al. 2018): InstanceNorm on the first half of the channels,
    BatchNorm on the rest. Attribute names ``IN`` / ``BN`` follow the authors' code so their weights load."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: Tensor) -> Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


@functools.cache
def resnet_backbone_class() -> type[nn.Module]:
    """:class:`ResNetBackbone`, defined on first use: importing torchvision (and the ``torch._dynamo`` it pulls in)
    costs ~1.2 s per process, which every stage that only builds a small_cnn or an OSNet would pay (measured: 27
    demo stages). ``advreid.models.reid.ResNetBackbone`` resolves to it (module ``__getattr__``)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    class ResNetBackbone(ResNet):
        """torchvision's ResNet-50 without pooling and ``fc``: (B, 3, H, W) -> (B, 2048, H/s, W/s), s = 16 or 32.

        Args:
            last_stride: stride of layer4 (1 doubles the final map's resolution, the usual Re-ID choice).
            ibn: replace ``bn1`` of every Bottleneck in layer1-3 by :class:`IBN` (IBN-ResNet-50-a).
        """

        out_channels = 2048

        def __init__(self, last_stride: int = 1, ibn: bool = False):
            super().__init__(Bottleneck, [3, 4, 6, 3])
            if last_stride not in (1, 2):
                raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
            del self.fc, self.avgpool
            first = self.layer4[0]
            # torchvision puts the stride on conv2 and on the shortcut (ResNet v1.5)
            first.conv2.stride = (last_stride, last_stride)
            first.downsample[0].stride = (last_stride, last_stride)
            if ibn:
                for layer in (self.layer1, self.layer2, self.layer3):
                    for block in layer:
                        block.bn1 = IBN(block.bn1.num_features)

        def forward(self, x: Tensor) -> Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
            x = self.layer2(self.layer1(x))  # (B, 512, H/8, W/8)
            return self.layer4(self.layer3(x))  # (B, 2048, H/16, W/16) with last_stride 1

    ResNetBackbone.__module__, ResNetBackbone.__qualname__ = __name__, "ResNetBackbone"  # picklable by name
    return ResNetBackbone


def is_resnet_backbone(module: nn.Module) -> bool:
    """Whether ``module`` is a :class:`ResNetBackbone` (without importing torchvision when none was ever built)."""
    return resnet_backbone_class.cache_info().currsize > 0 and isinstance(module, resnet_backbone_class())


def __getattr__(name: str) -> object:  # PEP 562: ResNetBackbone without importing torchvision up front
    if name == "ResNetBackbone":
        return resnet_backbone_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SmallCNN(nn.Module):
    """A few conv3x3-BN-ReLU blocks (max-pooled 2x after all but the last) for the CPU demo; ~240k parameters."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"SmallCNN channels must be a non-empty tuple of positive ints, got {channels}")
        layers: list[nn.Module] = []
        previous = 3
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.out_channels = previous
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)  # (B, C, H / 2^(n-1), W / 2^(n-1))


def _resnet50(**kw: object) -> nn.Module:
    return resnet_backbone_class()(ibn=False, **kw)


def _ibn_resnet50(**kw: object) -> nn.Module:
    return resnet_backbone_class()(ibn=True, **kw)


def _osnet_x1_0() -> nn.Module:
    return OSNetBackbone(width=1.0)


def _osnet_x0_25() -> nn.Module:
    return OSNetBackbone(width=0.25)


def _small_cnn(**kw: object) -> nn.Module:
    return SmallCNN(**kw)


REID_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": _resnet50,
    "ibn_resnet50": _ibn_resnet50,
    "osnet_x1_0": _osnet_x1_0,
    "osnet_x0_25": _osnet_x0_25,
    "small_cnn": _small_cnn,
}
# the demo network has no ImageNet weights: training it from scratch is the plan, not a fallback
_SCRATCH_BY_DESIGN = {"small_cnn"}


def build_reid_model(name: str, num_classes: int, pretrained_path: str | Path | None = None, **kw: object) -> ReIDModel:
    """Build a registered backbone with the BNNeck head for ``num_classes`` training identities.

    Args:
        name: a key of :data:`REID_MODELS`.
        num_classes: training identities (classifier outputs).
        pretrained_path: a local torchvision-format state dict (e.g. ImageNet weights) loaded into the backbone
            with ``strict=False``; the outcome is ``model.pretrained``. None: from scratch, with a warning
            (except for ``small_cnn``, meant to be trained from scratch).
        **kw: backbone options (``last_stride`` for the ResNets, ``channels`` for ``small_cnn``).
    """
    if name not in REID_MODELS:
        raise KeyError(f"unknown Re-ID model '{name}'; valid: {sorted(REID_MODELS)}")
    backbone = REID_MODELS[name](**kw)
    model = ReIDModel(backbone, backbone.out_channels, num_classes)
    if pretrained_path is not None:
        model.pretrained = load_pretrained(backbone, pretrained_path)
        report = model.pretrained
        if report.missing or report.mismatched:
            warnings.warn(
                f"{name}: {report.path} left {len(report.missing)} backbone tensors at initialisation "
                f"(missing {_abbreviate(report.missing)}, shape mismatch {_abbreviate(report.mismatched)})",
                stacklevel=2,
            )
    elif name not in _SCRATCH_BY_DESIGN:
        warnings.warn(f"{name}: no pretrained_path given, the backbone starts from scratch", stacklevel=2)
    return model


def load_pretrained(module: nn.Module, path: str | Path) -> PretrainedReport:
    """Load a local state dict into ``module`` with ``strict=False``; report what matched and what did not.

    Accepts a plain state dict or one under a ``state_dict`` key, with or without DDP's ``module.`` prefix.
    Raises FileNotFoundError for a missing file and ValueError when not one tensor matches.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found")
    state = load_torch(path, "pretrained weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    mismatched = tuple(sorted(k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)))
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise ValueError(
            f"{path}: no tensor matches {type(module).__name__} (file keys start {_abbreviate(tuple(state))})"
        )
    result = module.load_state_dict(usable, strict=False)
    return PretrainedReport(
        path=str(path),
        loaded=tuple(sorted(usable)),
        missing=tuple(sorted(result.missing_keys)),
        unexpected=tuple(sorted(k for k in state if k not in own)),
        mismatched=mismatched,
    )


def _abbreviate(keys: tuple[str, ...], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
