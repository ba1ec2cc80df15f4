"""The ``advreid`` command: one subcommand per pipeline stage, plus audit and where.

Each subcommand is a module with ``main(argv) -> int``; modules are imported only when their subcommand
runs, so ``advreid --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from advreid.errors import EXIT_BAD_INPUT, EXPECTED_ERRORS
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
    "certify-seed": (
        "advreid.stages.certify_seed",
        "one more seed of the chapter-6 claim cells: ZO defenses trained and certified",
    ),
    "certify-report": ("advreid.stages.certify_report", "chapter-6 tables 6.1-6.7 and certified-accuracy plots"),
    "train-reid": ("advreid.stages.train_reid", "train one Re-ID model on the source domain (CE + triplet, resumable)"),
    "eval-reid": ("advreid.stages.eval_reid", "CMC / mAP / mINP of one Re-ID model on source and target domains"),
    "attack": ("advreid.stages.attack", "attacks x budgets on one Re-ID model (--sweep: WMA lambda / kernel sweeps)"),
    "attack-seed": ("advreid.stages.attack_seed", "one more training seed of the chapter-4 claim cells (PGD, WMA)"),
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
    "defense-seed": (
        "advreid.stages.defense_seed",
        "one more training seed of the chapter-5 claim cells: vanilla and defenses trained and scored",
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
    "check": ("advreid.preflight", "pre-flight: build and check every stage's params, touching nothing (exit 2)"),
    "where": ("advreid.stages.where", "print where results, plots and the MLflow database are, and how to browse them"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ADVREID_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(
        prog="advreid",
        description=__doc__.splitlines()[0],
        epilog=_commands_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see advreid COMMAND -h)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (or ADVREID_DEBUG=1)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else EXIT_BAD_INPUT
    ns = parser.parse_args(argv[:1])
    apply_environment()  # project-local MLflow/Prefect/DVC homes, telemetry off
    module = importlib.import_module(COMMANDS[ns.command][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except EXPECTED_ERRORS as err:
        if debug:
            raise
        # the message names the file or key and the problem; a traceback would only bury it
        print(f"advreid {ns.command}: error: {_message(err)}", file=sys.stderr)
        print("(fix the file or params value named above and run again; --debug shows the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT


def _message(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in str(err):
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def _commands_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    return "commands:\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
