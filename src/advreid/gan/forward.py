"""One IPES-GAN iteration's forward pass (thesis sec. 3.2, spec sec. 1.2) and its generator-side loss terms.

encode (pose, style, identity of I^S and I^T) -> environmental swap (I^{S->G} = G_S(f^T_env, f^S_ind), source
person in the target environment; I^{T->G} = G_T(f^S_env, f^T_ind)) -> re-encode the generated images -> cyclic
reconstruction (I~^S = G_S(E^S_env(I^{T->G}), E_id(I^{S->G})), I~^T likewise).

Gradient routing (spec sec. 1.3, ``routing="dgnet"``, DG-Net's): E_id learns only from the identity losses (real
CE; Soft CE and KL on detached I^{S->G}); the decoders receive a detached f_ind; re-encoding a generated image by
E_id goes through a frozen copy of E_id's weights (gradient reaches the image, not E_id); the consistency targets
f^X_env, f^X_ind are detached. ``routing="literal"`` back-propagates eq. 3.19 into every module ("jointly optimized").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from advreid.gan import losses
from advreid.gan.networks import Generator
from advreid.models.reid import ReIDModel, ReIDOutput

ROUTINGS = ("dgnet", "literal")
POSE_PAIRINGS = ("cross", "own", "none")
LOSS_TERMS = ("cyc", "con", "cam", "adv", "ce", "soft_ce", "kl")


@dataclass
class GANBatch:
    """B_S source and B_T = B_S target images, paired index-wise; pose maps are 18-channel heat maps."""

    source_images: Tensor  # (B, 3, H, W) in [0, 1]
    source_labels: Tensor  # (B,) source identity classes 0..C_S-1
    source_cameras: Tensor  # (B,) 0..n_cam_S-1
    source_pose: Tensor  # (B, 18, H, W)
    target_images: Tensor
    target_cameras: Tensor
    target_pose: Tensor


@dataclass
class Translation:
    """Everything one forward pass produces (spec sec. 1.2 steps 1-5)."""

    pose_source: Tensor  # f^S_pose
    style_source: Tensor  # f^S_style
    pose_target: Tensor
    style_target: Tensor
    identity_source: ReIDOutput  # E_id(I^S): f^S_ind = feat_triplet, logits for L_CE
    identity_target: Tensor  # f^T_ind
    source_to_target: Tensor  # I^{S->G}: source person, target environment
    target_to_source: Tensor  # I^{T->G}: target person, source environment
    style_hat_target: Tensor  # E^T_s(I^{S->G})
    style_hat_source: Tensor  # E^S_s(I^{T->G})
    pose_hat_target: Tensor | None = None  # E^T_p(I^{S->G}); None without cyclic encoding
    pose_hat_source: Tensor | None = None
    identity_hat_source: Tensor | None = None  # E_id(I^{S->G}) through the routing's E_id
    identity_hat_target: Tensor | None = None
    cycle_source: Tensor | None = None  # I~^S
    cycle_target: Tensor | None = None


def pose_inputs(batch: GANBatch, pairing: str) -> tuple[Tensor, Tensor]:
    """The pose maps E^S_p and E^T_p receive (also when re-encoding): ``cross`` the other domain's paired pose
    (thesis: "the source image and the target pose"), ``own`` each image's own, ``none`` zero maps (Table 3.3)."""
    if pairing == "cross":
        return batch.target_pose, batch.source_pose
    if pairing == "own":
        return batch.source_pose, batch.target_pose
    if pairing == "none":
        return torch.zeros_like(batch.source_pose), torch.zeros_like(batch.target_pose)
    raise ValueError(f"pose_pairing must be one of {list(POSE_PAIRINGS)}, got {pairing!r}")


def frozen_call(model: nn.Module, images: Tensor) -> ReIDOutput:
    """``model(images)`` with its weights detached (gradient flows to ``images`` only) and its BatchNorm running
    statistics left untouched (buffers passed as copies)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return functional_call(model, {**params, **buffers}, (images,))


def ipes_forward(
    generator: Generator,
    identity_encoder: ReIDModel,
    batch: GANBatch,
    *,
    routing: str = "dgnet",
    pose_pairing: str = "cross",
    cyclic: bool = True,
) -> Translation:
    """Encode -> environment swap -> (with ``cyclic``) re-encode -> cycle. ``identity_encoder`` in train mode."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {list(ROUTINGS)}, got {routing!r}")
    literal = routing == "literal"
    pose_for_source, pose_for_target = pose_inputs(batch, pairing=pose_pairing)
    g = generator
    # 1. encode
    pose_s = g.pose_source(batch.source_images, pose_for_source)
    style_s = g.style_source(batch.source_images)
    pose_t = g.pose_target(batch.target_images, pose_for_target)
    style_t = g.style_target(batch.target_images)
    id_s = identity_encoder(batch.source_images)
    id_t = identity_encoder(batch.target_images).feat_triplet
    code_s, code_t = (id_s.feat_triplet, id_t) if literal else (id_s.feat_triplet.detach(), id_t.detach())
    # 2. environmental swap: the other domain's environment with this domain's identity
    s2t = g.decoder_source(pose_t, style_t, code_s)
    t2s = g.decoder_target(pose_s, style_s, code_t)
    out = Translation(
        pose_s,
        style_s,
        pose_t,
        style_t,
        id_s,
        id_t,
        s2t,
        t2s,
        style_hat_target=g.style_target(s2t),
        style_hat_source=g.style_source(t2s),
    )
    if not cyclic:  # Table 3.4 "Single Encoding": generated once, never re-encoded
        return out
    # 3. re-encode the generated images (same pose convention as step 1)
    reencode = identity_encoder if literal else (lambda x: frozen_call(identity_encoder, x))
    out.pose_hat_target = g.pose_target(s2t, pose_for_target)
    out.pose_hat_source = g.pose_source(t2s, pose_for_source)
    out.identity_hat_source = reencode(s2t).feat_triplet
    out.identity_hat_target = reencode(t2s).feat_triplet
    # 4. cyclic reconstruction
    out.cycle_source = g.decoder_source(out.pose_hat_source, out.style_hat_source, out.identity_hat_source)
    out.cycle_target = g.decoder_target(out.pose_hat_target, out.style_hat_target, out.identity_hat_target)
    return out


def generator_terms(
    out: Translation,
    batch: GANBatch,
    generator: Generator,
    identity_encoder: ReIDModel,
    teacher: ReIDModel,
    discriminator: nn.Module,
    *,
    routing: str = "dgnet",
    epsilon: float = 0.1,
    enabled: tuple[str, ...] = LOSS_TERMS,
) -> dict[str, Tensor]:
    """The unweighted loss terms of eq. 3.19 named in ``enabled`` (L_Cyc and L_Con need a cyclic forward).

    ``teacher`` is the frozen E_std (eval mode): q(c | I^{S->G}) from its classifier on the BNNeck feature."""
    literal = routing == "literal"
    terms: dict[str, Tensor] = {}
    cyclic = out.cycle_source is not None
    if "cyc" in enabled and cyclic:
        terms["cyc"] = losses.cyclic_reconstruction(batch.source_images, out.cycle_source) + (
            losses.cyclic_reconstruction(batch.target_images, out.cycle_target)
        )
    if "con" in enabled and cyclic:

        def target(t: Tensor) -> Tensor:
            return t if literal else t.detach()

        terms["con"] = losses.feature_consistency(
            losses.feature_consistency_identity(target(out.identity_source.feat_triplet), out.identity_hat_source),
            losses.feature_consistency_identity(target(out.identity_target), out.identity_hat_target),
            losses.feature_consistency_environment(
                target(out.pose_source), target(out.style_source), out.pose_hat_source, out.style_hat_source
            ),
            losses.feature_consistency_environment(
                target(out.pose_target), target(out.style_target), out.pose_hat_target, out.style_hat_target
            ),
        )
    if "cam" in enabled:
        g = generator
        terms["cam"] = losses.camera_style_total(
            losses.camera_style(g.style_source.camera_logits(out.style_source), batch.source_cameras),
            losses.camera_style(g.style_target.camera_logits(out.style_target), batch.target_cameras),
            losses.camera_style(g.style_target.camera_logits(out.style_hat_target), batch.target_cameras),
            losses.camera_style(g.style_source.camera_logits(out.style_hat_source), batch.source_cameras),
        )
    if "adv" in enabled:
        terms["adv"] = losses.adversarial_generator(
            [*discriminator(out.source_to_target), *discriminator(out.target_to_source)]
        )
    if "ce" in enabled:
        terms["ce"] = losses.identity_cross_entropy(out.identity_source.logits, batch.source_labels)
    if "soft_ce" in enabled or "kl" in enabled:
        generated = out.source_to_target if literal else out.source_to_target.detach()
        student = identity_encoder(generated).logits
        if "soft_ce" in enabled:
            terms["soft_ce"] = losses.soft_cross_entropy(student, batch.source_labels, epsilon)
        if "kl" in enabled:
            with torch.no_grad():
                teacher_logits = teacher.head.classifier(teacher(out.source_to_target.detach()))
            terms["kl"] = losses.teacher_kl(student, teacher_logits)
    return terms
