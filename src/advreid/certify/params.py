"""The params of chapter 6's stages: ``train_classifier`` (the black-box targets), ``train_denoiser.settings`` (the
defenses) and ``certify.settings`` (certification and Table 6.3's reconstruction attack), checked before anything
runs; torch-free so ``advreid check`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from advreid.params import ParamsError, require, require_counts

THESIS_N = 10_000


@dataclass(frozen=True)
class ReconstructionEvalParams:
    epsilons: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    steps: int = 40
    noise_samples: int = 10
    num_points: int = 100

    def check(self, where: str) -> ReconstructionEvalParams:
        for index, eps in enumerate(self.epsilons):
            require(eps >= 0, f"{where}.epsilons[{index}]", ">= 0", eps)
        require_counts(self, where, ("steps", "noise_samples", "num_points"))
        return self


@dataclass(frozen=True)
class CertifyParams:
    sigmas: tuple[float, ...]
    n0: int = 100
    n: int = THESIS_N
    alpha: float = 0.001
    batch_size: int = 1000
    num_points: int = 500
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    curve_step: float = 0.01
    reconstruction: dict = field(default_factory=dict)
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def check(self, where: str) -> CertifyParams:
        if not self.sigmas or not self.radii:
            raise ParamsError(f"{where}: sigmas and radii need at least one value each")
        for index, sigma in enumerate(self.sigmas):
            require(sigma > 0, f"{where}.sigmas[{index}]", "> 0 (the smoothing noise level)", sigma)
        for index, radius in enumerate(self.radii):
            require(radius >= 0, f"{where}.radii[{index}]", ">= 0", radius)
        require_counts(self, where, ("n0", "n", "batch_size", "num_points"))
        require(
            self.n0 <= self.n, f"{where}.n0", f"<= n = {self.n} (selection draws may not outnumber estimation)", self.n0
        )
        require(0 < self.alpha < 1, f"{where}.alpha", "in (0, 1)", self.alpha)
        require(self.curve_step > 0, f"{where}.curve_step", "> 0", self.curve_step)
        require(self.threads >= 0, f"{where}.threads", ">= 0 (0 = torch's default)", self.threads)
        return self


@dataclass(frozen=True)
class ReconstructorParams:
    dataset: str  # the thesis uses MNIST (Table 6.3) while the classifiers use CIFAR / STL-10
    measurements: int  # rows of the measurement matrix (Zhang et al.: 576 of MNIST's 784 pixels)
    hidden: int = 256
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3

    def check(self, where: str) -> ReconstructorParams:
        require_counts(self, where, ("measurements", "hidden", "epochs", "batch_size"))
        require(self.lr > 0, f"{where}.lr", "> 0", self.lr)
        return self


@dataclass(frozen=True)
class ClassifierParams:
    dataset: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    reconstruction: dict
    arch_options: dict = field(default_factory=dict)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def check(self, where: str) -> ClassifierParams:
        require_counts(self, where, ("epochs", "batch_size"))
        require(self.lr > 0, f"{where}.lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, f"{where}.momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, f"{where}.weight_decay", ">= 0", self.weight_decay)
        require(self.threads >= 0, f"{where}.threads", ">= 0 (0 = torch's default)", self.threads)
        return self


@dataclass(frozen=True)
class DenoiserParams:
    sigmas: tuple[float, ...]  # thesis: 0.25 (Tables 6.1-6.5), 0.5 and 1.0 (Tables 6.6-6.7)
    epochs: int  # thesis: 600
    batch_size: int  # thesis: 256
    q: int = 192  # RGE directions per sample; also the AE latent size (CGE: 2 q queries per sample)
    mu: float = 0.005
    lambda_cs: float = 1.0
    lambda_mmd: float = 4.0
    lr: float = 1e-4
    lr_step: int = 100  # thesis: lr / 10 every 100 epochs
    weight_decay: float = 0.0
    pretrain_epochs: int = 10  # autoencoder (AE variants) and denoiser (finetune strategy)
    pretrain_lr: float = 1e-3
    dncnn: dict = field(default_factory=dict)  # DnCNN kwargs (thesis: depth 17, width 64)
    rdunet: dict = field(default_factory=dict)  # RDUNet kwargs (thesis: base_width 64)
    ae_width: int = 32
    validation_points: int = 200  # test images for the noisy accuracy of the training curves
    reconstruction_sigma: float = 0.25
    reconstruction_epochs: int = 10
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def check(self, where: str) -> DenoiserParams:
        if not self.sigmas:
            raise ParamsError(f"{where}.sigmas: needs at least one noise level")
        for index, sigma in enumerate(self.sigmas):
            require(sigma > 0, f"{where}.sigmas[{index}]", "> 0 (the Gaussian noise level)", sigma)
        require_counts(self, where, ("epochs", "batch_size", "q", "lr_step", "ae_width", "validation_points"))
        require_counts(self, where, ("pretrain_epochs", "reconstruction_epochs", "threads"), minimum=0)
        for name in ("mu", "lr", "pretrain_lr", "reconstruction_sigma"):
            require(getattr(self, name) > 0, f"{where}.{name}", "> 0", getattr(self, name))
        for name in ("lambda_cs", "lambda_mmd", "weight_decay"):
            require(getattr(self, name) >= 0, f"{where}.{name}", ">= 0", getattr(self, name))
        return self
