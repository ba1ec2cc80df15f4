"""``advreid check``: build and check every stage's settings from params.yaml before anything runs.

``dvc repro`` deletes a stage's previous outputs (git-tracked ``cache: false`` reports included, which
``dvc checkout`` cannot restore) before the stage reads its params; a typo in params.yaml then destroys
good results. The pre-flight builds, for every stage command of ``dvc.yaml`` (resolved by DVC, so every
``foreach`` entry), the same settings dataclasses the stage builds, with the same checks, and touches
nothing: no output, no input, no MLflow run. The Prefect flow and ``make run`` call it first.

Each checker mirrors the params part of its stage's ``main()``; a stage added without a checker is
reported, so the pre-flight cannot silently skip it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advreid.params import ParamsError, build, load_params
from advreid.settings import apply_environment

# advreid.errors.EXIT_BAD_INPUT: bad input or params.
EXIT_BAD_INPUT = 2


def _reid(params: Path) -> Any:
    from advreid.reid.checkpoint import ReIDParams

    return build(ReIDParams, load_params("reid", params), "reid").check()


def _demo_data(params: Path, args: list[str]) -> None:
    from advreid.data.synthetic import DemoSpec

    build(DemoSpec, {**load_params("demo", params), "seed": load_params("seed", params)}, "demo")


def _ingest(params: Path, args: list[str]) -> None:
    from advreid.stages.ingest import IngestParams

    datasets = load_params("ingest.datasets", params)
    if args[0] not in datasets:
        raise ParamsError(f"params.yaml: ingest.datasets has no '{args[0]}'; known: {sorted(datasets)}")
    build(IngestParams, datasets[args[0]], f"ingest.datasets.{args[0]}")


def _pose(params: Path, args: list[str]) -> None:
    from advreid.stages.pose import PoseParams

    pose = build(PoseParams, load_params("pose", params), "pose")
    if args[0] not in pose.datasets:
        raise ParamsError(f"params.yaml: pose.datasets has no '{args[0]}'; known: {sorted(pose.datasets)}")
    pose.estimator_settings()


def _train_reid(params: Path, args: list[str]) -> None:
    from advreid.reid.checkpoint import model_entry
    from advreid.stages.train_reid import TrainSettings

    where = f"reid.models.{args[0]}.train"
    build(TrainSettings, model_entry(_reid(params).models, args[0]).get("train", {}), where).check(where)


def _eval_settings(params: Path, model: str) -> Any:
    from advreid.reid.checkpoint import model_entry
    from advreid.reid.evaluation import EvalSettings

    where = f"reid.models.{model}.eval"
    return build(EvalSettings, model_entry(_reid(params).models, model).get("eval", {}), where).check(where)


def _eval_reid(params: Path, args: list[str]) -> None:
    _eval_settings(params, args[0])


def _attack_params(params: Path) -> Any:
    from advreid.stages.attack import AttackParams

    return build(AttackParams, load_params("attack", params), "attack").check()


def _attack(params: Path, args: list[str]) -> None:
    from advreid.stages.attack import SweepSettings

    attack = _attack_params(params)
    _eval_settings(params, args[0])
    if "--sweep" in args:
        sweep = build(SweepSettings, attack.sweep, "attack.sweep").check()
        if sweep.model != args[0]:
            raise ParamsError(f"attack.sweep.model is '{sweep.model}', not '{args[0]}'")


def _attack_seed(params: Path, args: list[str]) -> None:
    from advreid.attacks.replicates import replicate_plan

    replicate_plan(_reid(params), _attack_params(params), int(args[0]))


def _attack_report(params: Path, args: list[str]) -> None:
    from advreid.stages.attack_report import ReportSettings

    _reid(params)
    build(ReportSettings, _attack_params(params).report, "attack.report").check()


def _train_classifier(params: Path, args: list[str]) -> None:
    from advreid.certify.params import ClassifierParams, ReconstructorParams

    classifier = build(ClassifierParams, load_params("train_classifier", params), "train_classifier")
    build(ReconstructorParams, classifier.reconstruction, "train_classifier.reconstruction")
    load_params("seed", params)


def _train_denoiser(params: Path, args: list[str]) -> None:
    from advreid.certify.params import DenoiserParams

    where = "train_denoiser.settings"
    if not build(DenoiserParams, load_params(where, params), where).sigmas:
        raise ParamsError("train_denoiser.settings.sigmas: needs at least one noise level")
    for key in ("train_classifier.dataset", "train_classifier.reconstruction.dataset", "seed"):
        load_params(key, params)


def _certify(params: Path, args: list[str]) -> None:
    from advreid.certify.params import CertifyParams, ReconstructionEvalParams

    certify = build(CertifyParams, load_params("certify.settings", params), "certify.settings")
    if not certify.sigmas or not certify.radii:
        raise ParamsError("certify.settings: sigmas and radii need at least one value each")
    build(ReconstructionEvalParams, certify.reconstruction, "certify.settings.reconstruction")
    for key in ("train_classifier.dataset", "train_classifier.reconstruction.dataset", "seed"):
        load_params(key, params)


def _certify_seed(params: Path, args: list[str]) -> None:
    from advreid.certify.params import CertifyParams, DenoiserParams
    from advreid.certify.replicates import replicate_plan

    training = build(DenoiserParams, load_params("train_denoiser.settings", params), "train_denoiser.settings")
    certify = build(CertifyParams, load_params("certify.settings", params), "certify.settings")
    methods = tuple(load_params("train_denoiser.methods", params))
    replicates = load_params("certify.replicates", params)
    replicate_plan(replicates, training.check("train_denoiser.settings"), certify.check("certify.settings"), methods,
                   load_params("seed", params), int(args[0]))  # fmt: skip


def _certify_report(params: Path, args: list[str]) -> None:
    list(load_params("train_denoiser.methods", params))
    key = "train_denoiser.settings.q"
    try:
        int(load_params(key, params))
    except (TypeError, ValueError) as err:
        raise ParamsError(f"params.yaml: {key} must be an integer: {err}") from err
    load_params("train_classifier.dataset", params)


def _gan(params: Path) -> Any:
    from advreid.gan.experiment import GANParams

    return build(GANParams, load_params("gan", params), "gan").check()


def _train_gan(params: Path, args: list[str]) -> None:
    from advreid.reid.checkpoint import model_entry

    gan = _gan(params)
    gan.run_settings(args[0])
    model_entry(_reid(params).models, gan.teacher)


def _eval_gan(params: Path, args: list[str]) -> None:
    _gan(params)


def _defense(params: Path) -> Any:
    from advreid.defense.training import DefenseParams

    return build(DefenseParams, load_params("defense", params), "defense")


def _train_defense(params: Path, args: list[str]) -> None:
    from advreid.reid.checkpoint import model_entry

    defense = _defense(params)
    defense.settings(args[0])
    model_entry(_reid(params).models, defense.model)


def _eval_defense(params: Path, args: list[str]) -> None:
    from advreid.reid.checkpoint import model_entry

    defense = _defense(params)
    model_entry(_reid(params).models, defense.model)
    defense.protocol()


def _defense_seed(params: Path, args: list[str]) -> None:
    from advreid.defense.replicates import replicate_plan

    replicate_plan(_reid(params), _defense(params), int(args[0]))


def _defense_report(params: Path, args: list[str]) -> None:
    defense = _defense(params)
    budget = defense.report.get("budget", "eps8")
    if budget not in defense.eval.get("budgets", {}):
        raise ParamsError(f"defense.report.budget: {budget!r} is not in defense.eval.budgets")


# subcommand of `advreid` -> checker(params.yaml path, the command's arguments)
def _attack_units(params: Path, args: list[str]) -> None:
    _eval_settings(params, args[0])


def _robustness(params: Path, args: list[str]) -> None:
    from advreid.robustness.settings import RobustnessParams

    build(RobustnessParams, load_params("robustness", params), "robustness").check()


CHECKS: dict[str, Callable[[Path, list[str]], None]] = {
    "demo-data": _demo_data,
    "ingest": _ingest,
    "pose": _pose,
    "train-reid": _train_reid,
    "eval-reid": _eval_reid,
    "attack": _attack,
    "attack-seed": _attack_seed,
    "attack-report": _attack_report,
    "train-classifier": _train_classifier,
    "train-denoiser": _train_denoiser,
    "certify": _certify,
    "certify-seed": _certify_seed,
    "certify-report": _certify_report,
    "train-gan": _train_gan,
    "eval-gan": _eval_gan,
    "train-defense": _train_defense,
    "eval-defense": _eval_defense,
    "defense-seed": _defense_seed,
    "defense-report": _defense_report,
    "attack-units": _attack_units,
    "robustness-matrix": _robustness,
    "claims": _robustness,
    "report": _robustness,
}


def stage_commands(root: Path) -> dict[str, list[str]]:
    """Every stage of ``<root>/dvc.yaml`` (``foreach`` entries resolved by DVC) -> its command lines."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = [stage for stage in repo.index.stages if stage.cmd]
        return {
            stage.name: list(stage.cmd) if isinstance(stage.cmd, list) else str(stage.cmd).splitlines()
            for stage in stages
        }


def check_project(root: Path) -> dict[str, str]:
    """Check every ``advreid`` stage command's params; returns stage -> error message for those that fail
    (empty when all pass). Expected errors (ParamsError, ValueError, TypeError, KeyError, a missing file)
    become messages; anything else is a bug and propagates."""
    params = root / "params.yaml"
    errors: dict[str, str] = {}
    for stage, commands in stage_commands(root).items():
        for command in commands:
            words = shlex.split(command)
            if words[:1] != ["advreid"] or len(words) < 2:
                continue
            checker = CHECKS.get(words[1])
            if checker is None:
                errors[stage] = f"`{command}`: advreid check has no checker for '{words[1]}' (add one to CHECKS)"
                continue
            try:
                checker(params, words[2:])
            except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
                errors[stage] = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid check", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = apply_environment()
    errors = check_project(root)
    for stage, message in errors.items():
        print(f"advreid check: {stage}: {message}", file=sys.stderr)
    if errors:
        print(f"advreid check: {len(errors)} stage(s) refused {root / 'params.yaml'}; nothing was run", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"advreid check: the params of every stage in {root / 'dvc.yaml'} are valid")
    return 0
