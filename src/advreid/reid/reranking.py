"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory.

The reference implementation (zhunzhong07/person-re-ranking ``re_ranking``, copied into torchreid as
``torchreid/utils/rerank.py``) builds the dense (Q+G) x (Q+G) distance, rank and weight matrices, which is
impossible at MSMT17 scale (93,820^2 entries). Here every probe (query or gallery image) keeps only what the
method reads:

1. one chunked pass over all probe pairs keeps each probe's ``max(k1 + 1, k2)`` nearest probes (``torch.topk``)
   and its largest squared distance, the reference's normaliser;
2. k-reciprocal sets R(p, k1) (Eq. 2) and their expansion R*(p, k1) by the R(q, k1/2) of each member that
   shares more than 2/3 of it with R(p, k1) (Eq. 3; the reference's strict ``>``) come from those lists alone;
3. the Gaussian-kernel encoding V_p (Eq. 6) and its local query expansion over the k2 nearest (Eq. 10) are sparse
   rows (a few dozen non-zeros each);
4. the Jaccard distance (Eqs. 7-9) is computed only for query rows against the gallery, through an inverted index
   (the gallery rows of V by column), ``chunk`` queries at a time, and combined as Eq. 11:
   ``d* = (1 - lambda) d_J + lambda d``.

The "original distance" d is the squared feature distance divided by its maximum over all Q+G probes in the
probe's row: the reference divides column j by its maximum and transposes, and the squared distance matrix is
symmetric, so both are the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advreid.errors import DataSizeError
from advreid.reid.metrics import pairwise_distance

METRICS = ("cosine", "euclidean")
_PAIR_BATCH = 1 << 14  # probe pairs whose distance is computed at once (each pair gathers two feature rows)


@dataclass(frozen=True)
class KReciprocalDistance:
    """Re-ranked query x gallery distance of Eq. 11, computed on demand for any set of query rows.

    Callable as ``evaluate_rank``'s ``distance_fn``: ``dist(query_indices) -> (len, G)``. The sparse encoding
    holds V after local query expansion: the query rows in CSR form, the gallery rows in CSC form (the
    inverted index of the reference).
    """

    query_features: Tensor  # (Q, D)
    gallery_features: Tensor  # (G, D)
    metric: str
    lambda_value: float
    query_scale: Tensor  # (Q,) largest squared distance of each query to any of the Q+G probes
    query_ptr: Tensor  # (Q+1,) CSR row pointers into query_cols / query_weights
    query_cols: Tensor  # probe index (0..Q+G-1) of each non-zero of a query row of V
    query_weights: Tensor
    gallery_ptr: Tensor  # (Q+G+1,) CSC column pointers into gallery_rows / gallery_weights
    gallery_rows: Tensor  # gallery index (0..G-1) of each non-zero of a gallery row of V
    gallery_weights: Tensor

    def __call__(self, query_indices: Tensor) -> Tensor:
        """Re-ranked distances (len(query_indices), G) of the given query rows, on query_indices' device."""
        idx = query_indices.to(device=self.query_ptr.device, dtype=torch.long)
        original = pairwise_distance(self.query_features[idx], self.gallery_features, self.metric).pow_(2)
        original /= self.query_scale[idx].unsqueeze(1)
        final = (1 - self.lambda_value) * self.jaccard_distance(idx) + self.lambda_value * original
        return final.to(query_indices.device)

    def jaccard_distance(self, query_indices: Tensor) -> Tensor:
        """Eq. 9 between the V rows of the given queries and every gallery row: (len, G)."""
        num_gallery = len(self.gallery_features)
        q_pos, q_row = _segment_positions(self.query_ptr, query_indices)
        cols, q_weight = self.query_cols[q_pos], self.query_weights[q_pos]
        # inverted index: every gallery row that is non-zero in a column the query row is non-zero in
        g_pos, entry = _segment_positions(self.gallery_ptr, cols)
        shared = torch.minimum(q_weight[entry], self.gallery_weights[g_pos])
        target = q_row[entry] * num_gallery + self.gallery_rows[g_pos]
        overlap = torch.zeros(len(query_indices) * num_gallery, dtype=shared.dtype, device=shared.device)
        overlap = overlap.index_add_(0, target, shared).view(len(query_indices), num_gallery)
        # rows of V sum to 1, so sum(max) = 2 - sum(min)
        return 1 - overlap / (2 - overlap)

    def matrix(self, chunk_size: int = 256) -> Tensor:
        """The whole (Q, G) re-ranked distance matrix, ``chunk_size`` queries at a time (small problems)."""
        num_q = len(self.query_features)
        device = self.query_ptr.device
        return torch.cat(
            [self(torch.arange(s, min(s + chunk_size, num_q), device=device)) for s in range(0, num_q, chunk_size)]
        )


def k_reciprocal_rerank(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_size: int = 512,
    metric: str = "euclidean",
) -> KReciprocalDistance:
    """k-reciprocal re-ranking of Zhong et al. 2017 (Eqs. 1-11), chunked; returns the re-ranked distance.

    Args:
        query_features, gallery_features: (Q, D) and (G, D) features on one device.
        k1: size of the k-reciprocal neighbourhood (the expansion uses ``round(k1 / 2)``, rounding half to even
            like ``np.around``). k2: local query expansion size (1 = none). lambda_value: weight of the original
            distance in [0, 1].
        chunk_size: probes per chunk of the all-pairs pass; peak memory grows as chunk_size x (Q + G).
        metric: ``euclidean`` or ``cosine`` feature distance, squared as the original distance.

    Returns:
        A ``KReciprocalDistance``: call it with query indices for (len, G) distances, or ``.matrix()``.

    Equal to the reference ``re_ranking(probFea, galFea, ...)`` (squared distances, normalised by each probe's
    maximum over all Q+G probes) up to floating-point rounding, with two documented differences: (1) where
    distances tie across the boundary of a neighbour list (positions k1 + 1, round(k1/2) + 1 and k2, e.g.
    duplicate features), which tied probe is kept is decided by ``torch.topk`` rather than ``np.argsort``
    (itself not stable, so the reference has no defined choice either); (2) the reference computes in float32
    whatever it is given, this follows the features' dtype. The distance-matrix variant in torchreid squares its
    input too, so fed torchreid's squared Euclidean distances it works on fourth powers; this does not.
    Jaccard distances between queries, which the reference computes and then discards, are skipped.
    """
    _check_arguments(query_features, gallery_features, k1, k2, lambda_value, chunk_size, metric)
    for side, features in (("query", query_features), ("gallery", gallery_features)):
        if not bool(torch.isfinite(features).all()):  # NaN would otherwise surface as "all features identical"
            raise ValueError(f"k_reciprocal_rerank: {side} features hold NaN or inf")
    num_q = len(query_features)
    num_all = num_q + len(gallery_features)
    half = round(k1 / 2) + 1
    probes = torch.cat([query_features, gallery_features])  # (N, D): one copy, read by index from here on
    nearest, scale = _nearest_probes(probes, max(k1 + 1, k2), chunk_size, metric)
    if not bool((scale > 0).all()):
        raise ValueError("k_reciprocal_rerank: a probe has distance 0 to every probe (all features identical)")
    reciprocal = _reciprocal_mask(nearest[:, : k1 + 1], chunk_size)
    half_reciprocal = _reciprocal_mask(nearest[:, :half], chunk_size)
    rows, cols = _expanded_reciprocal_sets(
        nearest[:, : k1 + 1], reciprocal, nearest[:, :half], half_reciprocal, chunk_size
    )
    weights = _gaussian_encoding(probes, rows, cols, scale, metric)
    del probes  # the copy is not needed past this point; free it before the expansion's buffers
    if k2 != 1:
        rows, cols, weights = _local_query_expansion(rows, cols, weights, nearest[:, :k2], chunk_size)
    return _inverted_index(
        query_features, gallery_features, metric, lambda_value, scale[:num_q], rows, cols, weights, num_all
    )


def _check_arguments(
    query: Tensor, gallery: Tensor, k1: int, k2: int, lambda_value: float, chunk_size: int, metric: str
) -> None:
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"k_reciprocal_rerank: query_features {tuple(query.shape)} and gallery_features "
            f"{tuple(gallery.shape)} must be (Q, D) and (G, D) with the same D"
        )
    if not (query.is_floating_point() and gallery.is_floating_point()):
        raise TypeError(f"k_reciprocal_rerank: features must be floating point, got {query.dtype}/{gallery.dtype}")
    if query.device != gallery.device:
        raise ValueError(f"k_reciprocal_rerank: features on {query.device} and {gallery.device}")
    if metric not in METRICS:
        raise KeyError(f"unknown distance metric '{metric}'; valid: {list(METRICS)}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k_reciprocal_rerank: k1 ({k1}) and k2 ({k2}) must be >= 1")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"k_reciprocal_rerank: lambda_value must be in [0, 1], got {lambda_value}")
    if chunk_size < 1:
        raise ValueError(f"k_reciprocal_rerank: chunk_size must be >= 1, got {chunk_size}")
    num_all = len(query) + len(gallery)
    if max(k1 + 1, k2) > num_all:
        raise DataSizeError(
            f"k_reciprocal_rerank: max(k1 + 1, k2) = {max(k1 + 1, k2)} exceeds the {num_all} query + gallery probes "
            "(lower the re-ranking k1 / k2 params or evaluate more images)"
        )


def _nearest_probes(probes: Tensor, k: int, chunk_size: int, metric: str) -> tuple[Tensor, Tensor]:
    """Each probe's k nearest probes, nearest first (N, k), and its largest squared distance (N,)."""
    nearest, scale = [], []
    for start in range(0, len(probes), chunk_size):
        dist = pairwise_distance(probes[start : start + chunk_size], probes, metric)  # (c, N)
        nearest.append(torch.topk(dist, k, dim=1, largest=False, sorted=True).indices)
        scale.append(dist.max(1).values.pow(2))  # squaring is monotone: max of squares
    return torch.cat(nearest), torch.cat(scale)


def _reciprocal_mask(rank: Tensor, chunk_size: int) -> Tensor:
    """mask[p, a] is True iff p is among the k nearest of its a-th nearest ``rank[p, a]`` (k = rank.shape[1])."""
    mask = torch.empty(rank.shape, dtype=torch.bool, device=rank.device)
    for start in range(0, len(rank), chunk_size):
        own = torch.arange(start, min(start + chunk_size, len(rank)), device=rank.device)
        mask[own] = (rank[rank[own]] == own[:, None, None]).any(-1)  # (c, k, k) -> (c, k)
    return mask


def _expanded_reciprocal_sets(
    rank: Tensor, reciprocal: Tensor, half_rank: Tensor, half_reciprocal: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """R*(p, k1) of Eq. 3 as (row, col) pairs, sorted by row then col."""
    num_all = len(rank)
    rows, cols = [], []
    for start in range(0, num_all, chunk_size):
        own = torch.arange(start, min(start + chunk_size, num_all), device=rank.device)
        members, member_ok = rank[own], reciprocal[own]  # R(p, k1): (c, k1+1)
        cand, cand_ok = half_rank[members], half_reciprocal[members]  # R(q, k1/2) of each q: (c, k1+1, h)
        in_members = ((cand.unsqueeze(-1) == members[:, None, None, :]) & member_ok[:, None, None, :]).any(-1)
        shared = (in_members & cand_ok).sum(-1)
        # |R(q, k1/2) & R(p, k1)| > 2/3 |R(q, k1/2)|, in integers (identical to the reference's float test)
        accept = member_ok & (3 * shared > 2 * cand_ok.sum(-1))
        union = torch.cat(
            [
                members.masked_fill(~member_ok, num_all),
                cand.masked_fill(~(cand_ok & accept.unsqueeze(-1)), num_all).flatten(1),
            ],
            1,
        )
        union = union.sort(1).values
        first = torch.ones_like(union, dtype=torch.bool)
        first[:, 1:] = union[:, 1:] != union[:, :-1]
        keep = first & (union < num_all)
        rows.append(own.unsqueeze(1).expand_as(union)[keep])
        cols.append(union[keep])
    return torch.cat(rows), torch.cat(cols)


def _gaussian_encoding(probes: Tensor, rows: Tensor, cols: Tensor, scale: Tensor, metric: str) -> Tensor:
    """V_p of Eq. 6: exp(-d(p, g)) over g in R*(p, k1), normalised to sum 1 per row; the values at (rows, cols)."""
    if metric == "cosine":
        probes = torch.nn.functional.normalize(probes, dim=1)
    sq_norm = probes.pow(2).sum(1)
    dist = []
    for s in range(0, len(rows), _PAIR_BATCH):
        r, c = rows[s : s + _PAIR_BATCH], cols[s : s + _PAIR_BATCH]
        dot = torch.linalg.vecdot(probes[r], probes[c])
        # the formulas of pairwise_distance, pair by pair
        if metric == "euclidean":
            dist.append((sq_norm[r] + sq_norm[c] - 2.0 * dot).clamp_min_(0).sqrt_())
        else:
            dist.append(1.0 - dot)
    weight = torch.exp(-torch.cat(dist).pow(2) / scale[rows])
    total = torch.zeros(len(scale), dtype=weight.dtype, device=weight.device).index_add_(0, rows, weight)
    return weight / total[rows]


def _segment_positions(ptr: Tensor, segments: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of all entries of the given CSR/CSC segments, and for each the index into ``segments``."""
    starts = ptr[segments]
    counts = ptr[segments + 1] - starts
    owner = torch.repeat_interleave(torch.arange(len(segments), device=ptr.device), counts)
    offset = torch.cumsum(counts, 0) - counts
    positions = starts[owner] + torch.arange(len(owner), device=ptr.device) - offset[owner]
    return positions, owner


def _row_pointers(rows: Tensor, num_rows: int) -> Tensor:
    ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return ptr


def _local_query_expansion(
    rows: Tensor, cols: Tensor, weights: Tensor, nearest: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 10: V_p <- mean of V_q over the k2 nearest q of p (p included); sparse rows in, sparse rows out."""
    num_all, k2 = nearest.shape
    ptr = _row_pointers(rows, num_all)
    out_rows, out_cols, out_weights = [], [], []
    for start in range(0, num_all, chunk_size):
        stop = min(start + chunk_size, num_all)
        pos, owner = _segment_positions(ptr, nearest[start:stop].flatten())
        # key (row, col) of the expanded row; owner // k2 is the row within the chunk, in ascending k2 order
        key = (owner // k2 + start) * num_all + cols[pos]
        unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
        summed = torch.zeros(len(unique), dtype=weights.dtype, device=weights.device)
        summed.index_add_(0, inverse, weights[pos])
        out_rows.append(unique // num_all)
        out_cols.append(unique % num_all)
        out_weights.append(summed / k2)
    return torch.cat(out_rows), torch.cat(out_cols), torch.cat(out_weights)


def _inverted_index(
    query: Tensor,
    gallery: Tensor,
    metric: str,
    lambda_value: float,
    query_scale: Tensor,
    rows: Tensor,
    cols: Tensor,
    weights: Tensor,
    num_all: int,
) -> KReciprocalDistance:
    """Split sparse V (rows sorted) into query rows (CSR) and gallery rows indexed by column (CSC)."""
    num_q = len(query)
    is_query = rows < num_q
    g_rows, g_cols, g_weights = rows[~is_query] - num_q, cols[~is_query], weights[~is_query]
    order = torch.argsort(g_cols, stable=True)  # by column, gallery rows ascending within a column
    return KReciprocalDistance(
        query_features=query,
        gallery_features=gallery,
        metric=metric,
        lambda_value=float(lambda_value),
        query_scale=query_scale,
        query_ptr=_row_pointers(rows[is_query], num_q),
        query_cols=cols[is_query],
        query_weights=weights[is_query],
        gallery_ptr=_row_pointers(g_cols, num_all),
        gallery_rows=g_rows[order],
        gallery_weights=g_weights[order],
    )
