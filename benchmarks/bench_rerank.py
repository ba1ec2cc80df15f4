"""k-reciprocal re-ranking beside the dense reference, on the largest problem the dense one fits here.

The dense reference (``tests/reranking_reference.py``: zhunzhong07/person-re-ranking line by line, the unit
tests' oracle) holds (Q+G)^2 matrices, about 28 bytes per probe pair at its peak: some 10 GiB and minutes at
Market-1501 scale (19,281 probes). So the two run side by side at half Market-1501 on each side, 1684 queries x
7956 gallery images (9,640 probes, 2.5 GiB dense), the largest that keeps this benchmark near 2.5 CPU-minutes
(four runs), with ``bench_eval``'s 2048-d features with identity structure. Both go from the features to the
whole (Q, G) re-ranked distance matrix (k1=20, k2=6, lambda=0.3):

- dense: the three distance matrices by ``torch.cdist`` in float64, as the unit tests' oracle computes them with
  scipy (too slow at this size), then the reference in float32, its own dtype;
- ours: ``k_reciprocal_rerank(...).matrix()`` on the float32 features.

Each side runs twice, each time in a fresh subprocess: once for time, with the default allocator, and once for
memory, with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so that every freed large block goes back
to the system and the peak resident size is that of live allocations. With glibc's dynamic threshold the peak of
one and the same run of ours varied by 300 MiB (1272 to 1562 MiB over three runs); fixed, it repeats to 1 MiB, but
the fresh pages cost ours about 20% more CPU time, hence the separate runs. A side's peak memory is the peak
resident size (``ru_maxrss``, which sees numpy's and torch's allocations) of its memory run minus that of an
``inputs`` case that only imports and builds the features. The parent checks that the two matrices agree to 1e-6
(max absolute difference; a benchmark of two different outputs would be meaningless) and reports mAP without and
with re-ranking, so the re-ranking is seen to matter on these features. Run with ``python -m benchmarks bench_rerank``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tests.reranking_reference import re_ranking

from advreid.reid.metrics import evaluate_rank
from advreid.reid.reranking import k_reciprocal_rerank

from .bench_eval import DIM, RERANK_CHUNK, SCALES, Scale, synthetic_split
from .common import Measurement, peak_rss_mib, run_case, timed

MARKET = SCALES["market1501"]
SCALE = Scale(
    num_query=MARKET.num_query // 2,
    num_gallery=MARKET.num_gallery // 2,
    num_ids=MARKET.num_ids // 2,
    num_cams=MARKET.num_cams,
)
K1, K2, LAMBDA = 20, 6, 0.3
TOLERANCE = 1e-6
CASES = ("inputs", "dense", "ours")
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # glibc's default initial threshold, kept fixed


def _dense(query: torch.Tensor, gallery: torch.Tensor) -> dict:
    """The reference from features: plain float64 distances (Q, G), (Q, Q), (G, G), then ``re_ranking``."""
    q, g = query.double(), gallery.double()
    result = {}
    dists, result["distance_s"], result["distance_cpu_s"] = timed(
        lambda: [torch.cdist(a, b).numpy() for a, b in ((q, g), (q, q), (g, g))]
    )
    matrix, result["rerank_s"], result["rerank_cpu_s"] = timed(
        lambda: re_ranking(*dists, k1=K1, k2=K2, lambda_value=LAMBDA)
    )
    return {"matrix": matrix, **result}


def _ours(query: torch.Tensor, gallery: torch.Tensor) -> dict:
    """The chunked, sparse ``k_reciprocal_rerank`` and its whole (Q, G) matrix."""
    result = {}
    distance, result["build_s"], result["build_cpu_s"] = timed(
        lambda: k_reciprocal_rerank(query, gallery, K1, K2, LAMBDA, chunk_size=RERANK_CHUNK)
    )
    matrix, result["matrix_s"], result["matrix_cpu_s"] = timed(distance.matrix)
    return {"matrix": matrix.numpy(), **result}


def measure(case: str, out: Path) -> dict[str, float]:
    """Run one case in this process; write its (Q, G) matrix to ``out`` (.npy) and return its figures."""
    data = synthetic_split(SCALE)
    result = {"threads": float(torch.get_num_threads())}
    if case != "inputs":
        result = {**result, **(_dense if case == "dense" else _ours)(data["query_features"], data["gallery_features"])}
        np.save(out, result.pop("matrix"))
    return {**result, "peak_rss_mib": peak_rss_mib()}


def _mean_ap(data: dict[str, torch.Tensor], matrix: np.ndarray | None) -> float:
    args = [data[f"{p}_{f}"] for f in ("features", "labels", "cameras") for p in ("query", "gallery")]
    distance_fn = None if matrix is None else (lambda idx: torch.from_numpy(matrix[idx.numpy()]))
    return evaluate_rank(*args, distance_fn=distance_fn).mAP


def run() -> list[Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        res = {case: run_case("bench_rerank", case, str(Path(tmp) / f"{case}.npy")) for case in CASES[1:]}
        peak = {case: run_case("bench_rerank", case, str(Path(tmp) / "memory.npy"), env=MEMORY_ENV) for case in CASES}
        dense, ours = (np.load(Path(tmp) / f"{case}.npy") for case in ("dense", "ours"))
    if dense.shape != (SCALE.num_query, SCALE.num_gallery) or dense.shape != ours.shape:
        raise RuntimeError(f"bench_rerank: dense {dense.shape} and ours {ours.shape} are not (Q, G) matrices")
    diff = np.abs(dense.astype(np.float64) - ours.astype(np.float64))
    if not diff.max() <= TOLERANCE:
        raise RuntimeError(
            f"bench_rerank: ours differs from the dense reference by up to {diff.max():.3g} "
            f"({int((diff > TOLERANCE).sum())} of {diff.size} entries over {TOLERANCE:g}); timings would compare "
            "different outputs"
        )
    data = synthetic_split(SCALE)
    map_plain, map_dense, map_ours = _mean_ap(data, None), _mean_ap(data, dense), _mean_ap(data, ours)
    d, o = res["dense"], res["ours"]
    base = peak["inputs"]["peak_rss_mib"]
    memory_note = f"over {base:.0f} MiB for imports and features; fixed mmap threshold"
    dense_s, dense_cpu = d["distance_s"] + d["rerank_s"], d["distance_cpu_s"] + d["rerank_cpu_s"]
    ours_s, ours_cpu = o["build_s"] + o["matrix_s"], o["build_cpu_s"] + o["matrix_cpu_s"]
    setup = (
        f"{SCALE.num_query} x {SCALE.num_gallery} x {DIM} (half Market-1501), k1={K1} k2={K2} lambda={LAMBDA}, "
        f"{d['threads']:.0f} threads"
    )
    return [
        Measurement("dense reference wall", dense_s, "s", f"{setup}; cdist float64 {d['distance_s']:.1f} s"),
        Measurement("dense reference cpu", dense_cpu, "cpu-s", "all threads"),
        Measurement("ours wall", ours_s, "s", f"build {o['build_s']:.1f} s + matrix {o['matrix_s']:.1f} s"),
        Measurement("ours cpu", ours_cpu, "cpu-s", "all threads"),
        Measurement("dense / ours wall", dense_s / ours_s, "x", "time ratio"),
        Measurement("dense / ours cpu", dense_cpu / ours_cpu, "x", "time ratio, all threads"),
        Measurement("dense reference peak rise", peak["dense"]["peak_rss_mib"] - base, "MiB", memory_note),
        Measurement("ours peak rise", peak["ours"]["peak_rss_mib"] - base, "MiB", memory_note),
        Measurement(
            "max |dense - ours|",
            float(diff.max()),
            "",
            f"tolerance {TOLERANCE:g}; mAP {map_plain:.4f} plain, {map_ours:.4f} re-ranked (dense {map_dense:.4f})",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in CASES:
        sys.exit(f"usage: python -m benchmarks.bench_rerank CASE OUT.npy   (CASE one of {', '.join(CASES)})")
    print(json.dumps(measure(sys.argv[1], Path(sys.argv[2]))))
