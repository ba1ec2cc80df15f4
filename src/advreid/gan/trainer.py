"""IPES-GAN training (thesis sec. 3.3.2): per iteration one discriminator step, then one generator/encoder step.

Adam (lr 2e-4, betas (0, 0.999)) for the generator set (pose and style encoders with camera heads, decoders and
their AdaIN MLPs) and for D; SGD (lr 1e-3, momentum 0.9) for the identity encoder E_id. Every
``checkpoint_every`` iterations everything (weights, the three optimizers, history, random states) goes
atomically to one checkpoint file; a run that finds a checkpoint with the same fingerprint continues from it,
and on CPU the result is bit-identical to an uninterrupted run (batches are a function of (seed, iteration)).
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advreid.device import rng_state, set_rng_state
from advreid.gan.data import DomainImages, batch_indices, domain_batch
from advreid.gan.forward import LOSS_TERMS, POSE_PAIRINGS, ROUTINGS, GANBatch, generator_terms, ipes_forward
from advreid.gan.losses import adversarial_discriminator, ipes_gan_objective, ramp_weight
from advreid.gan.networks import Generator, MultiScaleDiscriminator, NetworkSizes
from advreid.io import atomic_path
from advreid.models.reid import ReIDModel, build_reid_model
from advreid.params import ParamsError
from advreid.progress import progress
from advreid.reid.engine import seed_everything

ID_INITS = ("teacher", "scratch")
CURVE_COLUMNS = ("iteration", "loss_d", "total", *LOSS_TERMS, "w2", "w4")


@dataclass(frozen=True)
class GANSettings:
    """The shared settings of one ``gan.runs`` entry (defaults: the thesis' and DG-Net's)."""

    max_iter: int = 100000
    batch_size: int = 8  # per domain: B_S = B_T
    source_k: int = 2  # source images per identity in a batch (from different cameras)
    height: int = 256
    width: int = 128
    resize: bool = False  # resize images of another size (else an error names the first such image)
    pose_sigma: float = 2.0  # heat-map Gaussian, pixels at height x width
    pose_width: int = 16
    res_blocks: int = 4
    style_width: int = 16
    style_dim: int = 128
    mlp_dim: int = 512
    dis_width: int = 32
    dis_scales: int = 3
    dis_res_blocks: int = 4
    decoder_kernel: int = 5
    w1: float = 5.0  # L_Cyc
    w3: float = 0.5  # L_Soft_CE
    ramp_max: float = 3.0  # w2 = w4 after the ramp
    ramp_start: int = 20000
    ramp_length: int = 6000
    soft_ce_eps: float = 0.1
    lr_gen: float = 2e-4
    lr_dis: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.999
    lr_id: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    routing: str = "dgnet"
    pose_pairing: str = "cross"
    cyclic: bool = True  # False: Table 3.4's single encoding (no re-encoding, no L_Cyc / L_Con)
    losses: tuple[str, ...] = LOSS_TERMS  # the terms of eq. 3.19 that are used (ablations drop some)
    id_init: str = "teacher"  # E_id's initial weights: the teacher's (the demo's stand-in for ImageNet) or random
    checkpoint_every: int = 100
    log_every: int = 10

    def check(self, where: str) -> GANSettings:
        for name in (
            "max_iter",
            "batch_size",
            "source_k",
            "height",
            "width",
            "pose_width",
            "res_blocks",
            "style_width",
            "style_dim",
            "mlp_dim",
            "dis_width",
            "dis_scales",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ParamsError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.height % 4 or self.width % 4:
            raise ParamsError(f"{where}: height and width must be multiples of 4, got {self.height}x{self.width}")
        choices = {"routing": ROUTINGS, "pose_pairing": POSE_PAIRINGS, "id_init": ID_INITS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ParamsError(f"{where}.{name}: must be one of {list(valid)}, got {getattr(self, name)!r}")
        if unknown := sorted(set(self.losses) - set(LOSS_TERMS)):
            raise ParamsError(f"{where}.losses: unknown term(s) {unknown}; valid: {list(LOSS_TERMS)}")
        if not 0 <= self.soft_ce_eps < 1 or self.pose_sigma <= 0 or self.ramp_start < 0 or self.ramp_length < 0:
            raise ParamsError(f"{where}: need 0 <= soft_ce_eps < 1, pose_sigma > 0, ramp_start/length >= 0")
        if self.decoder_kernel % 2 == 0 or self.dis_res_blocks < 0:
            raise ParamsError(f"{where}: decoder_kernel must be odd and dis_res_blocks >= 0")
        return self

    @property
    def sizes(self) -> NetworkSizes:
        return NetworkSizes(**{k: getattr(self, k) for k in NetworkSizes.__dataclass_fields__})


@dataclass
class TrainedGAN:
    """What :func:`train_ipes_gan` returns (modules on CPU-or-device, eval mode)."""

    generator: Generator
    discriminator: MultiScaleDiscriminator
    identity: ReIDModel
    history: list[dict[str, float]]
    resumed_from: int
    seconds: float  # wall time of the iterations run in this call
    fingerprint: str


def build_networks(
    settings: GANSettings, teacher: ReIDModel, arch: str, source: DomainImages, target: DomainImages, seed: int
) -> tuple[Generator, MultiScaleDiscriminator, ReIDModel]:
    """G, D and E_id with seeded initial weights; E_id from the teacher's weights with ``id_init: teacher``."""
    seed_everything(seed)
    identity = build_reid_model(arch, source.num_classes)
    if settings.id_init == "teacher":
        identity.load_state_dict(teacher.state_dict())
    generator = Generator(settings.sizes, identity.feature_dim, source.num_cameras, target.num_cameras)
    return generator, MultiScaleDiscriminator(settings.sizes), identity


def make_batch(source: DomainImages, target: DomainImages, settings: GANSettings, seed: int, it: int) -> GANBatch:
    rows_s, rows_t = batch_indices(source, target, settings.batch_size, settings.source_k, seed, it)
    images_s, cameras_s, pose_s = domain_batch(source, rows_s, settings.pose_sigma)
    images_t, cameras_t, pose_t = domain_batch(target, rows_t, settings.pose_sigma)
    labels = source.labels[torch.as_tensor(rows_s, dtype=torch.long)]
    return GANBatch(images_s, labels, cameras_s, pose_s, images_t, cameras_t, pose_t)


def train_ipes_gan(
    settings: GANSettings,
    source: DomainImages,
    target: DomainImages,
    teacher: ReIDModel,
    arch: str,
    *,
    seed: int,
    checkpoint_path: str | Path | None,
    device: torch.device,
    fingerprint_extra: dict[str, Any] | None = None,
    stop_after: int | None = None,
    description: str = "ipes_gan",
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainedGAN:
    """Train IPES-GAN for ``settings.max_iter`` iterations (``stop_after``: return early, as if killed, for tests).

    ``target`` must carry no labels (the target domain is unlabelled). ``teacher`` is E_std (frozen, eval mode).
    """
    if target.labels is not None:
        raise ValueError(f"target domain {target.name}: identity labels must not reach the trainer")
    if teacher.num_classes != source.num_classes:
        raise ValueError(
            f"teacher has {teacher.num_classes} classes, source {source.name} {source.num_classes} identities"
        )
    config = {"settings": asdict(settings), "seed": seed, "arch": arch, **(fingerprint_extra or {})}
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    generator, discriminator, identity = build_networks(settings, teacher, arch, source, target, seed)
    teacher = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    generator, discriminator, identity = generator.to(device), discriminator.to(device), identity.to(device)
    betas = (settings.beta1, settings.beta2)
    opt_gen = torch.optim.Adam(generator.parameters(), settings.lr_gen, betas=betas, weight_decay=settings.weight_decay)
    opt_dis = torch.optim.Adam(
        discriminator.parameters(), settings.lr_dis, betas=betas, weight_decay=settings.weight_decay
    )
    trainable_id = [p for p in identity.parameters() if p.requires_grad]  # the BNNeck's frozen bias stays out
    opt_id = torch.optim.SGD(
        trainable_id, settings.lr_id, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    modules = {"generator": generator, "discriminator": discriminator, "identity": identity}
    optimizers = {"opt_gen": opt_gen, "opt_dis": opt_dis, "opt_id": opt_id}
    history: list[dict[str, float]] = []
    start = 0
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None:
        checkpoint = _resumable(path, fingerprint)
        if checkpoint is not None:
            for name, obj in {**modules, **optimizers}.items():
                obj.load_state_dict(checkpoint[name])
            start, history = int(checkpoint["iteration"]), list(checkpoint["history"])
            set_rng_state(checkpoint["rng"])
    end = settings.max_iter if stop_after is None else min(stop_after, settings.max_iter)
    generator.train(), discriminator.train(), identity.train()
    began = time.perf_counter()
    with progress(range(start, end), desc=description, unit="it", initial=start, total=settings.max_iter) as bar:
        for it in bar:
            record = train_iteration(
                settings, source, target, seed, it, generator, discriminator, identity, teacher, optimizers, device
            )
            if (it + 1) % settings.log_every == 0 or it + 1 == settings.max_iter:
                history.append(record)
                if on_log is not None:
                    on_log(it + 1, record)
                bar.set_postfix(
                    D=f"{record['loss_d']:.3f}",
                    cyc=f"{record['cyc']:.3f}",
                    adv=f"{record['adv']:.3f}",
                    ce=f"{record['ce']:.3f}",
                )
            if path is not None and ((it + 1) % settings.checkpoint_every == 0 or it + 1 == settings.max_iter):
                _save(path, modules, optimizers, it + 1, history, fingerprint)
    seconds = time.perf_counter() - began
    for module in modules.values():
        module.eval()
    return TrainedGAN(generator, discriminator, identity, history, start, seconds, fingerprint)


def train_iteration(
    settings, source, target, seed, it, generator, discriminator, identity, teacher, optimizers, device
):
    """One iteration: the forward pass, a D step on the detached generated images, then the G / E_id step."""
    batch = make_batch(source, target, settings, seed, it)
    batch = GANBatch(*(getattr(batch, f).to(device) for f in GANBatch.__dataclass_fields__))
    weight = ramp_weight(it + 1, settings.ramp_start, settings.ramp_length, settings.ramp_max)
    out = ipes_forward(
        generator, identity, batch, routing=settings.routing, pose_pairing=settings.pose_pairing, cyclic=settings.cyclic
    )
    # discriminator step on the detached generated images
    opt_dis = optimizers["opt_dis"]
    opt_dis.zero_grad(set_to_none=True)
    real = [*discriminator(batch.source_images), *discriminator(batch.target_images)]
    fake = [*discriminator(out.source_to_target.detach()), *discriminator(out.target_to_source.detach())]
    loss_d = adversarial_discriminator(real, fake)
    loss_d.backward()
    opt_dis.step()
    # generator / encoder step (eq. 3.19) against the updated D, whose weights stay out of this step
    discriminator.requires_grad_(False)
    terms = generator_terms(
        out,
        batch,
        generator,
        identity,
        teacher,
        discriminator,
        routing=settings.routing,
        epsilon=settings.soft_ce_eps,
        enabled=tuple(settings.losses),
    )
    total = ipes_gan_objective(terms, settings.w1, weight, settings.w3, weight)
    optimizers["opt_gen"].zero_grad(set_to_none=True)
    optimizers["opt_id"].zero_grad(set_to_none=True)
    total.backward()
    optimizers["opt_gen"].step()
    optimizers["opt_id"].step()
    discriminator.requires_grad_(True)
    record = {"iteration": float(it + 1), "loss_d": loss_d.item(), "total": total.item(), "w2": weight, "w4": weight}
    record.update({name: float(terms[name].item()) if name in terms else 0.0 for name in LOSS_TERMS})
    return record


def _save(path: Path, modules: dict[str, nn.Module], optimizers: dict, iteration: int, history: list, fp: str) -> None:
    checkpoint = {name: obj.state_dict() for name, obj in {**modules, **optimizers}.items()}
    checkpoint.update(iteration=iteration, history=history, rng=rng_state(), fingerprint=fp)
    # through a file handle, as advreid.reid.engine.save_checkpoint: identical runs give identical bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)


def _resumable(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written by a run with the same fingerprint, else None (deleted)."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        reason = None if checkpoint.get("fingerprint") == fingerprint else "it was written with other settings"
    except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as err:
        checkpoint, reason = None, f"it cannot be read ({type(err).__name__}: {err})"
    if reason is None:
        return checkpoint
    print(f"train_gan: discarding checkpoint {path}: {reason}; training from iteration 0", file=sys.stderr)
    path.unlink()
    return None
