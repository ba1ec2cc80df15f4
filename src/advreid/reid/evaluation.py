"""Retrieval evaluation of one test domain: features of query and gallery, CMC / mAP / mINP, optional re-ranking.

Shared by ``eval_reid`` and every stage that scores a Re-ID model on a processed dataset (``eval_gan``,
``eval_defense``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from advreid.data.torch_data import ManifestImages, load_split
from advreid.params import ParamsError
from advreid.reid.features import extract_features
from advreid.reid.metrics import AP_CONVENTIONS, RankResult, evaluate_rank
from advreid.reid.reranking import k_reciprocal_rerank

METRICS = ("euclidean", "cosine")
RANKS = (1, 5, 10)


@dataclass(frozen=True)
class EvalSettings:
    """``reid.models.<name>.eval``."""

    metric: str = "euclidean"
    flip: bool = True  # average each image's features with its mirror image's
    ap_convention: str = "noninterp"
    max_rank: int = 50  # length of the CMC curve
    single_shot_repeats: int = 0  # > 0: CUHK03 single-shot CMC averaged over this many gallery draws
    seed: int = 0  # of the single-shot draws
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    chunk_size: int = 256  # queries scored (and re-ranked) at once
    batch_size: int = 128  # images per feature-extraction batch
    ranked_queries: int = 3  # rows per domain in the ranked-list picture
    top_k: int = 10

    def check(self, where: str) -> EvalSettings:
        if self.metric not in METRICS:
            raise ParamsError(f"{where}.metric: must be one of {list(METRICS)}, got {self.metric!r}")
        if self.ap_convention not in AP_CONVENTIONS:
            raise ParamsError(
                f"{where}.ap_convention: must be one of {list(AP_CONVENTIONS)}, got {self.ap_convention!r}"
            )
        for name in ("max_rank", "k1", "k2", "chunk_size", "batch_size", "ranked_queries", "top_k"):
            if getattr(self, name) < 1:
                raise ParamsError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.single_shot_repeats < 0:
            raise ParamsError(f"{where}.single_shot_repeats: must be >= 0, got {self.single_shot_repeats}")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise ParamsError(f"{where}.lambda_value: must be in [0, 1], got {self.lambda_value}")
        return self


@dataclass
class DomainEvaluation:
    """Features and scores of one test domain."""

    name: str
    query: ManifestImages
    gallery: ManifestImages
    query_features: Tensor  # (Q, D)
    gallery_features: Tensor  # (G, D)
    result: RankResult
    reranked: RankResult | None


def evaluate_domain(
    model: nn.Module,
    processed_dir: str | Path,
    settings: EvalSettings,
    size: tuple[int, int],
    *,
    device: torch.device,
    root: str | Path = ".",
) -> DomainEvaluation:
    """Features of the query and gallery splits of ``processed_dir`` at ``size`` (H, W), then CMC / mAP / mINP
    (and the re-ranked ones with ``settings.rerank``)."""
    splits, features = {}, {}
    for split in ("query", "gallery"):
        frame, raw_root = load_split(processed_dir, split, root)
        splits[split] = ManifestImages(frame, raw_root, size=size)
        loader = DataLoader(splits[split], batch_size=settings.batch_size, shuffle=False)
        features[split] = extract_features(model, loader, device, flip=settings.flip)
    (qf, ql, qc), (gf, gl, gc) = features["query"], features["gallery"]
    options = {
        "max_rank": settings.max_rank,
        "ap_convention": settings.ap_convention,
        "chunk_size": settings.chunk_size,
        "single_shot_repeats": settings.single_shot_repeats,
    }
    generator = torch.Generator().manual_seed(settings.seed)
    result = evaluate_rank(qf, gf, ql, gl, qc, gc, metric=settings.metric, generator=generator, **options)
    reranked = None
    if settings.rerank:
        distance = k_reciprocal_rerank(
            qf,
            gf,
            settings.k1,
            settings.k2,
            settings.lambda_value,
            chunk_size=settings.chunk_size,
            metric=settings.metric,
        )
        generator = torch.Generator().manual_seed(settings.seed)
        reranked = evaluate_rank(qf, gf, ql, gl, qc, gc, distance_fn=distance, generator=generator, **options)
    name = Path(processed_dir).name
    return DomainEvaluation(name, splits["query"], splits["gallery"], qf, gf, result, reranked)


def domain_metrics(evaluation: DomainEvaluation, settings: EvalSettings, role: str) -> dict[str, Any]:
    """The metrics JSON block of one domain: rank-1/5/10, mAP, mINP and the settings they were computed with."""
    protocol = {
        "role": role,
        "distance": settings.metric,
        "flip": settings.flip,
        "cmc": f"single-shot x{settings.single_shot_repeats}" if settings.single_shot_repeats else "multi-shot",
    }
    block: dict[str, Any] = {**evaluation.result.as_dict(RANKS), **protocol}
    if evaluation.reranked is not None:
        block["rerank"] = {
            **evaluation.reranked.as_dict(RANKS),
            "k1": settings.k1,
            "k2": settings.k2,
            "lambda": settings.lambda_value,
        }
    return block
