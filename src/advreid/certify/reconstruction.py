"""The image-reconstruction task of thesis Sec. 6.4.3 (Table 6.3), after Zhang et al. 2022 and Raj et al. 2020.

The target is a reconstruction network f that recovers an image x from its compressed-sensing
back-projection ``x~ = rescale(A^T A x)`` (A a fixed Gaussian m x d measurement matrix, m < d). An L2 PGD
attack (40 steps, ``||delta||_2`` in {0, 1, 2, 3, 4}) perturbs x~ to maximise f's reconstruction error;
adversarial inputs are crafted on the undefended f and then passed through each defense (as Zhang et al.'s
evaluation does), whose output is averaged over Gaussian noise draws. RMSE and SSIM compare the
reconstruction with the original image.

The defenses are trained as in classification (:mod:`advreid.certify.training`) with the target's own output
on the clean input as the target: the stability term is the squared error to it, and eq. 6.13 becomes
squared error + lambda_CS (1 - cos) + lambda_MMD MMD^2 on the flattened reconstructions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor, nn

from advreid.attacks.gradient import attack
from advreid.certify.objectives import cosine_dissimilarity, mmd_rbf, mmd_rbf_per_sample
from advreid.certify.training import Defense, Task

# Reconstructions are images, not probability vectors: distances between two 8x8 digits are a few units,
# so the kernel widths of the MMD term are wider than the classification defaults (0.5, 1, 2).
RECONSTRUCTION_BANDWIDTHS: tuple[float, ...] = (1.0, 2.0, 4.0)


class CompressedSensing(nn.Module):
    """The degradation ``x -> clamp((A^T A x - low) / (high - low), 0, 1)`` with a fixed measurement matrix.

    Args:
        shape: ``(C, H, W)`` of the images.
        measurements: m, the number of rows of A (m < C H W).
        seed: seed of A's Gaussian entries (scaled by 1 / sqrt(m) so that A^T A is near a projection).
        low, high: the rescaling range (from the training images' back-projections).
    """

    def __init__(self, shape: Sequence[int], measurements: int, seed: int = 0, low: float = 0.0, high: float = 1.0):
        super().__init__()
        dim = int(np.prod(shape))
        if not 0 < measurements < dim:
            raise ValueError(
                f"measurements must be in (0, {dim}) for images of shape {tuple(shape)}, got {measurements}"
            )
        if high <= low:
            raise ValueError(f"rescaling range must have high > low, got low={low}, high={high}")
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randn(measurements, dim, generator=generator) / measurements**0.5
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("gram", matrix.T @ matrix)  # (d, d) A^T A
        self.register_buffer("bounds", torch.tensor([low, high]))

    def back_projection(self, x: Tensor) -> Tensor:
        """``A^T A x`` per image, unscaled: ``(B, C, H, W) -> (B, C, H, W)``."""
        return (x.flatten(1) @ self.gram).view(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.bounds[0], self.bounds[1]
        return ((self.back_projection(x) - low) / (high - low)).clamp(0.0, 1.0)


class ReconstructionNet(nn.Module):
    """A multilayer perceptron from a degraded image to its reconstruction in (0, 1) (the task's target f).

    Compressed sensing mixes every pixel into every measurement, so a fully connected network fits the
    inverse better than a local convolution at this size.
    """

    def __init__(self, shape: Sequence[int], hidden: int = 256) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        dim = int(np.prod(self.shape))
        self.body = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.body(x.flatten(1))).view(x.shape[0], *self.shape)


class ReconstructionBlackBox:
    """Query-only view of a reconstruction network: flattened outputs ``(N, C H W)``, never gradients.

    Args:
        model: the target network (switched to eval mode).
        max_batch: larger inputs are sent in chunks.
    """

    def __init__(self, model: nn.Module, max_batch: int = 4096) -> None:
        self._model = model.eval()
        self.max_batch = max_batch
        self.query_count = 0
        self.batch_count = 0

    def reset_counts(self) -> None:
        self.query_count = 0
        self.batch_count = 0

    def __call__(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            raise RuntimeError("black box refuses gradient flow: the input requires grad; use a zeroth-order estimate")
        chunks = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.max_batch):
                batch = x[start : start + self.max_batch]
                chunks.append(self._model(batch).flatten(1))
                self.query_count += batch.shape[0]
                self.batch_count += 1
        return torch.cat(chunks)


class ReconstructionStability:
    """Stability for reconstruction: mean squared error between f on the denoised input and f on the clean input."""

    def batch(self, scores: Tensor, clean_scores: Tensor) -> Tensor:
        return (scores - clean_scores.detach()).pow(2).mean(dim=1).mean()

    def per_sample(self, query_scores: Tensor, clean_scores: Tensor, reference_scores: Tensor) -> Tensor:
        clean = clean_scores.detach().repeat(query_scores.shape[0] // clean_scores.shape[0], 1)  # block-major
        return (query_scores - clean).pow(2).mean(dim=1)


@dataclass(frozen=True)
class ReconstructionTotal:
    """Eq. 6.13 for reconstruction: squared error (for CE) + lambda_CS (1 - cos) + lambda_MMD MMD^2."""

    lambda_cs: float = 1.0
    lambda_mmd: float = 4.0
    bandwidths: tuple[float, ...] = RECONSTRUCTION_BANDWIDTHS

    def batch(self, scores: Tensor, clean_scores: Tensor) -> Tensor:
        clean = clean_scores.detach()
        return (
            (scores - clean).pow(2).mean(dim=1).mean()
            + self.lambda_cs * cosine_dissimilarity(clean, scores).mean()
            + self.lambda_mmd * mmd_rbf(clean, scores, self.bandwidths)
        )

    def per_sample(self, query_scores: Tensor, clean_scores: Tensor, reference_scores: Tensor) -> Tensor:
        clean = clean_scores.detach()
        rows = clean.repeat(query_scores.shape[0] // clean.shape[0], 1)
        return (
            (query_scores - rows).pow(2).mean(dim=1)
            + self.lambda_cs * cosine_dissimilarity(rows, query_scores)
            + self.lambda_mmd * mmd_rbf_per_sample(clean, query_scores, reference_scores, self.bandwidths)
        )


RECONSTRUCTION = Task(
    "reconstruction",
    scores=lambda output: output.flatten(1),
    black_box=ReconstructionBlackBox,
    stability=ReconstructionStability,
    total=ReconstructionTotal,
)


def l2_pgd(
    model: nn.Module,
    inputs: Tensor,
    originals: Tensor,
    eps: float,
    steps: int = 40,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L2 PGD on the target's input maximising its squared reconstruction error (Table 6.3's attack).

    Step size 2 eps / steps and a random start in the ball, as Zhang et al.'s ``recon_PGD_L2``.

    Args:
        model: the reconstruction network (white box for the attacker).
        inputs: ``(B, C, H, W)`` degraded inputs in [0, 1].
        originals: ``(B, C, H, W)`` the images to reconstruct.
        eps: L2 radius (0 returns the inputs).
    """
    if eps == 0:
        return inputs.clone()
    target = originals.detach()

    def objective(output: Tensor) -> Tensor:
        return (output - target).pow(2).flatten(1).sum(dim=1)

    return attack(
        model,
        inputs,
        objective,
        method="pgd",
        norm="l2",
        eps=eps,
        step=2 * eps / steps,
        steps=steps,
        random_start=True,
        generator=generator,
    )


def reconstruction_errors(reconstructions: Tensor, originals: Tensor) -> tuple[float, float]:
    """Mean per-image RMSE and SSIM (Wang et al. 2004, data range 1) of ``reconstructions`` vs ``originals``."""
    if reconstructions.shape != originals.shape or reconstructions.dim() != 4:
        raise ValueError(
            f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)} "
            "must be equal (B, C, H, W)"
        )
    rmse = (reconstructions - originals).pow(2).flatten(1).mean(dim=1).sqrt().mean().item()
    window = min(7, *originals.shape[-2:])
    window -= 1 - window % 2  # skimage needs an odd window no larger than the image
    ours = reconstructions.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
    theirs = originals.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
    ssim = np.mean(
        [
            structural_similarity(a, b, data_range=1.0, win_size=window, channel_axis=2)
            for a, b in zip(ours, theirs, strict=True)
        ]
    )
    return float(rmse), float(ssim)


@torch.no_grad()
def defended_reconstruction(
    target: nn.Module,
    defense: Defense | None,
    inputs: Tensor,
    sigma: float,
    noise_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``mean_k f(D(x~ + eta_k))`` over ``noise_samples`` Gaussian draws, or ``f(x~)`` when ``defense`` is None."""
    if defense is None:
        return target(inputs)
    if noise_samples < 1:
        raise ValueError(f"noise_samples must be >= 1, got {noise_samples}")
    copies = inputs.repeat(noise_samples, 1, 1, 1)  # block-major: row k B + b is draw k of input b
    noise = torch.randn(copies.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
    outputs = target(defense(copies + sigma * noise))
    return outputs.view(noise_samples, *inputs.shape).mean(dim=0)


def evaluate_reconstruction(
    target: nn.Module,
    defense: Defense | None,
    inputs: Tensor,
    originals: Tensor,
    epsilons: Sequence[float],
    *,
    steps: int = 40,
    sigma: float = 0.25,
    noise_samples: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Table 6.3 for one defense (or the vanilla target when ``defense`` is None).

    For each ``eps``, adversarial inputs are crafted on the undefended ``target`` with :func:`l2_pgd` from a
    generator seeded by ``seed`` (so every defense faces the same perturbations), then reconstructed.

    Returns:
        ``{str(eps): {"rmse": ..., "ssim": ...}}``.
    """
    target.eval()
    if defense is not None:
        defense.eval()
    results = {}
    for eps in epsilons:
        adversarial = l2_pgd(
            target, inputs, originals, float(eps), steps, torch.Generator(inputs.device).manual_seed(seed)
        )
        noise = torch.Generator(inputs.device).manual_seed(seed + 1)
        output = defended_reconstruction(target, defense, adversarial, sigma, noise_samples, noise)
        rmse, ssim = reconstruction_errors(output, originals)
        results[f"{float(eps):g}"] = {"rmse": rmse, "ssim": ssim}
    return results
