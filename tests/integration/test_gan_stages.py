"""The IPES-GAN stages on a tiny synthetic project: declared outputs, a model.pt the Re-ID loader reads, resume
after SIGKILL, the unlabelled target, and bad inputs (no keypoints row, wrong image size, wrong teacher)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from advreid.data.synthetic import DemoSpec
from advreid.gan.data import load_domain
from advreid.pose.keypoints import read_poses, write_poses
from advreid.reid.checkpoint import load_trained_model
from advreid.stages import eval_gan, train_gan
from tests.fixtures_gan import write_gan_params, write_gan_project, write_lpips_weights, write_teacher
from tests.sigkill import kill_stage_when

SPEC = DemoSpec(num_train_ids=8, num_test_ids=6, cameras=2, images_per_camera=2, height=64, width=32)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gan_project(tmp_path_factory.mktemp("gan"), SPEC)


def _env(monkeypatch, root: Path) -> None:
    monkeypatch.setenv("ADVREID_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)


def _copy(project: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("models", "reports", "mlflow.db"))
    shutil.copytree(project / "models" / "reid", root / "models" / "reid")
    return root


def test_stages_write_their_declared_outputs(project, monkeypatch):
    _env(monkeypatch, project)
    assert train_gan.main(["ipes_gan"]) == 0
    seeds = project / "models" / "gan" / "ipes_gan" / "seeds"
    for seed in (0, 1):
        model, meta = load_trained_model(seeds / f"seed{seed}" / "model.pt")  # the Re-ID loader, unchanged
        assert meta["arch"] == "small_cnn" and meta["num_classes"] == SPEC.num_train_ids
        assert (meta["height"], meta["width"]) == (64, 32) and meta["adapted_to"] == "demo_b"
        assert (seeds / f"seed{seed}" / "generator.pt").is_file()
    curve = pd.read_csv(project / "reports" / "gan" / "train" / "ipes_gan.csv")
    assert curve["seed"].tolist() == [0] * 4 + [1] * 4 and curve["iteration"].tolist() == [1, 2, 3, 4] * 2
    assert eval_gan.main([]) == 0
    metrics = json.loads((project / "reports" / "metrics" / "ipes_gan.json").read_text())
    assert set(metrics["ipes_gan"]["per_seed"]) == {"0", "1"}
    per_seed = [s["mAP"] for s in metrics["ipes_gan"]["per_seed"].values()]
    assert metrics["ipes_gan"]["mAP"] == pytest.approx(sum(per_seed) / 2)
    assert {"mAP", "rank1"} <= set(metrics["direct_transfer"])
    assert {"target_source", "target_generated"} <= set(metrics["mmd"])
    assert metrics["image_quality"]["fid"] == "not computed"
    tables = (project / "reports" / "gan" / "tables.md").read_text()
    for table in ("3.1", "3.3", "3.4", "3.5", "3.8"):
        assert f"Table {table}" in tables
    assert "(thesis M->D)" in tables and "not run" in tables
    assert (project / "reports" / "gan" / "translations.png").stat().st_size > 0


def test_lpips_is_computed_only_from_local_weights_the_user_gives(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    _env(monkeypatch, root)
    alex, lin = write_lpips_weights(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gan"]["quality"] = {"lpips_alexnet_weights": str(alex), "lpips_linear_weights": str(lin)}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert train_gan.main(["ipes_gan"]) == 0
    assert eval_gan.main([]) == 0
    metrics = json.loads((root / "reports" / "metrics" / "ipes_gan.json").read_text())
    block = metrics["image_quality"]
    per_seed = [s["lpips_diversity"] for s in metrics["ipes_gan"]["per_seed"].values()]
    assert block["lpips"] == pytest.approx(sum(per_seed) / len(per_seed)) and all(v > 0 for v in per_seed)
    assert block["fid"] == "not computed" and set(block["weights_sha256"]) == {"lpips_alexnet", "lpips_linear"}
    assert "Table 3.6" in (root / "reports" / "gan" / "tables.md").read_text()


def test_target_labels_do_not_reach_the_trainer(project, tmp_path):
    root = _copy(project, tmp_path)
    manifest = root / "data" / "processed" / "demo_b" / "train.parquet"
    frame = pd.read_parquet(manifest)
    frame["label"] = frame["label"].sample(frac=1.0, random_state=0).to_numpy()  # permute the identities
    frame.to_parquet(manifest)
    args = (root / "data" / "processed" / "pose" / "demo_b.parquet", (64, 32))
    permuted = load_domain(root / "data" / "processed" / "demo_b", *args, labelled=False, root=root)
    original = load_domain(project / "data" / "processed" / "demo_b", *args, labelled=False, root=project)
    assert permuted.labels is None and not hasattr(permuted, "label")
    for field in ("images", "cameras", "keypoints"):
        torch.testing.assert_close(getattr(permuted, field), getattr(original, field), rtol=0, atol=0, equal_nan=True)


def test_resume_after_sigkill_equals_an_uninterrupted_run(project, tmp_path, monkeypatch):
    reference, killed = _copy(project, tmp_path / "a"), _copy(project, tmp_path / "b")
    for root in (reference, killed):
        write_gan_params(root, seeds=[0], max_iter=16, checkpoint_every=2)
    checkpoint = killed / "models" / "gan" / "ipes_gan" / "checkpoints" / "seed0.pt"
    ready = lambda: checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["iteration"] >= 6  # noqa: E731
    kill_stage_when(killed, "train_gan", ["ipes_gan"], ready)
    assert not (killed / "models" / "gan" / "ipes_gan" / "seeds").exists()
    for root in (killed, reference):
        _env(monkeypatch, root)
        assert train_gan.main(["ipes_gan"]) == 0
    for seed in (0,):
        a = torch.load(reference / "models/gan/ipes_gan/seeds" / f"seed{seed}" / "model.pt", weights_only=True)
        b = torch.load(killed / "models/gan/ipes_gan/seeds" / f"seed{seed}" / "model.pt", weights_only=True)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the curve and the metrics hold no timings or resume counts: a resumed run writes the same bytes
    outs = ("models/gan/ipes_gan/seeds/seed0/generator.pt", "reports/gan/train/ipes_gan.csv",
            "reports/metrics/gan/train_ipes_gan.json")  # fmt: skip
    for out in outs:
        assert (reference / out).read_bytes() == (killed / out).read_bytes(), out


def test_an_image_without_a_keypoints_row_names_the_table(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    table = root / "data" / "processed" / "pose" / "demo_b.parquet"
    poses = read_poses(table)
    write_poses(poses.drop(poses.index[poses["path"].str.startswith("bounding_box_train")][:1]), table)
    _env(monkeypatch, root)
    with pytest.raises(ValueError, match=r"demo_b\.parquet.*lacks 1 of"):
        train_gan.main(["ipes_gan"])
    assert not (root / "models" / "gan" / "ipes_gan" / "seeds").exists()


def test_images_of_another_size_name_the_file(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    write_teacher(root, "tiny", "small_cnn", SPEC.num_train_ids, (128, 64))
    write_gan_params(root, height=128, width=64)
    _env(monkeypatch, root)
    with pytest.raises(ValueError, match=r"demo_a.*\.jpg: image is 64x32, params ask for 128x64"):
        train_gan.main(["ipes_gan"])
    assert not (root / "models" / "gan").exists()


def test_a_teacher_of_another_architecture_names_the_file(project, tmp_path, monkeypatch):
    root = _copy(project, tmp_path)
    write_teacher(root, "tiny", "osnet_x0_25", SPEC.num_train_ids, (64, 32))
    _env(monkeypatch, root)
    with pytest.raises(
        ValueError, match=r"tiny/model\.pt: teacher is a osnet_x0_25 checkpoint, params ask for small_cnn"
    ):
        train_gan.main(["ipes_gan"])
    assert not (root / "models" / "gan").exists()
