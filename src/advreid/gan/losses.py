"""IPES-GAN's losses, thesis eqs. 3.1-3.19, one function each (tensors in, scalar tensors out).

L1 terms are element means of absolute differences (DG-Net's ``recon_criterion``), images in [0, 1]. The
adversarial loss is LSGAN (thesis sec. 3.3.2) in place of eq. 3.12's log form.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.nn import functional as F

from advreid.reid.losses import cross_entropy_label_smoothing


def feature_consistency_environment(pose: Tensor, style: Tensor, pose_hat: Tensor, style_hat: Tensor) -> Tensor:
    """Eqs. 3.1 / 3.2, L^X_Con_Env = E||f^X_env - E^X_env(I^{.->G})||_1 with f_env = (f_pose, f_style): the
    mean |difference| of each part, summed (so the large pose map does not drown the style code)."""
    return (pose - pose_hat).abs().mean() + (style - style_hat).abs().mean()


def feature_consistency_identity(identity: Tensor, identity_hat: Tensor) -> Tensor:
    """Eqs. 3.3 / 3.4, L^X_Con_Ind = E||f_ind - E_id(I^{X->G})||_1."""
    return (identity - identity_hat).abs().mean()


def feature_consistency(
    identity_source: Tensor, identity_target: Tensor, environment_source: Tensor, environment_target: Tensor
) -> Tensor:
    """Eq. 3.5, L_Con = L^S_Con_Ind + L^T_Con_Ind + L^S_Con_Env + L^T_Con_Env."""
    return identity_source + identity_target + environment_source + environment_target


def cyclic_reconstruction(image: Tensor, reconstruction: Tensor) -> Tensor:
    """Eq. 3.6 (one domain's term), L^X_Cyc = E||I^X - I~^X||_1, pixel-wise."""
    return (image - reconstruction).abs().mean()


def camera_style(camera_logits: Tensor, cameras: Tensor) -> Tensor:
    """Eqs. 3.7-3.10 (one term), E[-log p(y_cam | I)] from a style encoder's camera classifier."""
    return F.cross_entropy(camera_logits, cameras)


def camera_style_total(source: Tensor, target: Tensor, source_to_target: Tensor, target_to_source: Tensor) -> Tensor:
    """Eq. 3.11, L_Cam = L^S_Cam + L^T_Cam + L^{S->G}_Cam + L^{T->G}_Cam."""
    return source + target + source_to_target + target_to_source


def adversarial_discriminator(real_scores: Sequence[Tensor], fake_scores: Sequence[Tensor]) -> Tensor:
    """Eq. 3.12 as LSGAN, discriminator side: sum over scales of 1/2 E[(D(real) - 1)^2] + 1/2 E[D(fake)^2]."""
    total = real_scores[0].new_zeros(())
    for real, fake in zip(real_scores, fake_scores, strict=True):
        total = total + 0.5 * (real - 1).pow(2).mean() + 0.5 * fake.pow(2).mean()
    return total


def adversarial_generator(fake_scores: Sequence[Tensor]) -> Tensor:
    """Eq. 3.12 as LSGAN, generator side: sum over scales of 1/2 E[(D(fake) - 1)^2]."""
    total = fake_scores[0].new_zeros(())
    for fake in fake_scores:
        total = total + 0.5 * (fake - 1).pow(2).mean()
    return total


def identity_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Eqs. 3.13-3.15, L_CE = E[-log p(y^S_id | I^S)] on real source images (hard one-hot k(c))."""
    return F.cross_entropy(logits, labels)


def soft_cross_entropy(logits: Tensor, labels: Tensor, epsilon: float) -> Tensor:
    """Eqs. 3.16-3.17, L_Soft_CE = -(1 - eps) log p(y | I^{S->G}) - eps / C sum_c log p(c | I^{S->G})."""
    return cross_entropy_label_smoothing(logits, labels, epsilon)


def teacher_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Eq. 3.18, L_KL = E[sum_c q(c) log(q(c) / p(c))] = KL(q || p): q the frozen teacher's, p E_id's softmax."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1), reduction="batchmean")


def ramp_weight(iteration: int, start: int, length: int, maximum: float) -> float:
    """w2 = w4 of eq. 3.19: 0 up to ``start``, linear to ``maximum`` over ``length`` iterations, then constant."""
    if iteration <= start:
        return 0.0
    if length <= 0 or iteration >= start + length:
        return float(maximum)
    return float(maximum) * (iteration - start) / length


def ipes_gan_objective(terms: dict[str, Tensor], w1: float, w2: float, w3: float, w4: float) -> Tensor:
    """Eq. 3.19, L = w1 L_Cyc + w2 L_Con + L_Cam + L_Adv + L_CE + w3 L_Soft_CE + w4 L_KL (missing terms are 0)."""
    weights = {"cyc": w1, "con": w2, "cam": 1.0, "adv": 1.0, "ce": 1.0, "soft_ce": w3, "kl": w4}
    unknown = sorted(set(terms) - set(weights))
    if unknown:
        raise KeyError(f"ipes_gan_objective: unknown term(s) {unknown}; valid: {sorted(weights)}")
    total = next(iter(terms.values())).new_zeros(())
    for name, value in terms.items():
        total = total + weights[name] * value
    return total
