"""Stage ``eval_reid@<model>``: retrieval by a trained Re-ID model on the source domain (source->source) and on every
target domain (direct transfer, source->target).

Per test domain: query and gallery features (optionally averaged with their mirror images), Euclidean or cosine
distance, CMC (rank-1/5/10 and the curve), mAP and mINP under the standard protocol, each block recording the AP
convention it used; optionally CUHK03's single-shot CMC; with ``rerank`` the same metrics again after k-reciprocal
re-ranking (k1, k2, lambda; the starred rows of thesis Table 5.5) under the key ``rerank``.

Outputs: ``reports/metrics/reid/eval_<model>.json``; ``reports/reid/cmc/<model>/<target>.csv`` (columns rank,
source, target, and source_rerank, target_rerank with re-ranking; one file per target so that ``dvc plots show``
draws source->source against source->target in one chart); ``reports/reid/ranked_<model>.png``, the top-10 of a
few queries per domain framed green (right identity) or red (wrong), as in thesis Figs. 4.2 and 5.2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from advreid.device import select_device, set_threads
from advreid.io import atomic_path, write_json, write_text
from advreid.params import ParamsError, build, load_params
from advreid.reid.checkpoint import ReIDParams, load_trained_model, model_entry
from advreid.reid.evaluation import EvalSettings, domain_metrics, evaluate_domain
from advreid.reid.plots import cmc_csv, ranked_list
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid eval-reid", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a key of reid.models in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    where = f"reid.models.{args.model}.eval"
    settings = build(EvalSettings, model_entry(params.models, args.model).get("eval", {}), where).check(where)
    set_threads(params.threads, "reid.threads")
    device = select_device(params.device)
    model, meta = load_trained_model(root / "models" / "reid" / args.model / "model.pt", device)
    if meta["source"] != params.source:
        raise ParamsError(
            f"reid.source is '{params.source}' but model '{args.model}' was trained on '{meta['source']}'"
        )

    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    stage = f"eval_reid@{args.model}"
    processed = root / "data" / "processed"
    domains = [params.source, *params.targets]
    manifests = {f"{d}/{s}": processed / d / f"{s}.parquet" for d in domains for s in ("query", "gallery")}
    logged = {"model": args.model, "source": params.source, "targets": list(params.targets), "eval": asdict(settings)}
    with stage_run(stage, logged, manifests=manifests) as run:
        size = (meta["height"], meta["width"])
        evaluations = [evaluate_domain(model, processed / d, settings, size, device=device, root=root) for d in domains]
        metrics = {
            ev.name: domain_metrics(ev, settings, "source" if i == 0 else "target") for i, ev in enumerate(evaluations)
        }
        metrics_path = root / "reports" / "metrics" / "reid" / f"eval_{args.model}.json"
        write_json(metrics_path, metrics)
        cmc_dir = root / "reports" / "reid" / "cmc" / args.model
        with atomic_path(cmc_dir, is_dir=True) as tmp:
            for target in evaluations[1:]:
                write_text(tmp / f"{target.name}.csv", cmc_csv(evaluations[0], target))
        figure = ranked_list(
            evaluations,
            settings,
            root / "reports" / "reid" / f"ranked_{args.model}.png",
            f"{args.model} trained on {params.source}: top-{settings.top_k} (green: same identity, red: other)",
        )
        run.log_metrics(numeric_leaves(metrics))
        run.log_artifact(metrics_path, "reid")
        run.log_artifacts(cmc_dir, f"reid/cmc_{args.model}")
        run.log_artifact(figure, "reid")
    for name, block in metrics.items():
        line = f"{stage}: {params.source}->{name}: rank-1 {block['rank1']:.3f}, mAP {block['mAP']:.3f}"
        if "rerank" in block:
            line += f" (re-ranked: rank-1 {block['rerank']['rank1']:.3f}, mAP {block['rerank']['mAP']:.3f})"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
