"""Re-ID retrieval metrics: CMC, mAP and mINP under the standard protocol, in bounded memory.

Protocol (Zheng et al. 2015, as torchreid and the official Market-1501 code apply it): for each query,
gallery entries with the query's identity *and* camera are removed, as are junk entries (label -1);
distractors (label 0) stay. Queries with no remaining true match are skipped. The query x gallery distance
matrix is never built whole: queries are processed in chunks, each chunk's rows sorted and scored alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

AP_CONVENTIONS = ("noninterp", "trapezoid")
_SCORE_ROWS = 64  # queries scored at once: average_precision holds a few (rows, G) float64 arrays


@dataclass(frozen=True)
class RankResult:
    """CMC curve (cmc[k-1] = rank-k accuracy), mAP, mINP (fractions in [0, 1])."""

    cmc: Tensor
    mAP: float
    mINP: float
    num_valid_queries: int
    ap_convention: str
    per_query_ap: Tensor = field(repr=False)
    # 0-based rank of each valid query's first true match (multi-shot CMC only; None with single-shot repeats)
    per_query_first_match: Tensor | None = field(default=None, repr=False)

    def rank(self, k: int) -> float:
        return float(self.cmc[k - 1])

    def as_dict(self, ranks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {f"rank{k}": self.rank(k) for k in ranks if k <= len(self.cmc)}
        out.update(
            mAP=self.mAP, mINP=self.mINP, num_valid_queries=self.num_valid_queries, ap_convention=self.ap_convention
        )
        return out


def pairwise_distance(query: Tensor, gallery: Tensor, metric: str = "euclidean") -> Tensor:
    """Distances (Q, G) between feature rows; ``euclidean`` (not squared) or ``cosine`` (1 - cos)."""
    if metric == "euclidean":
        q2 = query.pow(2).sum(1, keepdim=True)
        g2 = gallery.pow(2).sum(1).unsqueeze(0)
        return (q2 + g2 - 2.0 * query @ gallery.T).clamp_min_(0).sqrt_()
    if metric == "cosine":
        qn = torch.nn.functional.normalize(query, dim=1)
        gn = torch.nn.functional.normalize(gallery, dim=1)
        return 1.0 - qn @ gn.T
    raise KeyError(f"unknown distance metric '{metric}'; valid: ['cosine', 'euclidean']")


def average_precision(matches: Tensor, convention: str = "noninterp") -> Tensor:
    """AP of ranked boolean match rows (N, G); rows need at least one match.

    ``noninterp``: mean of precision@k over the ranks k of the true matches (torchreid, sklearn).
    ``trapezoid``: the official Market-1501 evaluation code, which averages the precision just before and at
    each match (trapezoidal rule over recall); it is lower by up to a few points.
    """
    m = matches.to(torch.float64)
    hits = m.cumsum(1)  # true matches seen up to and including rank k
    positions = torch.arange(1, m.shape[1] + 1, dtype=torch.float64, device=m.device)
    num_rel = m.sum(1)
    precision_at = hits / positions
    if convention == "noninterp":
        return (precision_at * m).sum(1) / num_rel
    if convention == "trapezoid":
        # at the i-th match (0-based) found at 0-based rank r: precision i/r before it (1 if r == 0), (i+1)/(r+1) at it
        before = torch.where(positions > 1, (hits - m) / (positions - 1).clamp_min(1), torch.ones_like(m))
        return (((before + precision_at) / 2) * m).sum(1) / num_rel
    raise KeyError(f"unknown AP convention '{convention}'; valid: {list(AP_CONVENTIONS)}")


def _check_lengths(features: Tensor, labels: Tensor, cameras: Tensor, side: str) -> None:
    """One label and one camera per feature row, or the ranking silently pairs the wrong entries."""
    if len(labels) != len(features) or len(cameras) != len(features):
        raise ValueError(
            f"evaluate_rank: the {side} side has {len(features)} feature rows but {len(labels)} labels and "
            f"{len(cameras)} cameras; each must have one per image"
        )


def evaluate_rank(
    query_features: Tensor,
    gallery_features: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    query_cameras: Tensor,
    gallery_cameras: Tensor,
    *,
    metric: str = "euclidean",
    max_rank: int = 50,
    ap_convention: str = "noninterp",
    chunk_size: int = 256,
    distance_fn=None,
    single_shot_repeats: int = 0,
    generator: torch.Generator | None = None,
) -> RankResult:
    """CMC, mAP and mINP of a query set against a gallery, ``chunk_size`` queries at a time.

    Args:
        query_features, gallery_features: (Q, D) and (G, D) features.
        *_labels, *_cameras: (Q,) / (G,) integer identities and cameras; gallery label -1 = junk.
        distance_fn: optional ``fn(query_indices) -> (len, G) distances`` replacing the feature distance
            (used for re-ranked distances); features are then only used for their count.
        single_shot_repeats: CUHK03 single-shot CMC: if > 0, for each repeat keep one random gallery image
            per identity (after the same-camera removal) and average the CMC over repeats; AP uses all images.
    """
    if ap_convention not in AP_CONVENTIONS:
        raise KeyError(f"unknown AP convention '{ap_convention}'; valid: {list(AP_CONVENTIONS)}")
    num_q, num_g = len(query_labels), len(gallery_labels)
    if num_g == 0 or num_q == 0:
        raise ValueError(f"evaluate_rank: empty query ({num_q}) or gallery ({num_g})")
    _check_lengths(query_features, query_labels, query_cameras, "query")
    _check_lengths(gallery_features, gallery_labels, gallery_cameras, "gallery")
    if distance_fn is None:
        for side, features in (("query", query_features), ("gallery", gallery_features)):
            if not bool(torch.isfinite(features).all()):
                raise ValueError(f"evaluate_rank: {side} features hold NaN or inf; the ranking would be arbitrary")
    max_rank = min(max_rank, num_g)
    g_labels, g_cams = gallery_labels.long(), gallery_cameras.long()
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64)
    aps, inps, firsts = [], [], []
    for start in range(0, num_q, chunk_size):
        idx = torch.arange(start, min(start + chunk_size, num_q))
        if distance_fn is not None:
            dist = distance_fn(idx)
            span = f"queries {start}..{start + len(idx) - 1}"
            if tuple(dist.shape) != (len(idx), num_g):
                raise ValueError(
                    f"evaluate_rank: distance_fn returned shape {tuple(dist.shape)} for {span}; "
                    f"expected ({len(idx)}, {num_g}) = (queries in the chunk, gallery size)"
                )
            if not bool(torch.isfinite(dist).all()):
                raise ValueError(f"evaluate_rank: distance_fn returned NaN or inf for {span}")
        else:
            dist = pairwise_distance(query_features[idx], gallery_features, metric)
        # stable sort: ties keep gallery order, so chunked and whole-matrix runs agree exactly
        order = torch.sort(dist, dim=1, stable=True).indices
        q_lab = query_labels[idx].long().unsqueeze(1)
        q_cam = query_cameras[idx].long().unsqueeze(1)
        # masks in gallery order, then one boolean gather each (cheaper than gathering labels and cameras)
        same_id = g_labels.unsqueeze(0) == q_lab
        removed = (same_id & (g_cams.unsqueeze(0) == q_cam)) | (g_labels == -1).unsqueeze(0)
        keep = torch.gather(~removed, 1, order)
        matches = torch.gather(same_id & ~removed, 1, order)
        valid = matches.any(1)
        if single_shot_repeats > 0:
            ranked_labels = g_labels[order]
            for row in torch.nonzero(valid).flatten().tolist():
                cmc_sum += _single_shot_cmc(
                    ranked_labels[row][keep[row]], matches[row][keep[row]], max_rank, single_shot_repeats, generator
                )
        for rows in torch.nonzero(valid).flatten().split(_SCORE_ROWS):
            kept = _drop_removed(matches[rows], keep[rows])  # (n, G) matches ranked among kept entries only
            if single_shot_repeats == 0:
                first = kept.to(torch.uint8).argmax(1)  # first true match (argmax returns the first maximum)
                cmc_sum += torch.bincount(first[first < max_rank], minlength=max_rank).cumsum(0)
                firsts.append(first)
            aps.append(average_precision(kept, ap_convention))
            last = kept.shape[1] - 1 - kept.flip(1).to(torch.uint8).argmax(1)
            inps += (kept.sum(1).double() / (last.double() + 1.0)).tolist()
    num_valid = len(inps)
    if num_valid == 0:
        raise ValueError("evaluate_rank: no query has a true match in the gallery after same-camera removal")
    ap_tensor = torch.cat(aps)
    return RankResult(
        cmc=(cmc_sum / num_valid).float(),
        mAP=float(ap_tensor.mean()),
        mINP=float(sum(inps) / num_valid),
        num_valid_queries=num_valid,
        ap_convention=ap_convention,
        per_query_ap=ap_tensor.float(),
        per_query_first_match=torch.cat(firsts) if single_shot_repeats == 0 else None,
    )


def _drop_removed(matches: Tensor, keep: Tensor) -> Tensor:
    """Ranked match rows (n, G) with the removed entries taken out, left-aligned and padded with False."""
    num_g = matches.shape[1]
    # rank of each kept entry among the kept ones; removed entries all land in a spare last column
    target = torch.where(keep, keep.cumsum(1) - 1, num_g)
    out = torch.zeros(matches.shape[0], num_g + 1, dtype=torch.bool, device=matches.device)
    return out.scatter_(1, target, matches & keep)[:, :num_g]


def _single_shot_cmc(
    labels: Tensor, matches: Tensor, max_rank: int, repeats: int, generator: torch.Generator | None
) -> Tensor:
    """CMC of one query averaged over ``repeats`` draws of one gallery image per identity (CUHK03 protocol)."""
    out = torch.zeros(max_rank, dtype=torch.float64)
    for _ in range(repeats):
        # random priority per image; the first image per identity in priority order is kept
        priority = torch.rand(len(labels), generator=generator)
        pick = torch.zeros(len(labels), dtype=torch.bool)
        for lab in torch.unique(labels).tolist():
            members = torch.nonzero(labels == lab).flatten()
            pick[members[torch.argmin(priority[members])]] = True
        kept = matches[pick]
        first = int(torch.nonzero(kept)[0])
        if first < max_rank:
            out[first:] += 1
    return out / repeats
