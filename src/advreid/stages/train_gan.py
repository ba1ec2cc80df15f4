"""Stage ``train_gan@<run>``: IPES-GAN (thesis ch. 3) from labelled ``gan.source`` to unlabelled ``gan.target``.

One named run of ``gan.runs`` (the main model ``ipes_gan`` or an ablation: overrides of ``gan.settings``), trained
for every seed of ``gan.seeds`` in this process. The frozen teacher E_std is train_reid's
``models/reid/<gan.teacher>/model.pt``; only images, cameras and pose keypoints of the target reach the trainer.
Checkpoints every ``checkpoint_every`` iterations in ``models/gan/<run>/checkpoints`` (DVC ``persist``): a killed
run resumes there. Outputs: ``models/gan/<run>/seeds/seed<k>/{generator,discriminator,model}.pt`` (``model.pt`` =
the adapted E_id, train_reid's format), ``reports/gan/train/<run>.csv``, ``reports/metrics/gan/train_<run>.json``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from advreid.device import make_deterministic, select_device
from advreid.gan.experiment import GANParams, train_run
from advreid.io import write_json
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams, model_entry
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid train-gan", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a key of gan.runs in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(GANParams, load_params("gan", root / "params.yaml"), "gan").check()
    settings = params.run_settings(args.run)
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    arch = model_entry(reid.models, params.teacher)["arch"]
    make_deterministic(params.threads, "gan.threads")
    device = select_device(params.device)
    stage = f"train_gan@{args.run}"
    from advreid.tracking.mlflow_run import stage_run

    logged = {
        "run": args.run,
        "source": params.source,
        "target": params.target,
        "teacher": params.teacher,
        "seeds": list(params.seeds),
        "settings": asdict(settings),
        "device": str(device),
    }
    processed = root / "data" / "processed"
    manifests = {f"{d}/train": processed / d / "train.parquet" for d in (params.source, params.target)}
    with stage_run(stage, logged, manifests=manifests) as run:
        log = lambda seed, it, record: run.log_metrics({f"seed{seed}.{k}": v for k, v in record.items()}, step=it)  # noqa: E731
        metrics, progress = train_run(params, args.run, arch, root, device, on_log=log)
        path = root / "reports" / "metrics" / "gan" / f"train_{args.run}.json"
        write_json(path, metrics)
        for seed, ran in progress.items():  # wall-clock numbers: MLflow only, never a DVC output
            run.set_tags({f"advreid.seed{seed}.resumed_from_iteration": ran["resumed_from"]})
            if ran["iterations_per_second"] is not None:
                run.log_metrics({f"seed{seed}.iterations_per_second": ran["iterations_per_second"]})
        run.log_artifact(root / "reports" / "gan" / "train" / f"{args.run}.csv", "gan")
        run.log_artifact(path, "gan")
    for seed, block in metrics["seeds"].items():
        rate, resumed_from = progress[int(seed)]["iterations_per_second"], progress[int(seed)]["resumed_from"]
        print(
            f"{stage}: seed {seed}: {settings.max_iter} iterations (resumed after {resumed_from}), "
            f"L_Cyc {block['cyc']:.3f}, L_D {block['loss_d']:.3f}, "
            + (f"{rate:.2f} it/s on {device}" if rate else "nothing left to train")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
