"""The chapter-5 defense stages on a tiny synthetic project: resume, bad input, the three stages' outputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml

from advreid.data.synthetic import DemoSpec
from advreid.defense.training import DefenseSettings, load_defended_model, train_defense
from advreid.params import ParamsError
from advreid.reid.engine import LAST_CHECKPOINT, save_checkpoint
from advreid.reid.training import TrainSettings, train_reid
from advreid.stages import defense_report, defense_seed, eval_defense
from advreid.stages import train_defense as train_defense_stage
from tests.fixtures_reid import write_demo_project
from tests.sigkill import kill_stage_when

CPU = torch.device("cpu")
SIZE = (32, 16)
SPEC = DemoSpec(num_train_ids=8, num_test_ids=4, cameras=2, images_per_camera=2, height=SIZE[0], width=SIZE[1])
TINY = DefenseSettings(epochs=2, p=4, k=2, alpha=0.01, beta=0.3, pgd_steps=1, flip=True)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with a trained vanilla small_cnn at models/reid/tiny/model.pt."""
    root = tmp_path_factory.mktemp("defense")
    write_demo_project(root, SPEC)
    settings = TrainSettings(epochs=1, p=4, k=2, lr=1e-3, height=SIZE[0], width=SIZE[1])
    trained = train_reid("small_cnn", settings, root / "data" / "processed" / "demo_a", None, device=CPU, root=root)
    save_checkpoint(root / "models" / "reid" / "tiny" / "model.pt", trained.model, epoch=1, history=[],
                    meta=trained.meta)  # fmt: skip
    return root


def _train(project: Path, settings: DefenseSettings, checkpoints: Path | None, arch: str = "small_cnn", **kw):
    vanilla = project / "models" / "reid" / "tiny" / "model.pt"
    source = project / "data" / "processed" / "demo_a"
    return train_defense("mp_snn", settings, vanilla, arch, source, checkpoints, device=CPU, root=project, **kw)


def test_resume_after_an_interruption_is_bit_identical(project, tmp_path):
    uninterrupted = _train(project, TINY, tmp_path / "a")

    def stop_after_one(epoch: int, record: dict) -> None:
        if epoch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        _train(project, TINY, tmp_path / "b", on_epoch_end=stop_after_one)
    assert (tmp_path / "b" / LAST_CHECKPOINT).is_file()
    resumed = _train(project, TINY, tmp_path / "b")
    assert resumed.resumed_from == 1
    a, b = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in uninterrupted.history] == [r["loss"] for r in resumed.history]
    phi_a = resumed.model.anisotropic.phi_a
    assert torch.equal(phi_a, phi_a.tril()) and min(float(s.min()) for s in resumed.model.sigmas()) >= 0.01


def test_a_vanilla_checkpoint_of_another_architecture_is_an_error_naming_the_file(project):
    with pytest.raises(ValueError, match=r"model\.pt.*'small_cnn'.*'resnet50'"):
        _train(project, replace(TINY, epochs=1), None, arch="resnet50")


def _write_params(root: Path) -> None:
    train = {k: v for k, v in asdict(TINY).items() if k not in ("method", "isotropic", "anisotropic", "fca")}
    params = {
        "reid": {"source": "demo_a", "targets": ["demo_b"], "device": "cpu",
                 "models": {"tiny": {"arch": "small_cnn"}}},
        "defense": {
            "model": "tiny",
            "defenses": ["mp_snn", "pgd_at"],
            "evaluate": {"vanilla": "models/reid/tiny/model.pt", "mp_snn": "models/defense/mp_snn/model.pt",
                         "pgd_at": "models/defense/pgd_at/model.pt"},
            "train": {**train, "epochs": 1},
            "variants": {"mp_snn": {"method": "mp_snn"},
                         "pgd_at": {"method": "pgd_at", "isotropic": False, "anisotropic": False}},
            "eval": {
                "queries": 4,
                "budgets": {"eps8": {"eps": 8, "step": 2, "steps": 1, "attacks": ["pgd", "ama", "eot_pgd"]},
                            "eps5": {"eps": 5, "step": 1, "steps": 1, "rerank": True, "attacks": ["mi_fgsm", "sma"]}},
                "attacks": {"pgd": {"method": "pgd", "random_start": True},
                            "ama": {"method": "fgsm", "objective": "ama"},
                            "eot_pgd": {"method": "pgd", "random_start": True, "eot_samples": 2},
                            "mi_fgsm": {"method": "mi_fgsm"},
                            "sma": {"method": "fgsm", "objective": "sma"}},
                "model_attacks": {"pgd_at": ["pgd"]},
                "sweep_eps": [4, 64],
                "sweep_steps": 2,
                "masking_max_rank1": 1.0,
                "scoring": {"draws": 2, "eot_samples": 2, "k1": 4, "k2": 2},
            },
            "report": {"budget": "eps8", "rerank_budget": "eps5"},
        },
    }  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_stages_write_their_declared_outputs(project, monkeypatch):
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.chdir(project)
    _write_params(project)
    for name in ("mp_snn", "pgd_at"):
        assert train_defense_stage.main([name]) == 0
    model, meta = load_defended_model(project / "models" / "defense" / "mp_snn" / "model.pt")
    assert meta["defense"] == "mp_snn" and len(model.isotropic) == 4 and model.anisotropic is not None
    for name in ("vanilla", "mp_snn", "pgd_at"):
        assert eval_defense.main([name]) == 0
    metrics = json.loads((project / "reports" / "metrics" / "defense" / "mp_snn.json").read_text())
    cells = metrics["cells"]
    assert "seconds" not in metrics and not any("seconds" in cell for cell in cells.values())  # MLflow only
    assert {"clean", "pgd-eps8", "ama-eps8", "transfer_pgd-eps8", "sweep_pgd-eps4", "sweep_pgd-eps64"} <= set(cells)
    assert cells["pgd-eps8"]["eot_samples"] == 2 and cells["pgd-eps8"]["draws"] == 2
    assert cells["transfer_pgd-eps8"]["eot_samples"] == 1
    # on the stochastic model every white-box attack is EOT-averaged: EOT-PGD is PGD, computed once
    assert cells["eot_pgd-eps8"]["same_as"] == "pgd-eps8"
    assert cells["eot_pgd-eps8"]["rank1"] == cells["pgd-eps8"]["rank1"]
    # a budget runs only the attacks it names (Table 5.5: MI-FGSM and SMA at 5/255, with re-ranking)
    assert "mi_fgsm-eps8" not in cells and "pgd-eps5" not in cells
    assert {"rank1_rerank", "mAP_rerank"} <= set(cells["mi_fgsm-eps5"]) and "rank1_rerank" in cells["clean"]
    assert "rank1_rerank" not in cells["pgd-eps8"]
    vanilla = json.loads((project / "reports" / "metrics" / "defense" / "vanilla.json").read_text())
    assert vanilla["cells"]["clean"]["draws"] == 1 and "transfer_pgd-eps8" not in vanilla["cells"]
    assert vanilla["cells"]["clean"]["rank1_std"] == 0.0
    # deterministic model: EOT over 2 identical passes is not the same config, but gives PGD's exact result
    assert "same_as" not in vanilla["cells"]["eot_pgd-eps8"]
    assert vanilla["cells"]["eot_pgd-eps8"]["mAP"] == vanilla["cells"]["pgd-eps8"]["mAP"]
    # model_attacks: PGD-AT is scored on PGD only (at every budget that runs it), the sweep still runs
    pgd_at = json.loads((project / "reports" / "metrics" / "defense" / "pgd_at.json").read_text())["cells"]
    assert set(pgd_at) == {"clean", "pgd-eps8", "sweep_pgd-eps4", "sweep_pgd-eps64"}
    assert defense_report.main([]) == 0
    summary = json.loads((project / "reports" / "metrics" / "mp_snn.json").read_text())
    assert summary["mp_snn"]["clean"]["rank1"] == pytest.approx(100 * cells["clean"]["rank1"])
    assert set(summary["mp_snn"]["pgd-eps8"]) == {"rank1", "mAP", "rank1_std"}
    tables = (project / "reports" / "defense" / "tables.md").read_text()
    assert "Table 5.4" in tables and "(thesis)" in tables and "MP-SNN (demo)" in tables
    assert "Table 5.5" in tables and "MP-SNN* (demo)" in tables and "MP-SNN* R-50 (thesis)" in tables
    assert summary["mp_snn"]["sma-eps5"]["rank1_rerank"] == pytest.approx(100 * cells["sma-eps5"]["rank1_rerank"])
    assert (project / "reports" / "defense" / "rank1_vs_eps.png").stat().st_size > 0


def test_resume_after_sigkill_equals_an_uninterrupted_run(project, tmp_path, monkeypatch):
    """A real train_defense process killed mid-training resumes to the uninterrupted model, bit for bit."""
    roots = {}
    for name in ("reference", "killed"):
        root = roots[name] = tmp_path / name
        shutil.copytree(project, root, ignore=shutil.ignore_patterns("defense", "reports", "mlflow.db"))
        _write_params(root)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["reid"]["threads"] = 1  # the killed process must use this session's thread count: bits depend on it
        params["defense"]["train"]["epochs"] = 10
        (root / "params.yaml").write_text(yaml.safe_dump(params))
    last = roots["killed"] / "models" / "defense" / "mp_snn" / "checkpoints" / LAST_CHECKPOINT
    ready = lambda: last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 2  # noqa: E731
    kill_stage_when(roots["killed"], "train_defense", ["mp_snn"], ready)
    assert not (roots["killed"] / "models" / "defense" / "mp_snn" / "model.pt").exists()
    for root in (roots["killed"], roots["reference"]):
        monkeypatch.setenv("ADVREID_ROOT", str(root))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        monkeypatch.chdir(root)
        assert train_defense_stage.main(["mp_snn"]) == 0
    a, b = (torch.load(r / "models/defense/mp_snn/model.pt", weights_only=True)["model"] for r in roots.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    outs = (
        "models/defense/mp_snn/model.pt",
        "reports/defense/train/mp_snn.csv",
        "reports/metrics/defense/train_mp_snn.json",
    )
    for out in outs:
        assert (roots["killed"] / out).read_bytes() == (roots["reference"] / out).read_bytes(), out


def test_bad_params_name_the_defense_or_key(project, monkeypatch):
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.chdir(project)
    _write_params(project)
    with pytest.raises(ParamsError, match="unknown defense 'nope'"):
        train_defense_stage.main(["nope"])
    with pytest.raises(ParamsError, match="defense.evaluate: unknown model 'nope'"):
        eval_defense.main(["nope"])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["defense"]["train"]["lambda_r"] = -1.0
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="lambda_r"):
        train_defense_stage.main(["mp_snn"])


def test_defense_seed_retrains_vanilla_and_defenses_with_its_seed(project, monkeypatch):
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.chdir(project)
    _write_params(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["reid"]["models"]["tiny"]["train"] = {"epochs": 1, "p": 4, "k": 2, "height": SIZE[0], "width": SIZE[1]}
    params["defense"]["replicates"] = {"seeds": [3], "defenses": ["mp_snn"], "attacks": ["pgd"], "budget": "eps8"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert defense_seed.main(["3"]) == 0
    out = json.loads((project / "reports" / "metrics" / "defense_seeds" / "seed3.json").read_text())
    assert out["seed"] == 3 and out["queries"] == 4 and set(out["cells"]) == {"vanilla", "mp_snn"}
    assert set(out["cells"]["mp_snn"]) == {"clean", "pgd-eps8"} and out["cells"]["mp_snn"]["pgd-eps8"]["draws"] == 2
    assert out["cells"]["vanilla"]["clean"]["draws"] == 1
    seeds_dir = project / "models" / "defense_seeds" / "seed3"
    assert sorted(p.name for p in seeds_dir.parent.iterdir()) == ["seed3"]  # written whole, no temporary left
    assert sorted(p.name for p in seeds_dir.iterdir()) == ["mp_snn.pt", "vanilla.pt"]
    model, meta = load_defended_model(seeds_dir / "mp_snn.pt")
    assert meta["settings"]["seed"] == 3 and model.anisotropic is not None
    # the replicate's vanilla model is trained with seed 3: another model than the seed-0 one the fixture trained
    ours = torch.load(seeds_dir / "vanilla.pt", weights_only=True)["model"]
    main = torch.load(project / "models" / "reid" / "tiny" / "model.pt", weights_only=True)["model"]
    assert ours.keys() == main.keys() and not all(torch.equal(ours[k], main[k]) for k in ours)
    with pytest.raises(ParamsError, match=r"defense.replicates.seeds: 4 is not one of \[3\]"):
        defense_seed.main(["4"])
    params["defense"]["replicates"]["seeds"] = [0, 3]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"defense.replicates.seeds: 0 is reid.models.tiny.train.seed"):
        defense_seed.main(["3"])
    params["defense"]["replicates"] = {"seeds": [3], "defenses": ["nope"]}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"defense.replicates.defenses: .*\['nope'\] not in defense.defenses"):
        defense_seed.main(["3"])
