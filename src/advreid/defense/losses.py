"""MP-SNN's losses (thesis 5.2): L_V (5.1), the noise regulariser r(phi) of L_Iso (5.2), FCA (5.3), L_Mix (5.6),
the adversarial loss L_Adv and L_Tot (5.7); and the three task losses V, P, PA of the meta-learning (5.8-5.11)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advreid.reid.losses import batch_hard_indices, vanilla_reid_loss

TASKS = ("V", "P", "PA")


@dataclass(frozen=True)
class LossSettings:
    """Weights of L_Tot: lambda of r(phi) (thesis 1e-4), eta of L_Adv (0.5); ``fca`` False drops -L_FCA (Table 5.6);
    label smoothing and triplet margin of L_V (the project's vanilla loss)."""

    lambda_r: float = 1e-4
    eta: float = 0.5
    fca: bool = True
    label_smoothing: float = 0.1
    margin: float = 0.3

    def check(self, where: str = "loss") -> LossSettings:
        if self.lambda_r < 0:
            raise ValueError(f"{where}.lambda_r: must be >= 0, got {self.lambda_r}")
        if self.eta < 0:
            raise ValueError(f"{where}.eta: must be >= 0, got {self.eta}")
        return self


def harmonic_number(epoch: int) -> float:
    """tau_e = H_e = sum_{i=1}^{e} 1/i, e >= 1 the current epoch (Learn2Perturb's schedule of r)."""
    if epoch < 1:
        raise ValueError(f"epoch must be >= 1, got {epoch}")
    return sum(1.0 / i for i in range(1, epoch + 1))


def noise_regularizer(sigmas: list[Tensor], epoch: int) -> Tensor:
    """r(phi) = -(1 / tau_e) sum over every noise element of sqrt(phi) (eq. 5.2 read as Learn2Perturb's, spec B2)."""
    total = sum(sigma.sqrt().sum() for sigma in sigmas)
    return -torch.as_tensor(total) / harmonic_number(epoch)


def feature_covariance_alignment(features: Tensor, labels: Tensor, phi_a: Tensor) -> Tensor:
    """L_FCA = log((1/B) sum_i (f_p - f_n)^T Sigma (f_p - f_n)), Sigma = phi_a phi_a^T, on the batch-hard
    triplets (eq. 5.3); computed as log(mean_i |phi_a^T d_i|^2 + 1e-12), d_i = f_p - f_n."""
    positive, negative, valid = batch_hard_indices(features, labels)
    d = (features[positive] - features[negative])[valid]
    return torch.log((d @ phi_a).pow(2).sum(1).mean() + 1e-12)


def vanilla_loss(output, labels: Tensor, settings: LossSettings) -> Tensor:
    """L_V = L_CE + L_Tri (eq. 5.1) of a train-mode ReIDOutput."""
    loss, _, _ = vanilla_reid_loss(
        output.logits, output.feat_triplet, labels, epsilon=settings.label_smoothing, margin=settings.margin
    )
    return loss


def mix_loss(
    output,
    labels: Tensor,
    settings: LossSettings,
    sigmas: list[Tensor],
    epoch: int,
    clean_embedding: Tensor | None,
    phi_a: Tensor | None,
) -> Tensor:
    """L_Mix = L_Iso - L_FCA (eq. 5.6), L_Iso = L_CE + L_Tri + lambda r(phi) (eq. 5.2) on the noisy output;
    FCA on the embedding before the anisotropic noise (dropped without phi_a or with ``settings.fca`` False)."""
    loss = vanilla_loss(output, labels, settings)
    if sigmas:
        loss = loss + settings.lambda_r * noise_regularizer(sigmas, epoch)
    if settings.fca and phi_a is not None:
        loss = loss - feature_covariance_alignment(clean_embedding, labels, phi_a)
    return loss


def total_loss(mix: Tensor, adversarial_output, labels: Tensor, settings: LossSettings) -> Tensor:
    """L_Tot = L_Mix + eta L_Adv (eq. 5.7), L_Adv = L_CE + L_Tri on the PGD images."""
    return mix + settings.eta * vanilla_loss(adversarial_output, labels, settings)
