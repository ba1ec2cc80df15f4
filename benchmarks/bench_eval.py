"""Re-ID evaluation at Market-1501 and MSMT17 scale: time and peak memory of ``evaluate_rank`` and re-ranking.

Features are random 2048-d vectors with identity structure (an identity centre plus unit Gaussian noise), so
retrieval is neither trivial nor chance and k-reciprocal sets look like real ones; no junk or distractor images.
Each case runs once in a fresh subprocess (a run takes seconds to minutes; a best-of-n would multiply that).
Time is reported as wall seconds and as CPU seconds over all threads, the steadier figure on a shared machine.
Peak memory is the rise of ``ru_maxrss`` (the process's peak resident size, which sees torch's allocations)
over its value once the features exist. Run with ``python -m benchmarks bench_eval``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from advreid.reid.metrics import evaluate_rank
from advreid.reid.reranking import k_reciprocal_rerank

from .common import Measurement, peak_rss_mib, run_case, timed

DIM = 2048
CENTRE_SCALE = 0.3  # identity centres ~ N(0, 0.3^2 I) under unit noise: mAP well between chance and 1
EVAL_CHUNK = 256  # evaluate_rank's default
RERANK_CHUNK = 512  # k_reciprocal_rerank's default


@dataclass(frozen=True)
class Scale:
    num_query: int
    num_gallery: int
    num_ids: int
    num_cams: int


SCALES = {
    "market1501": Scale(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6),
    "msmt17": Scale(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15),
}
CASES = ("evaluate:market1501", "evaluate:msmt17", "rerank:market1501")  # run() runs these
EXTRA_CASES = ("rerank:msmt17",)  # about 10 CPU-minutes: by hand, python -m benchmarks.bench_eval rerank:msmt17


def synthetic_split(scale: Scale, seed: int = 0, chunk: int = 8192) -> dict[str, torch.Tensor]:
    """Query and gallery features, labels (1..num_ids) and cameras (1..num_cams), drawn in chunks."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(scale.num_ids, DIM, generator=gen) * CENTRE_SCALE
    out = {}
    for part, size in (("query", scale.num_query), ("gallery", scale.num_gallery)):
        labels = torch.randint(1, scale.num_ids + 1, (size,), generator=gen)
        features = torch.empty(size, DIM)
        for start in range(0, size, chunk):
            rows = labels[start : start + chunk]
            features[start : start + len(rows)] = centres[rows - 1] + torch.randn(len(rows), DIM, generator=gen)
        out[f"{part}_features"] = features
        out[f"{part}_labels"] = labels
        out[f"{part}_cameras"] = torch.randint(1, scale.num_cams + 1, (size,), generator=gen)
    return out


def measure(case: str) -> dict[str, float]:
    """Run one case in this process: wall and CPU seconds, peak memory rise (MiB) and the metrics it produced."""
    kind, name = case.split(":")
    data = synthetic_split(SCALES[name])
    args = [data[f"{p}_{f}"] for f in ("features", "labels", "cameras") for p in ("query", "gallery")]
    base = peak_rss_mib()
    result = {"features_mib": base}
    distance_fn = None
    if kind == "rerank":
        distance_fn, result["build_s"], result["build_cpu_s"] = timed(
            lambda: k_reciprocal_rerank(args[0], args[1], chunk_size=RERANK_CHUNK)
        )
        result["nonzeros"] = float(len(distance_fn.query_cols) + len(distance_fn.gallery_rows))
    ranks, result["evaluate_s"], result["evaluate_cpu_s"] = timed(
        lambda: evaluate_rank(*args, chunk_size=EVAL_CHUNK, distance_fn=distance_fn)
    )
    result.update(peak_rise_mib=peak_rss_mib() - base, mAP=ranks.mAP, rank1=ranks.rank(1))
    return result


def run() -> list[Measurement]:
    out = []
    for case in CASES:
        kind, name = case.split(":")
        scale = SCALES[name]
        res = run_case("bench_eval", case)
        setup = f"{scale.num_query} x {scale.num_gallery} x {DIM}, {torch.get_num_threads()} threads"
        if kind == "rerank":
            setup += f", k1=20 k2=6, chunk {RERANK_CHUNK}, {res['nonzeros']:.0f} non-zeros in V"
            out += [
                Measurement(f"{name} rerank build wall", res["build_s"], "s", setup),
                Measurement(f"{name} rerank build cpu", res["build_cpu_s"], "cpu-s", "all threads"),
            ]
        label = f"{name} {'reranked ' if kind == 'rerank' else ''}evaluate_rank"
        out += [
            Measurement(f"{label} wall", res["evaluate_s"], "s", f"{setup}, chunk {EVAL_CHUNK}"),
            Measurement(f"{label} cpu", res["evaluate_cpu_s"], "cpu-s", "all threads"),
            Measurement(
                f"{label} peak rise",
                res["peak_rise_mib"],
                "MiB",
                f"over {res['features_mib']:.0f} MiB with features; mAP {res['mAP']:.3f}, rank-1 {res['rank1']:.3f}",
            ),
        ]
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES + EXTRA_CASES:
        sys.exit(f"usage: python -m benchmarks.bench_eval CASE   (one of {', '.join(CASES + EXTRA_CASES)})")
    print(json.dumps(measure(sys.argv[1])))
