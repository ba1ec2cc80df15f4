"""The chapter-6 stages end to end on tiny settings: train_classifier -> train_denoiser -> certify -> certify_report."""

from __future__ import annotations

import csv
import json
import shutil

import pandas as pd
import pytest
import torch
import yaml

from advreid.certify.certification import evenly_spaced
from advreid.data.formats.classification import sklearn_digits_file
from advreid.data.registry import read_dataset
from advreid.stages import certify, certify_report, train_classifier, train_denoiser
from advreid.stages.ingest import write_dataset

pytestmark = pytest.mark.slow  # about 20 s: every chapter-6 stage runs once

METHODS = ["fo_ds", "zo_ae_ruds"]
PARAMS = {
    "seed": 0,
    "train_classifier": {
        "dataset": "digits",
        "arch": "resnet_digits",
        "arch_options": {"width": 4},
        "epochs": 2,
        "batch_size": 128,
        "lr": 0.05,
        "device": "cpu",
        "reconstruction": {"dataset": "digits", "measurements": 32, "hidden": 32, "epochs": 2, "batch_size": 128},
    },
    "train_denoiser": {
        "methods": METHODS,
        "settings": {
            "sigmas": [0.25, 0.5],
            "q": 4,
            "epochs": 1,
            "batch_size": 256,
            "lr": 0.001,
            "pretrain_epochs": 1,
            "dncnn": {"depth": 3, "width": 4},
            "rdunet": {"base_width": 2},
            "ae_width": 4,
            "validation_points": 40,
            "reconstruction_epochs": 1,
            "device": "cpu",
        },
    },
    "certify": {
        "settings": {
            "sigmas": [0.25, 0.5],
            "n0": 10,
            "n": 40,
            "batch_size": 50,
            "num_points": 6,
            "reconstruction": {"epsilons": [0, 1], "steps": 3, "noise_samples": 2, "num_points": 8},
            "device": "cpu",
        }
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root with the digits manifests and the chapter-6 params, run through every stage once."""
    root = tmp_path_factory.mktemp("certify-project")
    (root / "data" / "raw" / "digits").mkdir(parents=True)
    shutil.copy(sklearn_digits_file(), root / "data" / "raw" / "digits")
    raw = read_dataset("digits", root / "data" / "raw" / "digits", name="digits")
    write_dataset(raw, root / "data" / "processed" / "digits", "data/raw/digits")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVREID_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        assert train_classifier.main([]) == 0
        for method in METHODS:
            assert train_denoiser.main([method]) == 0
        for method in ["baseline", *METHODS]:
            assert certify.main([method]) == 0
        assert certify_report.main([]) == 0
        yield root, mp


def test_every_stage_writes_its_outputs(project) -> None:
    root, _ = project
    assert (root / "models" / "classifier" / "digits.pt").is_file()
    assert (root / "models" / "reconstructor" / "digits.pt").is_file()
    for method in METHODS:
        names = sorted(p.name for p in (root / "models" / "denoisers" / method).iterdir())
        assert names == ["reconstruction.pt", "sigma_0.25.pt", "sigma_0.5.pt"]
    for path in ("certified_accuracy.png", "training_curves.png", "tables.md"):
        assert (root / "reports" / "certify" / path).stat().st_size > 0
    metrics = json.loads((root / "reports" / "metrics" / "train_classifier.json").read_text())
    assert 0.0 <= metrics["classifier"]["test_accuracy"] <= 1.0


def test_certification_results_are_consistent(project) -> None:
    root, _ = project
    for method in ["baseline", *METHODS]:
        result = json.loads((root / "reports" / "metrics" / "certify" / f"{method}.json").read_text())
        assert result["settings"]["n"] == 40 and result["settings"]["points"] == 6
        for sigma, row in result["sigma"].items():
            values = [row["sca"], row["rca_0.25"], row["rca_0.5"], row["rca_0.75"]]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert values == sorted(values, reverse=True)  # certified accuracy cannot grow with the radius
            assert row["queries_per_point"] == 10 + 40  # n0 + n black-box queries per point
            # no radius beyond sigma * Phi^-1(alpha^(1/n)) can be certified with n samples: Phi^-1(0.8414) = 1.0002
            assert row["max_certifiable_radius"] == pytest.approx(
                float(sigma) * 1.0002, rel=1e-3
            )  # 0.001^(1/40) = 0.8414
        with open(root / "reports" / "certify" / "curves" / f"{method}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert float(rows[0]["sigma_0.25"]) == pytest.approx(result["sigma"]["0.25"]["sca"])
        assert set(result["reconstruction"]) == {"0", "1"}


def test_report_holds_the_tables_and_says_n_is_smaller(project) -> None:
    root, _ = project
    tables = json.loads((root / "reports" / "metrics" / "certify_report.json").read_text())
    assert set(tables["table_6_1"]["rows"]) == {"baseline", *METHODS}
    assert tables["table_6_1"]["rows"]["fo_ds"]["type"] == "W"
    assert tables["table_6_1"]["rows"]["zo_ae_ruds"]["type"] == "B"
    assert set(tables["table_6_2"]["rows"]) == {"zo_ae_ruds"} and tables["table_6_2"]["q"] == 4
    assert set(tables["table_6_3"]["rows"]) == {"vanilla", *METHODS}
    assert tables["table_6_4"]["status"].startswith("not run")
    assert set(tables["table_6_6_7"]["sigmas"]) == {"0.5"}
    assert tables["settings"]["demo"] is True
    text = (root / "reports" / "certify" / "tables.md").read_text()
    assert "n = 40 noise samples per point instead of the thesis's n = 10000" in text
    assert "Clopper-Pearson" in text and "McNemar" in text and "1 - cos" in text


def test_per_point_results_agree_with_the_tables_and_feed_the_paired_tests(project) -> None:
    root, _ = project
    tables = json.loads((root / "reports" / "metrics" / "certify_report.json").read_text())
    stats = tables["statistics"]
    tests = len(pd.read_parquet(root / "data" / "processed" / "digits" / "test.parquet"))
    for method in ["baseline", *METHODS]:
        result = json.loads((root / "reports" / "metrics" / "certify" / f"{method}.json").read_text())
        for sigma in ("0.25", "0.5"):
            with open(root / "reports" / "certify" / "points" / f"{method}_sigma_{sigma}.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            assert [int(r["index"]) for r in rows] == evenly_spaced(tests, 6).tolist()
            correct = [int(r["correct"]) for r in rows]
            certified = [c and float(r["radius"]) >= 0.25 for c, r in zip(correct, rows, strict=True)]
            # a second computation of the certified accuracies, from the per-point file
            assert sum(correct) / 6 == pytest.approx(result["sigma"][sigma]["sca"])
            assert sum(certified) / 6 == pytest.approx(result["sigma"][sigma]["rca_0.25"])
            interval = stats["certified_accuracy"][method][sigma]["sca"]
            assert interval["estimate"] == pytest.approx(sum(correct) / 6)
            assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert stats["claims"] == []  # neither claimed pair is among the tiny project's methods
    versus = stats["versus_baseline"]["zo_ae_ruds"]["0.25"]["sca"]
    assert 0.0 <= versus["mcnemar"]["pvalue"] <= 1.0 and versus["verdict"] in ("reproduced", "not reproduced",
                                                                                  "inconclusive")  # fmt: skip


def test_training_curves_and_black_box_labels(project) -> None:
    root, _ = project
    with open(root / "reports" / "certify" / "training" / "zo_ae_ruds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert float(rows[0]["sigma_0.25_queries_per_sample"]) == 2 * 4 + 1  # CGE over a latent of q = 4
    assert float(rows[0]["reconstruction_queries_per_sample"]) == 2 * 4 + 1


def _checkpoints(folder) -> dict:
    return {p.name: torch.load(p, map_location="cpu", weights_only=True) for p in sorted(folder.iterdir())}


def test_rerun_gives_identical_checkpoints_and_results(project) -> None:
    root, _ = project
    folder = root / "models" / "denoisers" / "zo_ae_ruds"
    before = _checkpoints(folder)
    result = (root / "reports" / "metrics" / "certify" / "zo_ae_ruds.json").read_text()
    assert train_denoiser.main(["zo_ae_ruds"]) == 0
    assert certify.main(["zo_ae_ruds"]) == 0
    after = _checkpoints(folder)
    assert sorted(before) == sorted(after)
    for name, checkpoint in before.items():
        assert checkpoint["history"] == after[name]["history"] and checkpoint["meta"] == after[name]["meta"]
        weights = checkpoint["model"]
        assert all(torch.equal(weights[key], after[name]["model"][key]) for key in weights), name
    assert (root / "reports" / "metrics" / "certify" / "zo_ae_ruds.json").read_text() == result


def test_bad_method_and_params_are_reported(project) -> None:
    root, mp = project
    with pytest.raises(KeyError, match="valid names"):
        train_denoiser.main(["zo_unknown"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["certify"]["settings"]["sigmas"] = [0.3]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        with pytest.raises(FileNotFoundError, match="sigma_0.3.pt not found"):
            certify.main(["fo_ds"])
    finally:
        (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    assert torch.load(root / "models" / "classifier" / "digits.pt", weights_only=True)["meta"]["num_classes"] == 10


# --- certify_seed@<k>: chapter 6's claim cells over seeds -------------------------------------------------------------


def test_a_replicate_at_the_main_seed_repeats_train_denoiser_and_certify(project, tmp_path) -> None:
    """At the main stages' seed and sigma index 1 (training seed seed + 1), the replicate's defenses are
    train_denoiser's weights and its certified accuracies certify's row."""
    from advreid.certify.params import CertifyParams, DenoiserParams
    from advreid.certify.replicates import replicate_plan, replicate_seed
    from advreid.certify.targets import load_images
    from advreid.models.classifiers import load_classifier

    root, _ = project
    training = DenoiserParams(**PARAMS["train_denoiser"]["settings"]).check("train_denoiser.settings")
    cert = CertifyParams(**PARAMS["certify"]["settings"]).check("certify.settings")
    replicates = {"seeds": [3], "methods": METHODS, "sigma": 0.5}
    plan = replicate_plan(replicates, training, cert, tuple(METHODS), PARAMS["seed"])
    assert plan.sigma_index == 1
    processed = root / "data" / "processed" / "digits"
    images, _ = load_images(processed, "train", root)
    classifier = load_classifier(root / "models" / "classifier" / "digits.pt", torch.device("cpu"))
    result = replicate_seed(
        PARAMS["seed"], plan, classifier, images, load_images(processed, "test", root), 10, tmp_path
    )
    assert result.points == 6 and set(result.cells) == set(METHODS)
    for method in METHODS:
        ours = torch.load(tmp_path / f"{method}.pt", weights_only=True)["model"]
        main = torch.load(root / "models" / "denoisers" / method / "sigma_0.5.pt", weights_only=True)["model"]
        assert ours.keys() == main.keys() and all(torch.equal(ours[k], main[k]) for k in ours), method
        row = json.loads((root / "reports" / "metrics" / "certify" / f"{method}.json").read_text())["sigma"]["0.5"]
        assert result.cells[method] == pytest.approx(row), method


def test_certify_seed_stage_writes_its_seed_and_names_bad_params(project) -> None:
    from advreid.params import ParamsError
    from advreid.stages import certify_seed

    root, _ = project
    params = {**PARAMS, "certify": {**PARAMS["certify"], "replicates": {"seeds": [3], "methods": ["zo_ae_ruds"]}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        assert certify_seed.main(["3"]) == 0
        out = json.loads((root / "reports" / "metrics" / "certify_seeds" / "seed3.json").read_text())
        assert out["seed"] == 3 and out["sigma"] == 0.25 and out["points"] == 6 and set(out["cells"]) == {"zo_ae_ruds"}
        assert 0 <= out["cells"]["zo_ae_ruds"]["rca_0.25"] <= out["cells"]["zo_ae_ruds"]["sca"] <= 1
        seeds_dir = root / "models" / "certify_seeds" / "seed3"
        assert sorted(p.name for p in seeds_dir.parent.iterdir()) == ["seed3"]  # written whole, no temporary left
        ours = torch.load(seeds_dir / "zo_ae_ruds.pt", weights_only=True)["model"]
        main = torch.load(root / "models" / "denoisers" / "zo_ae_ruds" / "sigma_0.25.pt", weights_only=True)["model"]
        assert not all(torch.equal(ours[k], main[k]) for k in ours)  # seed 3, not the main stages' 0
        with pytest.raises(ParamsError, match=r"certify.replicates.seeds: 4 is not one of \[3\]"):
            certify_seed.main(["4"])
        bad = [({"seeds": [0, 3]}, r"certify.replicates.seeds: 0 is seed, the seed the main stages train"),
               ({"methods": ["zo_ds"]}, r"certify.replicates.methods: need trained methods, got \['zo_ds'\] not in"),
               ({"sigma": 0.3}, r"certify.replicates.sigma: 0.3 is not in train_denoiser.settings.sigmas")]  # fmt: skip
        for change, message in bad:
            replicates = {"seeds": [3], "methods": ["zo_ae_ruds"], **change}
            changed = {**params, "certify": {**params["certify"], "replicates": replicates}}
            (root / "params.yaml").write_text(yaml.safe_dump(changed))
            with pytest.raises(ParamsError, match=message):
                certify_seed.main(["3"])
    finally:
        (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
