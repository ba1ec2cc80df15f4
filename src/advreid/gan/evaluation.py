"""IPES-GAN's image-side evaluation: translate whole domains, MMD on teacher features (thesis Table 3.8), SSIM of
cyclic reconstructions, and the image grid of thesis Figs. 3.4-3.6 (source, target, S->T, T->S, cycles)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from advreid.attacks.evaluation import feature_mmd, ssim
from advreid.gan.data import DomainImages, domain_batch
from advreid.gan.forward import GANBatch, ipes_forward
from advreid.gan.networks import Generator
from advreid.models.reid import ReIDModel, ReIDOutput
from advreid.plots import image_grid, to_uint8_image


class ReIDOutputs(nn.Module):
    """A Re-ID model that returns :class:`ReIDOutput` (logits, pooled f_t, BNNeck f_i) in eval mode too, so the
    training forward pass can run on a trained E_id with its BatchNorm running statistics."""

    def __init__(self, model: ReIDModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> ReIDOutput:
        m = self.model
        pooled = m.head.pool(m.backbone(m.normalize(x))).flatten(1)
        feat = m.head.bottleneck(pooled)
        return ReIDOutput(m.head.classifier(feat), pooled, feat)


@dataclass
class DomainTranslation:
    """Every source image translated with a target environment (paired i <-> i mod N_T) and back."""

    source: Tensor  # (N, 3, H, W) in [0, 1]
    target: Tensor  # the paired target images
    source_to_target: Tensor
    target_to_source: Tensor
    cycle_source: Tensor
    cycle_target: Tensor


@torch.no_grad()
def translate_domains(
    generator: Generator,
    identity: ReIDModel,
    source: DomainImages,
    target: DomainImages,
    *,
    pose_pairing: str,
    sigma: float,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> DomainTranslation:
    """Run the forward pass (eval mode, cyclic) over all source images, each paired with target image i mod N_T."""
    generator, encoder = generator.eval(), ReIDOutputs(identity).eval()
    parts: dict[str, list[Tensor]] = {k: [] for k in DomainTranslation.__dataclass_fields__}
    for start in range(0, len(source), batch_size):
        rows = list(range(start, min(start + batch_size, len(source))))
        images_s, cams_s, pose_s = domain_batch(source, rows, sigma)
        images_t, cams_t, pose_t = domain_batch(target, [r % len(target) for r in rows], sigma)
        zeros = torch.zeros(len(rows), dtype=torch.long)
        batch = GANBatch(images_s, zeros, cams_s, pose_s, images_t, cams_t, pose_t)
        batch = GANBatch(*(getattr(batch, f).to(device) for f in GANBatch.__dataclass_fields__))
        out = ipes_forward(generator, encoder, batch, pose_pairing=pose_pairing, cyclic=True)
        for key, value in (
            ("source", images_s),
            ("target", images_t),
            ("source_to_target", out.source_to_target),
            ("target_to_source", out.target_to_source),
            ("cycle_source", out.cycle_source),
            ("cycle_target", out.cycle_target),
        ):
            parts[key].append(value.cpu())
    return DomainTranslation(**{k: torch.cat(v) for k, v in parts.items()})


@torch.no_grad()
def teacher_features(teacher: ReIDModel, images: Tensor, batch_size: int = 64) -> Tensor:
    """E_std's BNNeck features (eval mode) of ``images`` (N, 3, H, W) in [0, 1]."""
    teacher.eval()
    device = next(teacher.parameters()).device
    return torch.cat([teacher(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def domain_mmd(teacher: ReIDModel, target: Tensor, other: Tensor) -> float:
    """Thesis Table 3.8: MMD^2 between target images and ``other`` images on the teacher's L2-normalised features
    (:func:`advreid.attacks.evaluation.feature_mmd`, RBF kernels of :func:`advreid.certify.objectives.mmd_rbf`)."""
    return feature_mmd(teacher_features(teacher, target), teacher_features(teacher, other))


def cycle_ssim(translation: DomainTranslation) -> dict[str, float]:
    """Mean SSIM between each image and its cyclic reconstruction, per domain."""
    return {
        "source": float(ssim(translation.source, translation.cycle_source).mean()),
        "target": float(ssim(translation.target, translation.cycle_target).mean()),
    }


def translation_grid(translation: DomainTranslation, path: str | Path, rows: int, title: str) -> Path:
    """Figure like thesis Figs. 3.4-3.6: per row a source and a target image, I^{S->G}, I^{T->G} and both cycles."""
    picks = torch.linspace(0, len(translation.source) - 1, min(rows, len(translation.source))).round().long()
    columns = ("source", "target", "source_to_target", "target_to_source", "cycle_source", "cycle_target")
    labels = ["source I^S", "target I^T", "S->T I^{S->G}", "T->S I^{T->G}", "cycle I~^S", "cycle I~^T"]
    grid = [[to_uint8_image(getattr(translation, c)[i]) for c in columns] for i in picks.tolist()]
    return image_grid(grid, path, col_labels=labels, title=title)
