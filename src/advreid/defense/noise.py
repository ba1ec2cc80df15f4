"""The learnable noise of MP-SNN (thesis 5.2.1-5.2.2): isotropic sigma-maps in the inner layers (phi) and
anisotropic Gaussian noise phi_a eps on the pooled embedding (the "penultimate layer", Sigma = phi_a phi_a^T).

Each noise is a pure function plus a thin module; the modules are attached to an existing
:class:`advreid.models.reid.ReIDModel` by forward hooks (:func:`build_stochastic_model`), never by copying a
backbone. Noise stays on in eval mode (the defense is stochastic at test time) and is switched off with
:func:`noise_enabled`. Every draw takes its device and dtype from its input and its generator from the module's
``generator`` attribute (None: torch's global generator, which training checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advreid.models.osnet import ConvLayer, OSBlock
from advreid.models.reid import ReIDModel, SmallCNN, is_resnet_backbone

NOISE_DRAWS = ("per_sample", "per_batch")
ISO_SHAPES = ("chw", "channel")


def isotropic_noise(
    h: Tensor, sigma: Tensor, generator: torch.Generator | None = None, per_sample: bool = True
) -> Tensor:
    """h + sigma * eps, eps ~ N(0, I) (Learn2Perturb); sigma broadcasts over h's (C, H, W); one eps per sample
    or, with ``per_sample=False``, one for the whole batch."""
    shape = h.shape if per_sample else (1, *h.shape[1:])
    eps = torch.randn(shape, generator=generator, device=h.device, dtype=h.dtype)
    return torch.addcmul(h, sigma, eps)  # h + sigma * eps in one pass over the activations


def anisotropic_noise(f: Tensor, phi_a: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """f + eps phi_a^T for embeddings f (B, D), eps ~ N(0, I_D) per sample: noise of covariance phi_a phi_a^T."""
    eps = torch.randn(f.shape, generator=generator, device=f.device, dtype=f.dtype)
    return f + eps @ phi_a.T


class IsotropicNoise(nn.Module):
    """A learnable sigma-map phi_l (C, H, W) or (C, 1, 1), initialised to ``init``; adds sigma * eps when enabled."""

    def __init__(self, shape: tuple[int, ...], init: float = 0.25, per_sample: bool = True):
        super().__init__()
        if init <= 0:
            raise ValueError(f"isotropic noise init must be > 0, got {init}")
        self.sigma = nn.Parameter(torch.full(shape, float(init)))
        self.per_sample = per_sample
        self.enabled = True
        self.generator: torch.Generator | None = None

    def forward(self, h: Tensor) -> Tensor:
        if not self.enabled:
            return h
        return isotropic_noise(h, self.sigma.to(h.dtype), self.generator, self.per_sample)

    def hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """Forward hook adding the noise to ``module``'s output (a bound method, so deepcopy re-binds it)."""
        return self(output)


class AnisotropicNoise(nn.Module):
    """phi_a (D, D) lower-triangular, initialised tril(U[0, 1)) / sqrt(D) (WCA-Net's init, scaled; spec B1).

    ``clean_embedding`` keeps the last train-mode input (before the noise), for FCA (eq. 5.3)."""

    def __init__(self, dim: int):
        super().__init__()
        init = torch.rand(dim, dim).tril() / math.sqrt(dim)
        self.phi_a = nn.Parameter(init)
        self.enabled = True
        self.generator: torch.Generator | None = None
        self.clean_embedding: Tensor | None = None

    def forward(self, f: Tensor) -> Tensor:
        if self.training:  # read (and cleared) by the task losses
            self.clean_embedding = f
        if not self.enabled:
            return f
        return anisotropic_noise(f, self.phi_a.to(f.dtype), self.generator)

    def hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """Forward hook on the head's pool: (B, D, 1, 1) -> noise on the pooled embedding f (B, D)."""
        return self(output.flatten(1)).view_as(output)


@dataclass(frozen=True)
class NoiseConfig:
    """Which noises MP-SNN inserts and how (spec section 1.1; every default is a named option)."""

    isotropic: bool = True
    anisotropic: bool = True
    iso_init: float = 0.25
    iso_min: float = 0.01  # clamp of phi after every update
    iso_shape: str = "chw"
    noise_draw: str = "per_sample"

    def check(self, where: str = "noise") -> NoiseConfig:
        if self.iso_shape not in ISO_SHAPES:
            raise ValueError(f"{where}.iso_shape: must be one of {list(ISO_SHAPES)}, got {self.iso_shape!r}")
        if self.noise_draw not in NOISE_DRAWS:
            raise ValueError(f"{where}.noise_draw: must be one of {list(NOISE_DRAWS)}, got {self.noise_draw!r}")
        if self.iso_init <= 0 or self.iso_min <= 0:
            raise ValueError(f"{where}: iso_init and iso_min must be > 0, got {self.iso_init}, {self.iso_min}")
        return self


def noise_sites(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose outputs get isotropic noise: after the stem (its BN, before ReLU where the backbone has
    that module boundary) and after every residual block / conv stage.

    small_cnn: every conv stage's BatchNorm (before its ReLU). ResNet-50 / IBN-ResNet-50: the stem's ``bn1`` and
    every Bottleneck's output (torchvision applies the block's last ReLU inside ``forward``, so "before the final
    ReLU" has no module boundary; after it is the nearest point). OSNet: the stem conv and every OSBlock."""
    if isinstance(backbone, SmallCNN):
        return [m for m in backbone.features if isinstance(m, nn.BatchNorm2d)]
    if is_resnet_backbone(backbone):
        from torchvision.models.resnet import Bottleneck

        return [backbone.bn1, *(m for m in backbone.modules() if isinstance(m, Bottleneck))]
    stem = [m for m in backbone.modules() if isinstance(m, ConvLayer)][:1]
    blocks = [m for m in backbone.modules() if isinstance(m, OSBlock)]
    if not stem or not blocks:
        raise ValueError(f"no isotropic-noise placement rule for backbone {type(backbone).__name__}")
    return [*stem, *blocks]


class StochasticReIDModel(nn.Module):
    """MP-SNN's F~(x; theta, phi, phi_a): a vanilla :class:`ReIDModel` (``vanilla``, theta) with noise modules
    attached by forward hooks; returns what the vanilla model returns (train: ReIDOutput, eval: BNNeck feature)."""

    def __init__(self, vanilla: ReIDModel, config: NoiseConfig, image_size: tuple[int, int]):
        super().__init__()
        self.vanilla = vanilla
        self.config = config.check()
        self.isotropic = nn.ModuleList()
        self.anisotropic = AnisotropicNoise(vanilla.feature_dim) if config.anisotropic else None
        if config.isotropic:
            sites = noise_sites(vanilla.backbone)
            for shape in _output_shapes(vanilla, sites, image_size):
                size = shape if config.iso_shape == "chw" else (shape[0], 1, 1)
                self.isotropic.append(IsotropicNoise(size, config.iso_init, config.noise_draw == "per_sample"))
            for site, noise in zip(sites, self.isotropic, strict=True):
                site.register_forward_hook(noise.hook)
        if self.anisotropic is not None:
            vanilla.head.pool.register_forward_hook(self.anisotropic.hook)

    @property
    def feature_dim(self) -> int:
        return self.vanilla.feature_dim

    def forward(self, x: Tensor):
        return self.vanilla(x)

    def noise_modules(self) -> list[nn.Module]:
        return [*self.isotropic, *([self.anisotropic] if self.anisotropic is not None else [])]

    def sigmas(self) -> list[Tensor]:
        """phi: the isotropic sigma-maps."""
        return [noise.sigma for noise in self.isotropic]

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Draw every noise from ``generator`` (None: torch's global generator)."""
        for module in self.noise_modules():
            module.generator = generator

    @torch.no_grad()
    def project(self) -> None:
        """phi <- max(phi, iso_min); phi_a <- tril(phi_a) (after every update, Algorithm 2)."""
        for sigma in self.sigmas():
            sigma.clamp_(min=self.config.iso_min)
        if self.anisotropic is not None:
            self.anisotropic.phi_a.copy_(self.anisotropic.phi_a.tril())


def _output_shapes(model: ReIDModel, sites: list[nn.Module], image_size: tuple[int, int]) -> list[tuple[int, ...]]:
    shapes: dict[int, tuple[int, ...]] = {}
    handles = [
        site.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[1:])))
        for k, site in enumerate(sites)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters())
            model(torch.zeros(1, 3, *image_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [shapes[k] for k in range(len(sites))]


@contextmanager
def noise_enabled(model: nn.Module, enabled: bool) -> Iterator[nn.Module]:
    """Switch every noise module of ``model`` on or off inside the block (restored after)."""
    modules = [m for m in model.modules() if isinstance(m, IsotropicNoise | AnisotropicNoise)]
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = enabled
    try:
        yield model
    finally:
        for m, state in zip(modules, before, strict=True):
            m.enabled = state


def build_stochastic_model(
    vanilla: ReIDModel, config: NoiseConfig, image_size: tuple[int, int], seed: int = 0
) -> StochasticReIDModel:
    """Attach ``config``'s noise to ``vanilla`` (modified in place: hooks on its modules); phi_a's random init is
    drawn from a generator seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StochasticReIDModel(vanilla, config, image_size)
    device = next(vanilla.parameters()).device
    return model.to(device)
