"""The attack stages on a tiny synthetic demo: two quickly trained Re-ID models, the attack grid, the WMA sweeps and
the report; budgets on the saved images, damage, the transfer table, and the measuring helpers against hand values."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from advreid.attacks.evaluation import (
    AttackConfig,
    ReIDSplit,
    attack_split,
    choose_targets,
    feature_mmd,
    perturbation_smoothness,
    quantize_in_ball,
    same_identity_other_camera,
    ssim,
    stack_references,
)
from advreid.attacks.objectives import feature_distance
from advreid.data.synthetic import DemoSpec
from advreid.data.torch_data import ManifestImages, load_split
from advreid.params import ParamsError
from advreid.reid.checkpoint import load_trained_model
from advreid.reid.metrics import evaluate_rank
from advreid.stages import attack, attack_report, train_reid
from advreid.stages.train_reid import TrainSettings
from tests.fixtures_reid import write_demo_project

CPU = torch.device("cpu")
SIZE = (64, 32)
# 12 test identities x 3 cameras: 36 queries (one per identity and camera) and 72 gallery images
SPEC = DemoSpec(num_train_ids=16, num_test_ids=12, cameras=3, images_per_camera=3, height=SIZE[0], width=SIZE[1])
TRAIN = TrainSettings(epochs=12, p=8, k=4, lr=1e-3, warmup_epochs=1, milestones=(9,), height=SIZE[0], width=SIZE[1])
MODELS = {"cnn": ("small_cnn", TRAIN), "osnet": ("osnet_x0_25", replace(TRAIN, epochs=2, milestones=()))}
EPS = 8
ATTACKS = {
    "pgd": {"method": "pgd", "random_start": True},
    "ama": {"method": "pgd", "objective": "ama"},
    "targeted": {"method": "pgd", "objective": "reid_targeted"},
    "wma": {"method": "wma", "eps_w": 800, "lam": 10, "max_iter": 100, "growth": 1.1, "grow_every": 2, "w_pool": 2},
}
EVAL = {"metric": "euclidean", "flip": False, "ap_convention": "noninterp"}


def _params() -> dict:
    models = {}
    for name, (arch, settings) in MODELS.items():
        models[name] = {"arch": arch, "train": {**asdict(settings), "milestones": list(settings.milestones)}}
        models[name]["eval"] = EVAL
    sweep = {"model": "cnn", "budget": "eps8", "steps": 2, "queries": 6, "lambdas": [1, 30], "kernel_sizes": [3, 5]}
    return {
        "reid": {"source": "demo_a", "targets": ["demo_b"], "device": "cpu", "models": models},
        "attack": {
            "budgets": {"eps8": {"eps": EPS, "step": 2, "steps": 3}},
            "attacks": ATTACKS,
            "batch_size": 16,  # 36 queries: three batches, the last one short
            "seed": 0,
            "sweep": {**sweep, "eps": [4, 8], "images": 1},
            "report": {"images": 1},
        },
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root with the processed demo domains and two trained models (small CNN, OSNet x0.25)."""
    root = tmp_path_factory.mktemp("attack")
    write_demo_project(root, SPEC)
    source = root / "data" / "processed" / "demo_a"
    for name, (arch, settings) in MODELS.items():
        trained = train_reid.train_reid(arch, settings, source, None, device=CPU, root=root)
        out = root / "models" / "reid" / name
        train_reid.write_outputs(trained, out / "model.pt", out / "curve.csv", out / "metrics.json")
    (root / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    return root


@pytest.fixture()
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.chdir(project)
    return project


def _split(root: Path, name: str) -> ManifestImages:
    frame, raw = load_split(root / "data" / "processed" / "demo_a", name, root)
    return ManifestImages(frame, raw, size=SIZE)


def _stack(images: ManifestImages) -> torch.Tensor:
    return torch.stack([images.image(i) for i in range(len(images))])


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def test_attack_stage_writes_budgeted_images_that_damage_retrieval(in_project):
    root = in_project
    assert attack.main(["cnn"]) == 0
    metrics = json.loads((root / "reports" / "metrics" / "attack" / "cnn.json").read_text())
    cells = [f"{name}-eps8" for name in ATTACKS]
    assert set(metrics["cells"]) == set(cells)
    query, gallery = _split(root, "query"), _split(root, "gallery")
    clean = {"query": _stack(query), "gallery": _stack(gallery)}
    for cell in cells:
        saved = torch.load(root / "data" / "adversarial" / "cnn" / f"{cell}.pt", weights_only=True)
        side = "gallery" if cell.startswith("ama") else "query"
        manifest = (query if side == "query" else gallery).frame
        assert saved["split"] == side and saved["model"] == "cnn" and saved["budget"] == "eps8"
        assert saved["images"].dtype == torch.uint8
        assert tuple(saved["images"].shape) == (len(manifest), 3, *SIZE)
        assert saved["path"] == manifest["path"].tolist() and saved["label"] == manifest["label"].tolist()
        delta = saved["images"].float() / 255 - clean[side]
        assert delta.abs().max() > 2 / 255  # the attack moved
        assert 0 < metrics["cells"][cell]["ssim"] < 1
        if cell.startswith("wma"):
            continue  # WMA's budget is its Wasserstein ball (below), Gamma clips before the projection
        # the budget holds on the saved 8-bit images
        assert delta.abs().max() <= EPS / 255 + 1e-6
        assert metrics["cells"][cell]["linf"] <= EPS + 1e-4
    # WMA reports its exact distance (POT on 4 sampled images), radius reached and convergence
    wma = metrics["cells"]["wma-eps8"]
    assert wma["w_images"] == 4 and wma["w_pool"] == 2 and 0 < wma["wasserstein"] <= wma["wasserstein_max"]
    assert 800 <= wma["eps_w_final"] <= 800 * 1.1 and wma["projections"] >= len(query.frame)
    assert wma["unconverged"] == 0 and wma["mass_error_max"] <= 1e-5
    assert wma["l2"] > 0 and 0 <= wma["fooled"] <= 1

    # the numbers are evaluate_rank's on independently computed features of the saved images
    model, _ = load_trained_model(root / "models" / "reid" / "cnn" / "model.pt")
    labels = {s: torch.as_tensor(d.labels) for s, d in (("query", query), ("gallery", gallery))}
    cameras = {s: torch.as_tensor(d.cameras) for s, d in (("query", query), ("gallery", gallery))}
    qf, gf = _features(model, clean["query"]), _features(model, clean["gallery"])
    pgd = torch.load(root / "data" / "adversarial" / "cnn" / "pgd-eps8.pt", weights_only=True)["images"]
    adv_qf = _features(model, pgd.float() / 255)
    args = (labels["query"], labels["gallery"], cameras["query"], cameras["gallery"])
    before, after = evaluate_rank(qf, gf, *args), evaluate_rank(adv_qf, gf, *args)
    assert metrics["clean"]["mAP"] == pytest.approx(before.mAP, abs=1e-5)
    assert metrics["cells"]["pgd-eps8"]["mAP"] == pytest.approx(after.mAP, abs=1e-5)
    # a trained model: retrieval works before, and the attack breaks much of it
    assert before.mAP > 0.5
    for cell in cells:
        # WMA's entropic plan spends most of its radius on blur at lam = 10: a weaker, near-invisible attack
        assert metrics["cells"][cell]["mAP"] < before.mAP - (0.03 if cell.startswith("wma") else 0.1), cell
    # eq. 4.3 grew: the adversarial queries are farther from their identity's gallery features (other cameras)
    groups = same_identity_other_camera(labels["query"], cameras["query"], labels["gallery"], cameras["gallery"])
    references, mask = stack_references(gf, groups, qf)
    assert (feature_distance(adv_qf, references, mask) > feature_distance(qf, references, mask)).float().mean() > 0.9
    targeted = metrics["cells"]["targeted-eps8"]
    assert targeted["target_rank1"] > 0.2  # chance: about 1 in 11 other identities
    with open(root / "reports" / "attack" / "cmc" / "cnn.csv") as f:
        header, first = f.readline().strip().split(","), f.readline().strip().split(",")
    assert header == ["rank", "clean", *cells]
    assert float(first[1]) == pytest.approx(metrics["clean"]["rank1"], abs=1e-6)


def test_report_transfers_every_attack_between_the_two_models(in_project):
    root = in_project
    for name in MODELS:
        if not (root / "reports" / "metrics" / "attack" / f"{name}.json").is_file():
            assert attack.main([name]) == 0
    assert attack.main(["cnn", "--sweep"]) == 0
    sweep = json.loads((root / "reports" / "metrics" / "attack_sweep.json").read_text())
    # (JSON files are written with sorted keys: compare sets)
    assert set(sweep["lambda"]) == {"1", "30"} and sweep["queries"] == 6
    assert set(sweep["kernel"]) == {"k3", "k5"} and set(sweep["kernel"]["k5"]) == {"eps4", "eps8"}
    assert sweep["kernel"]["k3"]["eps4"]["wasserstein"] > 0 and sweep["kernel"]["k3"]["eps4"]["w_images"] == 4
    # a small lambda spreads mass by entropy: a smaller, weaker change than at 30
    assert sweep["lambda"]["1"]["mean_abs"] < sweep["lambda"]["30"]["mean_abs"]

    assert attack_report.main([]) == 0
    tables = json.loads((root / "reports" / "metrics" / "attack_report.json").read_text())
    cells = [f"{name}-eps8" for name in ATTACKS]
    assert set(tables["transfer"]) == {"cnn->osnet", "osnet->cnn"}
    for row in tables["transfer"].values():
        assert set(row) == {"clean", *cells}
        assert all(0 <= scores["mAP"] <= 1 for scores in row.values())
    assert set(tables["white_box"]) == {"cnn", "osnet"} and set(tables["white_box"]["cnn"]) == {"clean", *cells}
    assert set(tables["quality"]["osnet"]["wma-eps8"]) == {"ssim", "mmd"}
    assert "targeted-eps8" in tables["targeted"]["cnn"] and set(tables["sweep"]["lambda"]) == {"1", "30"}
    # the thesis comparison: WMA at its Wasserstein budget beside PGD at its L-inf budget
    assert set(tables["wasserstein"]["cnn"]) == {"wma-eps8", "pgd-eps8"}
    assert "wasserstein" in tables["wasserstein"]["cnn"]["wma-eps8"]
    # transfer recomputed by hand: OSNet's features of the images made on the CNN
    osnet, _ = load_trained_model(root / "models" / "reid" / "osnet" / "model.pt")
    query, gallery = _split(root, "query"), _split(root, "gallery")
    saved = torch.load(root / "data" / "adversarial" / "cnn" / "pgd-eps8.pt", weights_only=True)["images"]
    result = evaluate_rank(
        _features(osnet, saved.float() / 255),
        _features(osnet, _stack(gallery)),
        torch.as_tensor(query.labels),
        torch.as_tensor(gallery.labels),
        torch.as_tensor(query.cameras),
        torch.as_tensor(gallery.cameras),
    )
    assert tables["transfer"]["cnn->osnet"]["pgd-eps8"]["mAP"] == pytest.approx(result.mAP, abs=1e-5)
    for path in ("cmc.png", "samples/cnn.png", "samples/osnet.png", "lambda_sweep.png", "kernel_sweep.png"):
        assert Image.open(root / "reports" / "attack" / path).format == "PNG"
    markdown = (root / "reports" / "attack" / "tables.md").read_text()
    assert "| cnn->osnet | pgd-eps8 |" in markdown and "## WMA at its Wasserstein budget vs PGD" in markdown


def test_attack_split_repeats_given_the_seed(project):
    model, _ = load_trained_model(project / "models" / "reid" / "cnn" / "model.pt")
    splits = {}
    for name in ("query", "gallery"):
        images = _split(project, name)
        splits[name] = ReIDSplit(
            images, _features(model, _stack(images)), torch.as_tensor(images.labels), torch.as_tensor(images.cameras)
        )
    config = AttackConfig(method="pgd", objective="sma", random_start=True)
    rows = torch.tensor([0, 5, 9])
    runs = [
        attack_split(model, config, splits, eps=4 / 255, step=1 / 255, steps=2, device=CPU, seed=s, rows=rows)
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0].images, runs[1].images)
    assert not torch.equal(runs[0].images, runs[2].images)
    assert runs[0].metrics["images"] == 3 and tuple(runs[0].features.shape) == (3, 128)


def test_bad_attack_params_name_the_key(in_project):
    params = _params()["attack"]
    bad = {**params, "attacks": {"pgd": {"method": "cw"}}}
    with pytest.raises(ParamsError, match=r"attack.attacks.pgd.method: must be one of"):
        attack.AttackParams(**bad).check()
    bad = {**params, "attacks": {"pgd": {"method": "pgd", "lam": 10}}}
    with pytest.raises(ParamsError, match=r"attack.attacks.pgd: \['lam'\] apply to method 'wma' only"):
        attack.AttackParams(**bad).check()
    bad = {**params, "budgets": {"eps8": {"eps": 8, "step": 2, "steps": 0}}}
    with pytest.raises(ParamsError, match=r"attack.budgets.eps8.steps: must be >= 1, got 0"):
        attack.AttackParams(**bad).check()
    with pytest.raises(ParamsError, match=r"attack.sweep.model is 'cnn', not 'osnet'"):
        attack.main(["osnet", "--sweep"])


def test_quantize_rounds_inside_the_ball():
    clean = torch.tensor([[[[0.0, 10 / 255, 250 / 255, 100 / 255]]]])
    adversarial = torch.tensor([[[[0.03, 0.0, 1.0, 100.4 / 255]]]])
    levels = quantize_in_ball(adversarial, clean, 8 / 255)
    # 0.03 * 255 = 7.65 -> 8; 0 is inside [2, 18] -> 2; 255 is above 250 + 8 -> 255 clipped to 255 (in [0, 1]);
    # 100.4 -> 100
    assert levels.tolist() == [[[[8, 2, 255, 100]]]]
    off_grid = torch.full((1, 1, 1, 1), 0.5001)  # a resized pixel: no level within eps = 0
    assert quantize_in_ball(off_grid + 0.1, off_grid, 0.0).item() == 128


def test_reference_helpers_by_hand():
    labels, cameras = torch.tensor([1, 2, 3]), torch.tensor([1, 1, 2])
    ref_labels, ref_cameras = torch.tensor([1, 1, 2, -1, 0, 1]), torch.tensor([1, 2, 1, 2, 2, 3])
    groups = same_identity_other_camera(labels, cameras, ref_labels, ref_cameras)
    # identity 1 camera 1: gallery 1 and 5 (0 is the same camera); identity 2 only in camera 1; identity 3 absent
    assert [g.tolist() for g in groups] == [[1, 5], [], []]
    features = torch.arange(12.0).view(6, 2)
    fallback = -torch.ones(3, 2)
    references, mask = stack_references(features, groups, fallback)
    assert references.shape == (3, 2, 2)
    assert references[0].tolist() == [[2.0, 3.0], [10.0, 11.0]] and references[1, 0].tolist() == [-1.0, -1.0]
    assert mask.tolist() == [[True, True], [True, False], [True, False]]

    candidates = torch.tensor([-1, 0, 4, 4, 7, 9])
    drawn = choose_targets(torch.tensor([4, 7, 9, 5] * 50), candidates, torch.Generator().manual_seed(0))
    own = torch.tensor([4, 7, 9, 5] * 50)
    assert (drawn != own).all() and set(drawn.tolist()) <= {4, 7, 9}
    assert set(drawn[3::4].tolist()) == {4, 7, 9}  # an identity absent from the candidates may get any
    assert torch.equal(drawn, choose_targets(own, candidates, torch.Generator().manual_seed(0)))


def test_quality_measures_by_hand():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(ssim(images, images), torch.ones(2, dtype=torch.float64))
    noisy = (images + 0.2 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    assert (ssim(images, noisy) < 0.9).all()
    features = torch.randn(20, 8, generator=g)
    assert feature_mmd(features, features) == pytest.approx(0.0, abs=1e-12)
    assert feature_mmd(features, -features) > 0.1
    # sign noise is uncorrelated with its neighbours; a ramp is perfectly smooth up to its ends
    sign = torch.randint(0, 2, (1, 3, 32, 32), generator=g).float() * 2 - 1
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    smooth = perturbation_smoothness(torch.cat([sign, ramp, torch.zeros_like(ramp)]))
    assert abs(smooth[0]) < 0.1 and smooth[1] > 0.9 and smooth[2] == 0


# --- attack_seed@<k>: chapter 4's claim cells over training seeds ----------------------------------------------------


def _replicate_params(seeds: list[int], attacks: list[str], transfer: list[str]) -> dict:
    params = _params()
    params["attack"]["replicates"] = {"seeds": seeds, "models": ["cnn", "osnet"], "attacks": attacks,
                                      "budget": "eps8", "transfer": transfer}  # fmt: skip
    return params


def test_a_replicate_at_the_main_seed_repeats_the_main_models_attacks_and_transfer(project, tmp_path):
    """Retrained with the fixture's own seed, the replicate's models, attack scores and transfer scores are those of
    the fixture's trained models attacked one by one here (the attack-stage path: load, attack, score)."""
    from advreid.attacks.grid import AttackParams
    from advreid.attacks.replicates import replicate_plan, replicate_seed
    from advreid.reid.checkpoint import ReIDParams

    params = _replicate_params([3], ["pgd", "wma"], ["wma"])
    reid = ReIDParams(**params["reid"]).check()
    plan = replicate_plan(reid, AttackParams(**params["attack"]).check())
    source = project / "data" / "processed" / "demo_a"
    result = replicate_seed(TRAIN.seed, plan, source, tmp_path, device=CPU, root=project)
    assert result.queries == 36 and set(result.cells) == {"cnn", "osnet"}
    assert set(result.transfer) == {"cnn->osnet", "osnet->cnn"} and set(result.transfer["cnn->osnet"]) == {"wma-eps8"}
    models, splits, images = {}, {}, {}
    for name in MODELS:
        models[name], _ = load_trained_model(project / "models" / "reid" / name / "model.pt")
        ours = torch.load(tmp_path / f"{name}.pt", weights_only=True)["model"]
        assert all(torch.equal(ours[k], v) for k, v in models[name].state_dict().items())  # the same training
        splits[name] = {}
        for split in ("query", "gallery"):
            data = _split(project, split)
            splits[name][split] = ReIDSplit(data, _features(models[name], _stack(data)),
                                            torch.as_tensor(data.labels), torch.as_tensor(data.cameras))  # fmt: skip
        for attack_name in ("pgd", "wma"):
            config = AttackConfig(**ATTACKS[attack_name])
            outcome = attack_split(models[name], config, splits[name], eps=EPS / 255, step=2 / 255, steps=3,
                                   device=CPU, batch_size=16, seed=0)  # fmt: skip
            cell = result.cells[name][f"{attack_name}-eps8"]
            assert cell == pytest.approx({k: outcome.metrics[k] for k in ("rank1", "mAP", "ssim")}, abs=1e-6)
            images[name, attack_name] = outcome.images
    for crafted_on, scored_on in (("cnn", "osnet"), ("osnet", "cnn")):
        query, gallery = splits[scored_on]["query"], splits[scored_on]["gallery"]
        hit = evaluate_rank(_features(models[scored_on], images[crafted_on, "wma"].float() / 255), gallery.features,
                            query.labels, gallery.labels, query.cameras, gallery.cameras)  # fmt: skip
        scores = result.transfer[f"{crafted_on}->{scored_on}"]["wma-eps8"]
        assert scores == pytest.approx({"rank1": hit.rank(1), "mAP": hit.mAP}, abs=1e-5)
        clean = evaluate_rank(query.features, gallery.features, query.labels, gallery.labels, query.cameras,
                              gallery.cameras)  # fmt: skip
        assert result.cells[scored_on]["clean"] == pytest.approx({"rank1": clean.rank(1), "mAP": clean.mAP}, abs=1e-5)


def test_attack_seed_stage_writes_its_seed_and_names_bad_params(in_project):
    from advreid.stages import attack_seed

    root = in_project
    (root / "params.yaml").write_text(yaml.safe_dump(_replicate_params([3], ["pgd"], ["pgd"]), sort_keys=False))
    try:
        assert attack_seed.main(["3"]) == 0
        out = json.loads((root / "reports" / "metrics" / "attack_seeds" / "seed3.json").read_text())
        assert out["seed"] == 3 and out["queries"] == 36 and out["budget"] == "eps8"
        assert set(out["cells"]["cnn"]) == {"clean", "pgd-eps8"} and set(out["cells"]["cnn"]["pgd-eps8"]) == {
            "rank1", "mAP", "ssim"}  # fmt: skip
        assert set(out["transfer"]) == {"cnn->osnet", "osnet->cnn"}
        seeds_dir = root / "models" / "attack_seeds" / "seed3"
        assert sorted(p.name for p in seeds_dir.parent.iterdir()) == ["seed3"]  # written whole, no temporary left
        assert sorted(p.name for p in seeds_dir.iterdir()) == ["cnn.pt", "osnet.pt"]
        ours, meta = load_trained_model(seeds_dir / "cnn.pt")
        main, _ = load_trained_model(root / "models" / "reid" / "cnn" / "model.pt")
        assert meta["seed"] == 3  # another training than the seed-0 one the fixture made
        assert not all(
            torch.equal(a, b) for a, b in zip(ours.state_dict().values(), main.state_dict().values(), strict=True)
        )
        with pytest.raises(ParamsError, match=r"attack.replicates.seeds: 4 is not one of \[3\]"):
            attack_seed.main(["4"])
        bad = [({"seeds": [0, 3]}, r"attack.replicates.seeds: 0 is reid.models.cnn.train.seed"),
               ({"models": ["cnn", "nope"]}, r"attack.replicates.models: need Re-ID models, got \['nope'\] not in"),
               ({"attacks": ["ama"]}, r"attack.replicates.attacks: 'ama' perturbs the gallery"),
               ({"transfer": ["wma"]}, r"attack.replicates.transfer: \['wma'\] not in attack.replicates.attacks"),
               ({"budget": "eps4"}, r"attack.replicates.budget: 'eps4' not in attack.budgets")]  # fmt: skip
        for change, message in bad:
            params = _replicate_params([3], ["pgd"], ["pgd"])
            params["attack"]["replicates"].update(change)
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            with pytest.raises(ParamsError, match=message):
                attack_seed.main(["3"])
    finally:
        (root / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
