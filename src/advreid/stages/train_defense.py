"""Stage ``train_defense@<defense>``: fine-tune the vanilla model of ``train_reid@<defense.model>`` into a chapter-5
defense (thesis 5.2): PGD-AT, MP-SNN (Algorithm 3 with Algorithm-2 updates) or an ablation of Tables 5.6-5.7.

``defense.train`` holds the settings every defense shares (:class:`advreid.defense.training.DefenseSettings`);
``defense.variants.<defense>`` the keys that make it that defense. One checkpoint per epoch in
``models/defense/<defense>/checkpoints/last.pt`` (a DVC ``persist`` out): an interrupted run resumes from it.

Outputs: ``models/defense/<defense>/model.pt`` (vanilla meta + defense settings + state dict, read back by
:func:`advreid.defense.training.load_defended_model`), ``reports/defense/train/<defense>.csv`` (epoch, loss),
``reports/metrics/defense/train_<defense>.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import asdict

import torch

from advreid.defense.noise import IsotropicNoise
from advreid.defense.training import DefenseParams, save_defended_model, train_defense
from advreid.device import make_deterministic, select_device
from advreid.io import write_json, write_text
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams, model_entry
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid train-defense", description=__doc__.splitlines()[0])
    parser.add_argument("defense", help="a name in defense.defenses of params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(DefenseParams, load_params("defense", root / "params.yaml"), "defense")
    settings = params.settings(args.defense)
    entry = model_entry(reid.models, params.model)
    make_deterministic(reid.threads, "reid.threads")
    device = select_device(reid.device)
    stage = f"train_defense@{args.defense}"
    out = root / "models" / "defense" / args.defense
    source_dir = root / "data" / "processed" / reid.source
    vanilla_path = root / "models" / "reid" / params.model / "model.pt"

    from advreid.tracking.mlflow_run import stage_run

    logged = {"defense": args.defense, "model": params.model, "source": reid.source, "device": str(device),
              "settings": asdict(settings)}  # fmt: skip
    start = time.perf_counter()
    with stage_run(stage, logged, manifests={f"{reid.source}/train": source_dir / "train.parquet"}) as run:
        defended = train_defense(
            args.defense, settings, vanilla_path, entry["arch"], source_dir, out / "checkpoints", device=device,
            root=root, on_epoch_end=lambda epoch, record: run.log_metrics(record, step=epoch + 1),
        )  # fmt: skip
        run.set_tags({"advreid.resumed_from_epoch": defended.resumed_from})
        save_defended_model(out / "model.pt", defended)
        curve = [{"epoch": int(r["epoch"]), "loss": r["loss"]} for r in defended.history]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["epoch", "loss"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(curve)
        write_text(root / "reports" / "defense" / "train" / f"{args.defense}.csv", buffer.getvalue())
        sigmas = [m.sigma.detach() for m in defended.model.modules() if isinstance(m, IsotropicNoise)]
        metrics = {
            "epochs": len(curve),
            "first_epoch_loss": curve[0]["loss"],
            "loss": curve[-1]["loss"],
            "sigma_mean": float(torch.cat([s.flatten() for s in sigmas]).mean()) if sigmas else 0.0,
            "phi_a_norm": float(defended.model.anisotropic.phi_a.detach().norm())
            if defended.model.anisotropic
            else 0.0,
            "noise_parameters": sum(p.numel() for m in defended.model.noise_modules() for p in m.parameters()),
        }
        write_json(root / "reports" / "metrics" / "defense" / f"train_{args.defense}.json", metrics)
        run.log_metrics({f"final.{k}": float(v) for k, v in metrics.items()})
        run.log_artifact(out / "model.pt", "model")
    print(
        f"{stage}: {metrics['epochs']} epochs (resumed after {defended.resumed_from}), loss "
        f"{metrics['first_epoch_loss']:.3f} -> {metrics['loss']:.3f}, mean sigma {metrics['sigma_mean']:.3f}, "
        f"{time.perf_counter() - start:.1f} s -> {out / 'model.pt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
