"""The Re-ID stages on a small synthetic two-domain demo: training, resume, the domain gap, the stage outputs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from PIL import Image

from advreid.data.synthetic import DemoSpec
from advreid.device import cleanup_distributed, init_distributed
from advreid.models.reid import build_reid_model
from advreid.params import ParamsError
from advreid.reid import ranked_list, training
from advreid.reid.checkpoint import load_trained_model
from advreid.reid.engine import LAST_CHECKPOINT
from advreid.reid.evaluation import EvalSettings, domain_metrics, evaluate_domain
from advreid.reid.metrics import evaluate_rank
from advreid.reid.ranked_list import MATCH_COLOUR, MISMATCH_COLOUR, border_colours, ranked_gallery
from advreid.reid.training import TrainSettings
from advreid.stages import eval_reid, train_reid
from tests.fixtures_reid import write_demo_project
from tests.sigkill import kill_stage_when

CPU = torch.device("cpu")
SIZE = (64, 32)  # images are drawn at this size: nothing is resized
# 16 training identities, 3 cameras, 1 query + 2 gallery images per identity and camera
SPEC = DemoSpec(num_train_ids=16, num_test_ids=12, cameras=3, images_per_camera=3, height=SIZE[0], width=SIZE[1])
TINY = TrainSettings(epochs=3, p=4, k=4, lr=1e-3, warmup_epochs=1, milestones=(2,), height=SIZE[0], width=SIZE[1])
EVAL = EvalSettings(flip=False, rerank=False, batch_size=64)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root holding the synthetic source (demo_a) and target (demo_b) domains, raw and processed."""
    root = tmp_path_factory.mktemp("reid")
    write_demo_project(root, SPEC)
    return root


def _train(project: Path, settings: TrainSettings, checkpoints: Path | None, **kw) -> training.TrainedModel:
    source = project / "data" / "processed" / "demo_a"
    return training.train_reid("small_cnn", settings, source, checkpoints, device=CPU, root=project, **kw)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Interrupted(Exception):
    pass


def test_training_reduces_the_loss_and_is_deterministic(project):
    settings = replace(TINY, epochs=4)
    first = _train(project, settings, None)
    second = _train(project, settings, None)
    losses = [record["loss"] for record in first.history]
    assert [record["epoch"] for record in first.history] == [1, 2, 3, 4]
    assert losses[-1] < losses[0] - 0.3, losses
    assert _same_weights(first.model, second.model)
    assert training.training_curve(first.history) == training.training_curve(second.history)
    assert first.meta["num_classes"] == SPEC.num_train_ids
    assert first.resumed_from == 0


def test_resume_after_an_interruption_continues_the_epoch_count(project, tmp_path, capsys):
    uninterrupted = _train(project, TINY, tmp_path / "a")

    def stop_after_two(epoch: int, record: dict) -> None:
        if epoch == 1:  # 0-based: epoch 2 is done and checkpointed
            raise Interrupted

    with pytest.raises(Interrupted):
        _train(project, TINY, tmp_path / "b", on_epoch_end=stop_after_two)
    assert torch.load(tmp_path / "b" / LAST_CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = _train(project, TINY, tmp_path / "b")
    assert resumed.resumed_from == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    # on the CPU a resumed run is bit-identical to an uninterrupted one
    assert training.training_curve(resumed.history) == training.training_curve(uninterrupted.history)
    assert _same_weights(resumed.model, uninterrupted.model)

    # a finished checkpoint means DVC is re-running the stage: train again from epoch 1
    again = _train(project, TINY, tmp_path / "b")
    assert again.resumed_from == 0
    assert "that training had finished" in capsys.readouterr().err
    # a checkpoint written with other settings is discarded, not resumed
    with pytest.raises(Interrupted):
        _train(project, TINY, tmp_path / "c", on_epoch_end=stop_after_two)
    other = _train(project, replace(TINY, lr=2e-3), tmp_path / "c")
    assert other.resumed_from == 0
    assert "other settings" in capsys.readouterr().err


def test_source_to_target_is_clearly_worse_than_source_to_source(project):
    trained = _train(project, replace(TINY, epochs=12, p=8, milestones=(9,)), None)
    processed = project / "data" / "processed"
    source = evaluate_domain(trained.model, processed / "demo_a", EVAL, SIZE, device=CPU, root=project)
    target = evaluate_domain(trained.model, processed / "demo_b", EVAL, SIZE, device=CPU, root=project)
    # chance rank-1 is 4 true matches among 70 ranked gallery images, about 0.06. Over data and training seeds
    # 0-2 this setting gave source rank-1 0.75-0.89, mAP 0.78-0.85; target rank-1 0.06-0.36, mAP 0.13-0.25.
    assert source.result.rank(1) > 0.6
    assert source.result.rank(1) > target.result.rank(1) + 0.3
    assert source.result.mAP > target.result.mAP + 0.4
    # the stage's numbers are evaluate_rank's on independently computed features
    model = trained.model.eval()
    with torch.no_grad():
        q = model(torch.stack([source.query.image(i) for i in range(len(source.query))]))
        g = model(torch.stack([source.gallery.image(i) for i in range(len(source.gallery))]))
    direct = evaluate_rank(
        q,
        g,
        torch.as_tensor(source.query.labels),
        torch.as_tensor(source.gallery.labels),
        torch.as_tensor(source.query.cameras),
        torch.as_tensor(source.gallery.cameras),
    )
    assert direct.mAP == pytest.approx(source.result.mAP, abs=1e-5)
    assert torch.allclose(direct.cmc, source.result.cmc)
    # CUHK03 single-shot: the CMC draws one gallery image per identity, AP still uses them all
    single = evaluate_domain(
        trained.model, processed / "demo_a", replace(EVAL, single_shot_repeats=3), SIZE, device=CPU, root=project
    )
    assert single.result.mAP == pytest.approx(source.result.mAP, abs=1e-6)
    assert domain_metrics(single, replace(EVAL, single_shot_repeats=3), "source")["cmc"] == "single-shot x3"


def test_ranked_gallery_skips_the_query_camera_and_junk():
    # gallery: 0 same id + same camera (removed), 1 junk (removed), 2 same id other camera, 3 and 4 other ids
    distances = torch.tensor([[0.0, 0.1, 0.5, 0.3, 0.5]])
    indices, matches = ranked_gallery(
        distances,
        torch.tensor([7]),
        torch.tensor([1]),
        torch.tensor([7, -1, 7, 8, 9]),
        torch.tensor([1, 2, 2, 1, 3]),
        3,
    )
    assert indices.tolist() == [[3, 2, 4]]  # 0.3, then the 0.5 tie in gallery order
    assert matches.tolist() == [[False, True, False]]
    assert border_colours(matches) == [[MISMATCH_COLOUR, MATCH_COLOUR, MISMATCH_COLOUR]]
    with pytest.raises(ValueError, match="query 0 has 3 gallery entries"):
        ranked_gallery(
            distances,
            torch.tensor([7]),
            torch.tensor([1]),
            torch.tensor([7, -1, 7, 8, 9]),
            torch.tensor([1, 2, 2, 1, 3]),
            4,
        )


def test_ranked_list_figure_frames_true_matches_green_and_others_red(tmp_path, monkeypatch):
    images = [np.full((8, 4, 3), v, dtype=np.uint8) for v in range(4)]
    matches = torch.tensor([[True, False, True], [False, False, True]])
    seen = {}

    def capture(rows, path, **kw):
        seen.update(rows=rows, **kw)
        return Path(path)

    monkeypatch.setattr(ranked_list, "image_grid", capture)
    ranked_list.ranked_list_figure(images[:2], [images[1:], images[:3]], matches, tmp_path / "r.png")
    g, r = MATCH_COLOUR, MISMATCH_COLOUR
    assert seen["borders"] == [[None, g, r, g], [None, r, r, g]]  # the query itself is not framed
    assert seen["col_labels"] == ["query", "1", "2", "3"]
    assert seen["rows"][1][0] is images[1]
    monkeypatch.undo()
    path = ranked_list.ranked_list_figure(images[:2], [images[1:], images[:3]], matches, tmp_path / "r.png")
    assert Image.open(path).format == "PNG"


def _write_params(root: Path, **eval_overrides) -> None:
    train = {**asdict(TINY), "milestones": list(TINY.milestones)}
    evaluation = {**asdict(EVAL), "rerank": True, "k1": 6, "k2": 3, "ranked_queries": 2, **eval_overrides}
    params = {
        "reid": {
            "source": "demo_a",
            "targets": ["demo_b"],
            "device": "cpu",
            "models": {"tiny": {"arch": "small_cnn", "train": train, "eval": evaluation}},
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_stages_write_their_declared_outputs(project, monkeypatch):
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.chdir(project)
    _write_params(project)
    assert train_reid.main(["tiny"]) == 0
    model, meta = load_trained_model(project / "models" / "reid" / "tiny" / "model.pt")
    assert (meta["arch"], meta["num_classes"], meta["height"], meta["width"]) == ("small_cnn", 16, *SIZE)
    assert meta["feature_dim"] == model.feature_dim == 128
    with open(project / "reports" / "reid" / "train" / "tiny.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "loss_ce", "loss_triplet", "acc", "lr"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    train_metrics = json.loads((project / "reports" / "metrics" / "reid" / "train_tiny.json").read_text())
    assert train_metrics["loss"] == pytest.approx(float(rows[-1]["loss"]))
    assert train_metrics["pretrained"] is False

    assert eval_reid.main(["tiny"]) == 0
    metrics = json.loads((project / "reports" / "metrics" / "reid" / "eval_tiny.json").read_text())
    assert set(metrics) == {"demo_a", "demo_b"}
    for domain, block in metrics.items():
        assert block["role"] == ("source" if domain == "demo_a" else "target")
        assert block["ap_convention"] == block["rerank"]["ap_convention"] == "noninterp"
        assert 0 <= block["rerank"]["mAP"] <= 1 and block["rerank"]["k1"] == 6
        assert block["num_valid_queries"] == SPEC.num_test_ids * SPEC.cameras
    with open(project / "reports" / "reid" / "cmc" / "tiny" / "demo_b.csv") as f:
        cmc = list(csv.DictReader(f))
    assert list(cmc[0]) == ["rank", "source", "target", "source_rerank", "target_rerank"]
    assert float(cmc[0]["source"]) == pytest.approx(metrics["demo_a"]["rank1"], abs=1e-6)
    assert float(cmc[9]["target"]) == pytest.approx(metrics["demo_b"]["rank10"], abs=1e-6)
    assert [float(r["source"]) for r in cmc] == sorted(float(r["source"]) for r in cmc)  # CMC never decreases
    assert Image.open(project / "reports" / "reid" / "ranked_tiny.png").format == "PNG"


def test_resume_after_sigkill_equals_an_uninterrupted_run(project, tmp_path, monkeypatch, capsys):
    """A real train_reid process killed mid-training (no cleanup at all) resumes to the same bits and bytes."""
    roots = {}
    for name in ("reference", "killed"):
        root = roots[name] = tmp_path / name
        shutil.copytree(project, root, ignore=shutil.ignore_patterns("models", "reports", "mlflow.db"))
        _write_params(root)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["reid"]["threads"] = 1  # the killed process must use this session's thread count: bits depend on it
        params["reid"]["models"]["tiny"]["train"].update(epochs=8, milestones=[5])
        (root / "params.yaml").write_text(yaml.safe_dump(params))
    last = roots["killed"] / "models" / "reid" / "tiny" / "checkpoints" / LAST_CHECKPOINT
    ready = lambda: last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 3  # noqa: E731
    kill_stage_when(roots["killed"], "train_reid", ["tiny"], ready)
    assert not (roots["killed"] / "models" / "reid" / "tiny" / "model.pt").exists()
    for name in ("killed", "reference"):
        monkeypatch.setenv("ADVREID_ROOT", str(roots[name]))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{roots[name] / 'mlflow.db'}")
        monkeypatch.chdir(roots[name])
        assert train_reid.main(["tiny"]) == 0
        if name == "killed":
            assert re.search(r"8 epochs \(resumed after [3-7]\)", capsys.readouterr().out)
    a, b = (torch.load(roots[n] / "models/reid/tiny/model.pt", weights_only=True)["model"] for n in roots)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for out in ("models/reid/tiny/model.pt", "reports/reid/train/tiny.csv", "reports/metrics/reid/train_tiny.json"):
        assert (roots["killed"] / out).read_bytes() == (roots["reference"] / out).read_bytes(), out


def test_bad_params_name_the_key(project, monkeypatch):
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.chdir(project)
    _write_params(project, metric="manhattan")
    with pytest.raises(ParamsError, match=r"reid.models.tiny.eval.metric: must be one of"):
        eval_reid.main(["tiny"])
    with pytest.raises(ParamsError, match=r"reid.models has no 'resnet'; known: \['tiny'\]"):
        train_reid.main(["resnet"])
    with pytest.raises(ParamsError, match=r"train.optimizer: must be one of"):
        TrainSettings(epochs=1, optimizer="lamb").check("reid.models.tiny.train")
    with pytest.raises(ParamsError, match=r"train.k: the triplet loss needs K >= 2"):
        TrainSettings(epochs=1, k=1).check("reid.models.tiny.train")


def _ddp_worker(rank: int, root: str, workdir: str) -> None:
    torch.set_num_threads(1)
    out = Path(workdir)
    init_distributed("cpu", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2)
    try:
        trained = _train(Path(root), replace(TINY, epochs=2), out / "ckpt")
        curve = training.training_curve(trained.history)
        result = {"state": trained.model.state_dict(), "resumed": trained.resumed_from, "curve": curve}
        torch.save({**result, "fingerprint": trained.meta["fingerprint"]}, out / f"rank{rank}.pt")
    finally:
        cleanup_distributed()


@pytest.mark.slow  # two spawned interpreters import torch
def test_two_gloo_processes_train_the_same_model_and_discard_a_single_process_checkpoint(project, tmp_path):
    single = _train(project, replace(TINY, epochs=2), tmp_path / "ckpt")  # a finished single-process checkpoint
    mp.spawn(_ddp_worker, args=(str(project), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["resumed"] == ranks[1]["resumed"] == 0
    assert ranks[0]["curve"] == ranks[1]["curve"] and len(ranks[0]["curve"]) == 2
    # DDP keeps the weights in sync; BatchNorm running statistics are rank 0's only as of the last forward pass
    weights = [name for name, _ in build_reid_model("small_cnn", 16).named_parameters()]
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in weights)
    assert ranks[0]["fingerprint"] != single.meta["fingerprint"]  # the world size is part of the settings
    checkpoint = torch.load(tmp_path / "ckpt" / LAST_CHECKPOINT, weights_only=True)
    assert checkpoint["meta"]["fingerprint"] == ranks[0]["fingerprint"]
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in ranks[0]["state"].items())  # rank 0 wrote it
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [LAST_CHECKPOINT]
