"""Stage ``attack_units@<model>``: per-query AP and rank-1 hit, and per-image SSIM, of every adversarial set the
``attack@<model>`` stage saved (``data/adversarial/<model>/<attack>-<budget>.pt``) and of the clean queries, for
the matrix's intervals over queries and the claims' paired differences. The re-scored mAP and rank-1 must equal
the attack stage's (``reports/metrics/attack/<model>.json``): a second, independent computation of each number.

Output: ``reports/matrix/units/<model>.json`` (``{cell: {ap: [...], rank1_hit: [...], ssim: [...]}}``).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from advreid.device import select_device
from advreid.io import load_torch, write_json
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams, load_trained_model, model_entry
from advreid.reid.evaluation import EvalSettings
from advreid.settings import apply_environment

TOLERANCE = 1e-5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid attack-units", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a key of reid.models in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    where = f"reid.models.{args.model}.eval"
    settings = build(EvalSettings, model_entry(reid.models, args.model).get("eval", {}), where).check(where)
    metrics_path = root / "reports" / "metrics" / "attack" / f"{args.model}.json"
    adversarial_dir = root / "data" / "adversarial" / args.model
    for path in (metrics_path, adversarial_dir):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run attack@{args.model} first")
    attack_metrics = json.loads(metrics_path.read_text())
    device = select_device(reid.device)
    model, meta = load_trained_model(root / "models" / "reid" / args.model / "model.pt", device)

    from advreid.robustness.units import adversarial_features, clean_splits, per_image_ssim, per_query_scores
    from advreid.tracking.mlflow_run import stage_run

    stage = f"attack_units@{args.model}"
    with stage_run(stage, {"model": args.model, "source": reid.source}) as run:
        splits = clean_splits(model, root / "data" / "processed" / reid.source, (meta["height"], meta["width"]),
                              device, root)  # fmt: skip
        q, g = splits["query"], splits["gallery"]
        options = {"metric": settings.metric, "ap_convention": settings.ap_convention}
        ap, hit = per_query_scores(q.features, g.features, q.labels, g.labels, q.cameras, g.cameras, **options)
        units = {"clean": {"ap": ap.tolist(), "rank1_hit": hit.tolist()}}
        for path in sorted(adversarial_dir.glob("*.pt")):
            saved = load_torch(path, "adversarial examples file")
            side = splits[saved["split"]]
            if [str(p) for p in saved["path"]] != side.paths:
                raise ValueError(f"{path}: its images are not the {saved['split']} split of {reid.source} in order")
            features = adversarial_features(model, saved["images"], device)
            ranked = (features, g.features) if saved["split"] == "query" else (q.features, features)
            ap, hit = per_query_scores(*ranked, q.labels, g.labels, q.cameras, g.cameras, **options)
            for name, values in (("mAP", ap), ("rank1", hit)):
                expected = attack_metrics["cells"][path.stem][name]
                if abs(float(values.mean()) - expected) > TOLERANCE:
                    raise ValueError(f"{path}: re-scored {name} {float(values.mean()):.6f} != {expected:.6f} in "
                                     f"{metrics_path}")  # fmt: skip
            clean = torch.stack([side.images.image(i) for i in range(len(side.paths))])
            units[path.stem] = {"ap": ap.tolist(), "rank1_hit": hit.tolist(),
                                "ssim": per_image_ssim(clean, saved["images"]).tolist()}  # fmt: skip
        out = root / "reports" / "matrix" / "units" / f"{args.model}.json"
        write_json(out, units)
        run.log_metrics({"cells": len(units)})
    print(f"{stage}: per-query AP / rank-1 hits of {len(units)} cells (mAP and rank-1 match {metrics_path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
