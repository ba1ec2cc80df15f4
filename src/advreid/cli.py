"""The ``advreid`` command: one subcommand per pipeline stage, plus audit and where.

Each subcommand is a module with ``main(argv) -> int``; modules are imported only when their subcommand
runs, so ``advreid --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from advreid.settings import apply_environment

# subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("advreid.stages.demo_data", "generate the synthetic two-domain Re-ID demo and the digits raw file"),
    "ingest": ("advreid.stages.ingest", "read one dataset from its on-disk layout into validated parquet manifests"),
    "pose": ("advreid.stages.pose", "18 OpenPose-order keypoints per image (annotations or MediaPipe), PCK, skeletons"),
    "audit": ("advreid.tracking.audit", "verify the lineage of an output path or MLflow run against what is on disk"),
    "train-classifier": ("advreid.stages.train_classifier", "train the chapter-6 targets: classifier, reconstructor"),
    "train-denoiser": ("advreid.stages.train_denoiser", "train one chapter-6 defense (denoiser [+ AE], FO/ZO)"),
    "certify": ("advreid.stages.certify", "certify one defense by randomized smoothing; reconstruction under PGD"),
    "certify-report": ("advreid.stages.certify_report", "chapter-6 tables 6.1-6.7 and certified-accuracy plots"),
    "train-reid": ("advreid.stages.train_reid", "train one Re-ID model on the source domain (CE + triplet, resumable)"),
    "eval-reid": ("advreid.stages.eval_reid", "CMC / mAP / mINP of one Re-ID model on source and target domains"),
    "attack": ("advreid.stages.attack", "attacks x budgets on one Re-ID model (--sweep: WMA lambda / kernel sweeps)"),
    "attack-report": ("advreid.stages.attack_report", "chapter-4 tables 4.1-4.6, cross-model transfer, attack figures"),
    "train-gan": ("advreid.stages.train_gan", "train one IPES-GAN run (main model or ablation), every seed"),
    "eval-gan": ("advreid.stages.eval_gan", "IPES-GAN vs direct transfer on the target; MMD, SSIM, tables"),
    # chapter 5 defense (issue 10)
    "train-defense": (
        "advreid.stages.train_defense",
        "fine-tune the vanilla Re-ID model into PGD-AT, MP-SNN or an ablation",
    ),
    "eval-defense": (
        "advreid.stages.eval_defense",
        "clean / white-box EOT / transfer CMC-mAP of a defense, masking check",
    ),
    "defense-report": (
        "advreid.stages.defense_report",
        "chapter-5 tables 5.1-5.4, 5.6, 5.7 and the rank-1 vs eps plot",
    ),
    # issue 12: the robustness matrix, the claims, the HTML report, run comparison
    "robustness-matrix": (
        "advreid.stages.robustness_matrix",
        "every model/defense x attack x budget (and ch. 6 method x sigma x radius) as MLflow cells, heatmaps",
    ),
    "attack-units": ("advreid.stages.attack_units", "per-query AP / rank-1 hits, per-image SSIM of saved attacks"),
    "claims": ("advreid.stages.claims", "judge the thesis' directional claims on the matrix: reports/claims.{json,md}"),
    "report": ("advreid.stages.report", "one self-contained HTML page: claims, tables, heatmaps, figures, lineage"),
    "compare": ("advreid.robustness.compare", "metrics of two MLflow runs / DVC experiments / git revisions"),
    "profile": ("advreid.profile", "print `dvc exp run -S` arguments applying an override file (params.thesis.yaml)"),
    "where": ("advreid.stages.where", "print where results, plots and the MLflow database are, and how to browse them"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="advreid", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help=_commands_help())
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see advreid COMMAND -h)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    ns = parser.parse_args(argv[:1])
    apply_environment()  # project-local MLflow/Prefect/DVC homes, telemetry off
    module = importlib.import_module(COMMANDS[ns.command][0])
    return int(module.main(argv[1:]) or 0)


def _commands_help() -> str:
    return "; ".join(f"{name}: {text}" for name, (_, text) in sorted(COMMANDS.items()))


if __name__ == "__main__":
    sys.exit(main())
