"""Image-quality metrics of thesis Table 3.6 from LOCAL pretrained weights only (never downloaded).

* LPIPS (Zhang et al. 2018, v0.1, AlexNet): the distance between two images is the sum over AlexNet's five ReLU
  layers of the spatial mean of ``w_l · (n_l(x) − n_l(y))²`` (n_l: unit-normalised channels, w_l: the learned 1×1
  "lin" weights). It needs torchvision's ImageNet AlexNet state dict (``alexnet-owt-7be5be79.pth``) and the lpips
  package's linear layers (``lpips/weights/v0.1/alex.pth``, keys ``lin<l>.model.1.weight``). Written here because the
  lpips package is not in the stack; the layer slices, input scaling and normalisation are lpips' own.
  IPES-GAN uses it as a *diversity* score (higher = more diverse): the mean LPIPS between two translations of the same
  source image under two different target environments (the MUNIT/DRIT protocol; spec section 3.6).
* FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to Inception-v3 pool features (2048-d) of
  real target images and generated S->T images, from torchvision's ImageNet Inception-v3 state dict
  (``inception_v3_google-0cc3c7bd.pth``). torchvision's weights differ from the TF graph of pytorch-fid, so the
  values are comparable between runs of this project, not with published FIDs; with few images FID is biased
  upwards (the demo translates ``gan.eval_images``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn
from torchvision.models import alexnet, inception_v3

# lpips.pretrained_networks.alexnet: relu1..relu5 as slices of torchvision's alexnet().features
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
# lpips.ScalingLayer, applied to inputs in [-1, 1]
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_SIZE = 299


class WeightsError(ValueError):
    """A local weights file is missing or is not the expected network's state dict."""


def _state_dict(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {what} weights not found (give a local file; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file; the message is what matters
        raise WeightsError(f"{path}: not a readable {what} state dict ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors for {what}")
    return state


def _load(module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise WeightsError(f"{path}: does not fit {what}: {first}") from None


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet) from local weights; ``forward(x, y)`` → (B,) distances for images in [0, 1]."""

    def __init__(self, alexnet_weights: str | os.PathLike, linear_weights: str | os.PathLike):
        super().__init__()
        net = alexnet(weights=None)
        _load(net, _state_dict(alexnet_weights, "torchvision AlexNet"), alexnet_weights, "torchvision AlexNet")
        self.slices = nn.ModuleList(nn.Sequential(*net.features[a:b]) for a, b in _ALEX_SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _ALEX_CHANNELS)
        lin_state = _state_dict(linear_weights, "LPIPS linear layers")
        expected = {f"lin{i}.model.1.weight" for i in range(len(_ALEX_CHANNELS))}
        if set(lin_state) != expected:
            raise WeightsError(
                f"{linear_weights}: LPIPS v0.1 alex.pth has keys {sorted(expected)}, got {sorted(lin_state)}"
            )
        _load(
            self.lins,
            {f"{i}.weight": lin_state[f"lin{i}.model.1.weight"] for i in range(len(_ALEX_CHANNELS))},
            linear_weights,
            "LPIPS linear layers",
        )
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def features(self, x: Tensor) -> list[Tensor]:
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for block in self.slices:
            h = block(h)
            out.append(h)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self.features(x), self.features(y), strict=True):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean((1, 2, 3))
        return total


class InceptionPool(nn.Module):
    """Inception-v3's 2048-d average-pool features (the FID features) from a local torchvision state dict."""

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        _load(net, _state_dict(weights, "torchvision Inception-v3"), weights, "torchvision Inception-v3")
        net.fc = nn.Identity()
        self.net = net.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖mu1 − mu2‖² + tr(S1 + S2 − 2 (S1 S2)^½), as pytorch-fid computes it (offset when S1 S2 is singular)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _gaussian(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.double().numpy()
    return x.mean(0), np.cov(x, rowvar=False)


@torch.no_grad()
def _batched(fn, *tensors: Tensor, batch_size: int, device: torch.device | str) -> Tensor:
    n = len(tensors[0])
    return torch.cat([fn(*(t[i : i + batch_size].to(device) for t in tensors)).cpu() for i in range(0, n, batch_size)])


def fid(real: Tensor, fake: Tensor, network: InceptionPool, batch_size: int = 16, device="cpu") -> float:
    """FID between image sets (N, 3, H, W) in [0, 1] on ``network``'s pool features."""
    network = network.to(device)
    mu1, s1 = _gaussian(_batched(network, real, batch_size=batch_size, device=device))
    mu2, s2 = _gaussian(_batched(network, fake, batch_size=batch_size, device=device))
    return frechet_distance(mu1, s1, mu2, s2)


def lpips_distance(x: Tensor, y: Tensor, network: LPIPS, batch_size: int = 32, device="cpu") -> Tensor:
    """(N,) LPIPS distances between paired images x[i], y[i] in [0, 1]."""
    return _batched(network.to(device), x, y, batch_size=batch_size, device=device)
