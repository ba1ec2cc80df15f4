"""Attacking a Re-ID split and measuring the damage (thesis chapter 4): one attack configuration (optimiser +
Re-ID objective), the reference features of the metric objectives, budget-safe 8-bit adversarial images, retrieval
scores before / after, image quality (SSIM, Table 4.6), feature-domain MMD (Table 4.6) and the smoothness of a
perturbation (the blur of Fig. 4.6).

Images are float (B, C, H, W) in [0, 1]; labels and cameras are (N,) integer tensors. Re-ID label conventions
follow :mod:`advreid.reid.metrics`: -1 junk, 0 distractor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import Tensor, nn

from advreid.attacks.gradient import METHODS as GRADIENT_METHODS
from advreid.attacks.gradient import attack
from advreid.attacks.objectives import Objective, build_objective
from advreid.attacks.wasserstein import WMAResult, exact_wasserstein_distance, wasserstein_metric_attack
from advreid.certify.objectives import mmd_rbf
from advreid.reid.metrics import RankResult, evaluate_rank, pairwise_distance

METHODS = (*GRADIENT_METHODS, "wma")
OBJECTIVES = ("reid_non_targeted", "reid_targeted", "sma", "odfa", "ama")
GALLERY_SIDE = ("ama",)  # objectives that perturb gallery images instead of queries
RANKS = (1, 5, 10)
_WMA_DRIVER_OPTIONS = ("tol", "growth", "grow_every", "gamma", "stop_when_fooled", "w_images", "w_pool")
_WMA_OPTIONS = ("eps_w", "lam", "kernel_size", "max_iter", "unit_mass", *_WMA_DRIVER_OPTIONS)


@dataclass(frozen=True)
class AttackConfig:
    """One attack: an optimiser (``method``: a gradient method or ``wma``) and a Re-ID objective, with options.

    Objectives: ``reid_non_targeted`` (eq. 4.3, away from the identity's gallery features), ``reid_targeted``
    (toward another identity's), ``sma`` / ``odfa`` (away from / opposite to the image's own clean features) and
    ``ama`` (gallery images away from their identity's queries).
    """

    method: str
    objective: str = "reid_non_targeted"
    random_start: bool = False
    momentum: float = 1.0  # MI / NI / SI-NI momentum decay
    scales: int = 5  # SI-NI scale copies
    eot_samples: int = 1  # forward passes averaged per gradient (EOT)
    # WMA only: the projection's options (see advreid.attacks.wasserstein.projected_sinkhorn)
    eps_w: float = 100.0
    lam: float = 3000.0
    kernel_size: int = 7
    max_iter: int = 50
    unit_mass: bool = False
    tol: float = 1e-5  # projection stops once its mass error and ball residual are below this
    growth: float = 1.0  # radius growth factor every grow_every steps for unfooled queries (Wong et al.: 1.1)
    grow_every: int = 10
    gamma: bool = True  # clip Gamma to the budget's L-inf ball before each projection
    stop_when_fooled: bool = True  # step only queries whose rank-1 is still right (Wong et al.'s driver)
    w_images: int = 4  # attacked images whose exact Wasserstein distance is measured (POT)
    w_pool: int = 4  # ... on images average-pooled by this factor (an exact LP at 128 x 64 does not finish)

    def record(self) -> dict[str, Any]:
        """The fields to save with an attack's outputs. A gradient attack's leaves out the WMA driver options
        added with issue 11 (at their defaults, by :meth:`check`), so its saved payload stays what it was."""
        fields = asdict(self)
        if self.method != "wma":
            for name in _WMA_DRIVER_OPTIONS:
                del fields[name]
        return fields

    @property
    def side(self) -> str:
        """The split this attack perturbs: ``query`` or ``gallery``."""
        return "gallery" if self.objective in GALLERY_SIDE else "query"

    def check(self, where: str = "attack") -> AttackConfig:
        """Raise ValueError naming the field (``<where>.<field>``) of an invalid or inapplicable option."""
        if self.method not in METHODS:
            raise ValueError(f"{where}.method: must be one of {list(METHODS)}, got {self.method!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{where}.objective: must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.method != "wma":
            changed = [name for name in _WMA_OPTIONS if getattr(self, name) != getattr(AttackConfig, name)]
            if changed:
                raise ValueError(f"{where}: {changed} apply to method 'wma' only, not {self.method!r}")
        elif self.random_start or self.eot_samples != 1:
            raise ValueError(f"{where}: method 'wma' (thesis Algorithm 1) takes no random_start or eot_samples")
        if self.scales < 1 or self.eot_samples < 1 or self.max_iter < 1 or self.grow_every < 1 or self.w_pool < 1:
            raise ValueError(f"{where}: scales, eot_samples, max_iter, grow_every and w_pool must be >= 1")
        if self.tol <= 0 or self.growth < 1 or self.w_images < 0:
            raise ValueError(
                f"{where}: need tol > 0, growth >= 1 and w_images >= 0, got {self.tol}, {self.growth}, {self.w_images}"
            )
        if self.lam <= 0 or self.eps_w < 0:
            raise ValueError(f"{where}: need lam > 0 and eps_w >= 0, got lam={self.lam}, eps_w={self.eps_w}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"{where}.kernel_size: must be a positive odd integer, got {self.kernel_size}")
        return self


class ImageSource(Protocol):
    def image(self, index: int) -> Tensor: ...


@dataclass
class ReIDSplit:
    """A query or gallery split: its images (loaded on demand) and their clean features, labels and cameras."""

    images: ImageSource  # image(i) -> (3, H, W) float in [0, 1], e.g. advreid.data.torch_data.ManifestImages
    features: Tensor  # (N, D) on the CPU
    labels: Tensor  # (N,)
    cameras: Tensor  # (N,)


@dataclass
class AttackOutcome:
    """What :func:`attack_split` returns."""

    images: Tensor  # (N, 3, H, W) uint8 adversarial images of the attacked rows
    features: Tensor  # (N, D) their features
    result: RankResult  # retrieval with them in place of the clean images
    metrics: dict[str, Any]  # rank-k, mAP, mINP, SSIM, MMD, L-inf and mean |.| (1/255), smoothness, feature shift
    seconds: float


def same_identity_other_camera(
    labels: Tensor, cameras: Tensor, ref_labels: Tensor, ref_cameras: Tensor
) -> list[Tensor]:
    """For each sample, the indices of the references of its identity taken by another camera: the pairs that
    CMC and mAP score (same-identity same-camera pairs are removed by the protocol). Junk references
    (label -1) and distractors (label 0) never match.

    Args:
        labels, cameras: (B,) of the attacked samples; ref_labels, ref_cameras: (N,) of the references.
    Returns:
        B index tensors (possibly empty).
    """
    match = (ref_labels[None, :] == labels[:, None]) & (ref_cameras[None, :] != cameras[:, None])
    match &= ref_labels[None, :] > 0
    return [torch.nonzero(row).flatten() for row in match]


def stack_references(features: Tensor, groups: list[Tensor], fallback: Tensor) -> tuple[Tensor, Tensor]:
    """Reference features per sample, padded to the largest group, with the mask the objectives take.

    A sample with an empty group gets its ``fallback`` row (its own clean features) as its one reference: the
    distance to it has zero gradient at the clean image, so a deterministic attack leaves that sample alone.

    Args:
        features: (N, D) features the groups index; groups: B index tensors; fallback: (B, D).
    Returns:
        references (B, G, D) and mask (B, G) bool, G = max(1, largest group).
    """
    if len(groups) != fallback.shape[0]:
        raise ValueError(f"{len(groups)} reference groups for {fallback.shape[0]} fallback rows")
    width = max([1, *(len(g) for g in groups)])
    references = fallback[:, None, :].repeat(1, width, 1)
    mask = torch.zeros(len(groups), width, dtype=torch.bool, device=fallback.device)
    for row, group in enumerate(groups):
        if len(group):
            references[row, : len(group)] = features[group.to(features.device)]
            mask[row, : len(group)] = True
        else:
            mask[row, 0] = True
    return references, mask


def choose_targets(labels: Tensor, candidates: Tensor, generator: torch.Generator) -> Tensor:
    """A target identity per sample for the targeted attack: drawn uniformly from the real identities of
    ``candidates`` (labels > 0) other than the sample's own.

    Args:
        labels: (B,) identities; candidates: (N,) labels to draw from (e.g. the gallery's).
        generator: CPU generator, so the draw repeats given the seed.
    Returns:
        (B,) target identities.
    """
    identities = torch.unique(candidates[candidates > 0]).cpu()
    if len(identities) < 2:
        raise ValueError(f"a targeted attack needs at least 2 identities among the candidates, got {len(identities)}")
    own_labels = labels.cpu()
    own = torch.searchsorted(identities, own_labels).clamp(max=len(identities) - 1)
    present = identities[own] == own_labels
    # uniform over the identities other than the sample's own: draw among the others, then step past its own
    count = len(identities) - present.long()
    draws = (torch.rand(len(labels), generator=generator) * count).long().clamp(max=count - 1)
    draws = torch.where(present & (draws >= own), draws + 1, draws)
    return identities[draws].to(labels.device)


def quantize_in_ball(adversarial: Tensor, clean: Tensor, eps: float) -> Tensor:
    """Adversarial images as uint8 (what an image file holds) without leaving the L-inf ball of radius ``eps``.

    Each pixel is rounded to the nearest k/255 inside [clean - eps, clean + eps] and [0, 1]. When the clean
    image is itself 8-bit (k/255) and eps >= 1/255 such a level always exists; otherwise (a resized clean
    image and eps below one level) the clean pixel's nearest level is kept.

    Args:
        adversarial, clean: (B, C, H, W) float in [0, 1]; eps: L-inf radius in [0, 1] units.
    Returns:
        (B, C, H, W) uint8.
    """
    if adversarial.shape != clean.shape:
        raise ValueError(f"adversarial {tuple(adversarial.shape)} and clean {tuple(clean.shape)} differ in shape")
    slack = 1e-4  # float rounding of k/255 * 255; far below half a level
    low = torch.ceil((clean - eps) * 255 - slack).clamp_(min=0)
    high = torch.floor((clean + eps) * 255 + slack).clamp_(max=255)
    levels = torch.round(adversarial * 255).clamp_(0, 255)
    levels = torch.where(low <= high, torch.minimum(torch.maximum(levels, low), high), torch.round(clean * 255))
    return levels.to(torch.uint8)


def ssim(clean: Tensor, adversarial: Tensor) -> Tensor:
    """Structural similarity of each adversarial image to its clean image (thesis Table 4.6), by scikit-image
    (Gaussian-free 7x7 windows, data range 1, averaged over channels).

    Args:
        clean, adversarial: (B, C, H, W) float in [0, 1], H and W >= 7.
    Returns:
        (B,) float64 SSIM in [-1, 1], 1 for identical images.
    """
    if clean.shape != adversarial.shape or clean.dim() != 4:
        raise ValueError(
            f"need two (B, C, H, W) batches of one shape, got {tuple(clean.shape)}, {tuple(adversarial.shape)}"
        )
    a = clean.detach().double().cpu().numpy()
    b = adversarial.detach().double().cpu().numpy()
    scores = [structural_similarity(x, y, data_range=1.0, channel_axis=0) for x, y in zip(a, b, strict=True)]
    return torch.as_tensor(np.asarray(scores, dtype=np.float64))


def feature_mmd(clean_features: Tensor, adversarial_features: Tensor, max_samples: int = 2000) -> float:
    """MMD^2 between the clean and adversarial feature sets (thesis Table 4.6: larger = the adversarial images
    lie farther from the clean domain), on L2-normalised features with :func:`mmd_rbf`'s default bandwidths.

    Features are normalised because those bandwidths suit distances in [0, 2]. Sets larger than
    ``max_samples`` are thinned to evenly spaced rows (the kernel matrices are quadratic in the set size).

    Args:
        clean_features: (N, D); adversarial_features: (M, D).
    """

    def thin(f: Tensor) -> Tensor:
        if len(f) <= max_samples:
            return f
        return f[torch.linspace(0, len(f) - 1, max_samples, device=f.device).round().long()]

    x = F.normalize(thin(clean_features).double(), dim=1)
    y = F.normalize(thin(adversarial_features).double(), dim=1)
    return float(mmd_rbf(x, y))


def perturbation_smoothness(delta: Tensor) -> Tensor:
    """Lag-one spatial autocorrelation of each perturbation, the mean of its horizontal and vertical values:
    near 0 for independent per-pixel noise (sign steps), towards 1 for a smooth, blur-like perturbation.

    Args:
        delta: (B, C, H, W) adversarial minus clean.
    Returns:
        (B,) in [-1, 1]; 0 for an all-zero perturbation.
    """
    if delta.dim() != 4:
        raise ValueError(f"delta must be (B, C, H, W), got shape {tuple(delta.shape)}")
    d = delta.double()
    d = d - d.mean(dim=(1, 2, 3), keepdim=True)
    variance = d.pow(2).flatten(1).mean(1)
    horizontal = (d[..., :, 1:] * d[..., :, :-1]).flatten(1).mean(1)
    vertical = (d[..., 1:, :] * d[..., :-1, :]).flatten(1).mean(1)
    correlation = (horizontal + vertical) / 2 / variance.clamp(min=torch.finfo(d.dtype).tiny)
    return torch.where(variance > 0, correlation, torch.zeros_like(correlation))


def evenly_spaced(count: int, total: int) -> Tensor:
    """``count`` evenly spaced indices of ``range(total)`` (all of them when count >= total)."""
    if count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long().unique()


def rank_scores(result: RankResult) -> dict[str, float]:
    """CMC rank-1/5/10, mAP and mINP of a ranking result."""
    scores = {f"rank{k}": result.rank(k) for k in RANKS if k <= len(result.cmc)}
    return {**scores, "mAP": result.mAP, "mINP": result.mINP}


def reid_objective(
    config: AttackConfig, clean_features: Tensor, rows: Tensor, splits: dict[str, ReIDSplit], targets: Tensor | None
) -> Objective:
    """The objective for a batch: ``rows`` (B,) index the attacked split, ``clean_features`` (B, D) are theirs;
    ``targets`` (N,) are the target identities of the targeted attack."""
    if config.objective in ("sma", "odfa"):
        return build_objective(config.objective, clean_features)
    attacked, other = (
        (splits["gallery"], splits["query"]) if config.side == "gallery" else (splits["query"], splits["gallery"])
    )
    if config.objective == "reid_targeted":
        if targets is None:
            raise ValueError("the targeted objective needs target identities")
        groups = [torch.nonzero(other.labels == t).flatten() for t in targets[rows].tolist()]
    else:
        groups = same_identity_other_camera(attacked.labels[rows], attacked.cameras[rows], other.labels, other.cameras)
    references, mask = stack_references(other.features.to(clean_features.device), groups, clean_features)
    return build_objective(config.objective, references, mask)


def rank1_fooled(
    gallery: ReIDSplit, labels: Tensor, cameras: Tensor, metric: str, targets: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    """The success test of WMA's driver for a batch of queries: query features (B, D) -> (B,) bool, True where
    the nearest gallery image under the protocol (same identity and camera removed, junk never) is of another
    identity (``targets`` given: is of the target identity)."""
    same = (gallery.labels[None, :] == labels[:, None].cpu()) & (gallery.cameras[None, :] == cameras[:, None].cpu())
    removed = same | (gallery.labels[None, :] == -1)

    def fooled(features: Tensor) -> Tensor:
        distance = pairwise_distance(features.float().cpu(), gallery.features.float(), metric)
        nearest = gallery.labels[distance.masked_fill(removed, torch.inf).argmin(1)]
        return nearest == targets.cpu() if targets is not None else nearest != labels.cpu()

    return fooled


def run_wma(
    model: nn.Module,
    images: Tensor,
    objective: Objective,
    config: AttackConfig,
    *,
    eps: float,
    step: float,
    steps: int,
    fooled: Callable[[Tensor], Tensor] | None = None,
) -> WMAResult:
    """``config``'s WMA (thesis Algorithm 1, Wong et al.'s driver) on ``images``; eps (the clip Gamma, if
    ``config.gamma``) and step in [0, 1] pixel units."""
    return wasserstein_metric_attack(
        model,
        images,
        objective,
        eps_w=config.eps_w,
        eps=eps if config.gamma else None,
        step=step,
        steps=steps,
        lam=config.lam,
        kernel_size=config.kernel_size,
        max_iter=config.max_iter,
        tol=config.tol,
        unit_mass=config.unit_mass,
        growth=config.growth,
        grow_every=config.grow_every,
        fooled=fooled if config.stop_when_fooled else None,
    )


def run_attack(
    model: nn.Module,
    images: Tensor,
    objective: Objective,
    config: AttackConfig,
    *,
    eps: float,
    step: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``config``'s optimiser on ``images`` (B, 3, H, W) in [0, 1]; eps and step in [0, 1] pixel units."""
    if config.method == "wma":
        return run_wma(model, images, objective, config, eps=eps, step=step, steps=steps).images
    return attack(
        model,
        images,
        objective,
        method=config.method,
        eps=eps,
        step=step,
        steps=steps,
        random_start=config.random_start,
        momentum=config.momentum,
        scales=config.scales,
        eot_samples=config.eot_samples,
        generator=generator,
    )


def wasserstein_metrics(
    config: AttackConfig, clean: Tensor, adversarial: Tensor, results: list[WMAResult]
) -> dict[str, Any]:
    """What a WMA cell reports beside rank-1 / mAP: the exact Wasserstein distance (POT, raw intensity x pixels)
    of ``config.w_images`` evenly spaced saved images from their clean images (pooled by ``config.w_pool``), the
    change of mass it ignores, L2, the radius reached, and the projections' convergence.

    Args:
        clean, adversarial: (N, C, H, W) in [0, 1], the sampled images (adversarial as saved, 8-bit).
        results: the :class:`WMAResult` of every batch.
    """
    field = {name: torch.cat([getattr(r, name) for r in results]) for name in WMAResult._fields if name != "images"}
    distance = exact_wasserstein_distance(clean, adversarial, pool=config.w_pool) if len(clean) else torch.zeros(0)
    mass = clean.double().flatten(1).sum(1)
    steps = field["steps"].sum().item()
    return {
        "wasserstein": float(distance.mean()) if len(distance) else float("nan"),
        "wasserstein_max": float(distance.max()) if len(distance) else float("nan"),
        "w_images": len(distance),
        "w_pool": config.w_pool,
        "mass_change": float(((adversarial.double().flatten(1).sum(1) - mass).abs() / mass).mean())
        if len(mass)
        else 0.0,
        "eps_w_final": float(field["eps_w"].mean()),
        "eps_w_final_max": float(field["eps_w"].max()),
        "transport_cost": float(field["transport_cost"].mean()),
        "fooled": float(field["fooled"].double().mean()),
        "wma_steps": float(field["steps"].double().mean()),
        "projections": int(steps),
        "unconverged": int(field["unconverged"].sum()),
        "sinkhorn_iterations": float(field["iterations"].sum().item() / max(steps, 1)),
        "mass_error_max": float(field["mass_error"].max()),
    }


def attack_split(
    model: nn.Module,
    config: AttackConfig,
    splits: dict[str, ReIDSplit],
    *,
    eps: float,
    step: float,
    steps: int,
    device: torch.device,
    batch_size: int = 64,
    seed: int = 0,
    metric: str = "euclidean",
    ap_convention: str = "noninterp",
    rows: Tensor | None = None,
) -> AttackOutcome:
    """Attack ``config.side``'s split of ``splits`` (its ``rows``, default all) batch by batch, round the images to
    8 bits inside the L-inf ball, and score retrieval with them in place of the clean ones.

    Args:
        model: Re-ID model in eval mode on ``device``, images in [0, 1] -> features.
        splits: ``query`` and ``gallery``.
        eps, step: L-inf radius and step size in [0, 1] pixel units; steps: iterations.
        seed: seeds the random start and the targeted attack's identities (the same for every config).
    """
    start = time.perf_counter()
    side = config.side
    attacked = splits[side]
    query, gallery = splits["query"], splits["gallery"]
    rows = torch.arange(len(attacked.labels)) if rows is None else rows
    generator = torch.Generator(device=device).manual_seed(seed)
    targets = None
    if config.objective == "reid_targeted":
        targets = torch.full_like(attacked.labels, -1)
        targets[rows] = choose_targets(attacked.labels[rows], gallery.labels, torch.Generator().manual_seed(seed))
    images, features, ssims, linf, mean_abs, smooth, l2, wma_results = [], [], [], [], [], [], [], []
    for batch in rows.split(batch_size):
        clean = torch.stack([attacked.images.image(int(i)) for i in batch]).to(device)
        objective = reid_objective(config, attacked.features[batch].to(device), batch, splits, targets)
        if config.method == "wma":
            fooled = None
            if side == "query":
                batch_targets = targets[batch] if targets is not None else None
                fooled = rank1_fooled(gallery, query.labels[batch], query.cameras[batch], metric, batch_targets)
            wma_results.append(run_wma(model, clean, objective, config, eps=eps, step=step, steps=steps, fooled=fooled))
            # WMA's output is inside the Wasserstein ball, not the L-inf one: 8-bit rounding only
            levels = quantize_in_ball(wma_results[-1].images, clean, 1.0)
            l2.append((levels.float() / 255 - clean).flatten(1).norm(dim=1).cpu())
        else:
            adversarial = run_attack(
                model, clean, objective, config, eps=eps, step=step, steps=steps, generator=generator
            )
            levels = quantize_in_ball(adversarial, clean, eps)
        adversarial = levels.float() / 255  # what is saved is what is scored
        with torch.no_grad():
            features.append(model(adversarial).float().cpu())
        images.append(levels.cpu())
        ssims.append(ssim(clean, adversarial))
        linf.append((adversarial - clean).abs().flatten(1).amax(1).cpu())
        mean_abs.append((adversarial - clean).abs().flatten(1).mean(1).cpu())
        smooth.append(perturbation_smoothness(adversarial - clean).cpu())
    adv_features = torch.cat(features)
    if side == "query":
        ranked = (
            adv_features,
            gallery.features,
            query.labels[rows],
            gallery.labels,
            query.cameras[rows],
            gallery.cameras,
        )
    else:
        ranked = (
            query.features,
            adv_features,
            query.labels,
            gallery.labels[rows],
            query.cameras,
            gallery.cameras[rows],
        )
    options = {"metric": metric, "ap_convention": ap_convention}
    result = evaluate_rank(*ranked, **options)
    metrics: dict[str, Any] = {
        **rank_scores(result),
        "side": side,
        "images": len(rows),
        "ssim": float(torch.cat(ssims).mean()),
        "mmd": feature_mmd(attacked.features[rows], adv_features),
        "linf": float(torch.cat(linf).max()) * 255,  # 1/255 units
        "mean_abs": float(torch.cat(mean_abs).mean()) * 255,  # mean |perturbation| per pixel, 1/255 units
        "smoothness": float(torch.cat(smooth).mean()),
        "feature_shift": float((adv_features - attacked.features[rows]).norm(dim=1).mean()),
    }
    if wma_results:
        sample = rows[evenly_spaced(config.w_images, len(rows))] if config.w_images else rows[:0]
        positions = {int(r): i for i, r in enumerate(rows.tolist())}
        clean = torch.stack([attacked.images.image(int(i)) for i in sample]) if len(sample) else torch.zeros(0)
        saved = (
            torch.stack([torch.cat(images)[positions[int(i)]] for i in sample]).float() / 255 if len(sample) else clean
        )
        metrics.update(wasserstein_metrics(config, clean, saved, wma_results))
        metrics["l2"] = float(torch.cat(l2).mean())  # mean L2 norm of the perturbation, [0, 1] units
    if targets is not None:
        # success of the targeted attack: retrieval scored as if each query were its target identity, query
        # cameras -1 so that no gallery image of the target is removed as a same-camera match
        cameras = torch.full_like(rows, -1)
        hit = evaluate_rank(
            adv_features, gallery.features, targets[rows], gallery.labels, cameras, gallery.cameras, **options
        )
        metrics.update(target_rank1=hit.rank(1), target_mAP=hit.mAP)
    return AttackOutcome(torch.cat(images), adv_features, result, metrics, time.perf_counter() - start)
