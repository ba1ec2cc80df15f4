"""Stage ``train_reid@<model>``: supervised Re-ID training on the source domain, L_V = L_CE + L_Tri (thesis Eq. 5.1).

The trained model is the chapter-5 baseline, the teacher E_std of IPES-GAN's KL loss and the target of the attack
stage. Cross-entropy with label smoothing plus batch-hard triplet loss on P x K batches, linear warm-up then step or
cosine decay, AMP on CUDA, one checkpoint per epoch in ``models/reid/<model>/checkpoints/last.pt``. That directory
is a DVC out with ``persist: true``: a run interrupted mid-training resumes from it on the next ``dvc repro``; a
checkpoint written with other settings, or by a run that had finished (DVC reruns a finished stage only because its
code, data or params changed), is discarded and training starts over. ImageNet weights are read only from the local
file ``pretrained_path``; without one the backbone starts from scratch (and says so). The training itself is
:func:`advreid.reid.training.train_reid`, after :func:`advreid.device.make_deterministic` with ``reid.threads``.

Data-parallel training on N GPUs (NCCL) or N CPU processes (Gloo) runs the same stage under torchrun; each process
draws its own P x K batches (the effective batch is N x P x K) and rank 0 alone writes outputs and logs to MLflow::

    torchrun --standalone --nproc_per_node N -m advreid.stages.train_reid small_cnn

Outputs: ``models/reid/<model>/model.pt`` (final weights, the one checkpoint format, with ``meta``: arch,
num_classes, feature_dim, height, width, source), ``reports/reid/train/<model>.csv`` (epoch, loss, loss_ce,
loss_triplet, acc, lr), ``reports/metrics/reid/train_<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from functools import partial

from advreid.device import cleanup_distributed, init_distributed, make_deterministic
from advreid.params import build, load_params
from advreid.reid.checkpoint import ReIDParams, model_entry
from advreid.reid.training import TrainSettings, train_reid, write_outputs
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid train-reid", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a key of reid.models in params.yaml")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    entry = model_entry(params.models, args.model)
    where = f"reid.models.{args.model}.train"
    settings = build(TrainSettings, entry.get("train", {}), where).check(where)
    make_deterministic(params.threads, "reid.threads")
    stage = f"train_reid@{args.model}"
    out_dir = root / "models" / "reid" / args.model
    source_dir = root / "data" / "processed" / params.source
    rank, world_size, device = init_distributed(params.device)
    fit = partial(train_reid, entry["arch"], settings, source_dir, out_dir / "checkpoints", device=device, root=root)
    try:
        if rank != 0:  # DDP: rank 0 alone writes outputs and talks to MLflow
            fit()
            return 0
        from advreid.tracking.mlflow_run import stage_run

        logged = {
            "model": args.model,
            "arch": entry["arch"],
            "source": params.source,
            "world_size": world_size,
            "device": str(device),
            "train": asdict(settings),
        }
        with stage_run(stage, logged, manifests={f"{params.source}/train": source_dir / "train.parquet"}) as run:
            if settings.pretrained_path is None:
                print(f"{stage}: no pretrained_path, the {entry['arch']} backbone is trained from scratch")
            trained = fit(on_epoch_end=lambda epoch, record: run.log_metrics(record, step=epoch + 1))
            for record in trained.history[: trained.resumed_from]:  # epochs of the interrupted run
                run.log_metrics(record, step=int(record["epoch"]))
            run.set_tags({"advreid.resumed_from_epoch": trained.resumed_from})
            metrics = write_outputs(
                trained,
                out_dir / "model.pt",
                root / "reports" / "reid" / "train" / f"{args.model}.csv",
                root / "reports" / "metrics" / "reid" / f"train_{args.model}.json",
            )
            run.log_metrics({f"final.{k}": float(v) for k, v in metrics.items()})
            run.log_artifact(root / "reports" / "reid" / "train" / f"{args.model}.csv", "reid")
            run.log_artifact(out_dir / "model.pt", "model")
    finally:
        cleanup_distributed()
    rate = trained.images_per_second or 0.0
    print(
        f"{stage}: {metrics['epochs']} epochs (resumed after {trained.resumed_from}), loss "
        f"{metrics['first_epoch_loss']:.3f} -> {metrics['loss']:.3f}, train acc {metrics['acc']:.3f}, "
        f"{rate:.0f} images/s on {device} x {world_size} -> {out_dir / 'model.pt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
