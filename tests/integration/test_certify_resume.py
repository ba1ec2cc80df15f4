"""SIGKILL mid-training of train_classifier and train_denoiser, then resume: the final weights equal an
uninterrupted run's bit for bit (epoch checkpoints in persist dirs, advreid.reid.engine.resumable_epochs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from advreid.data.formats.classification import sklearn_digits_file
from advreid.data.registry import read_dataset
from advreid.stages import train_classifier, train_denoiser
from advreid.stages.ingest import write_dataset

pytestmark = pytest.mark.slow  # two tiny trainings, each run twice and once killed

PARAMS = {
    "seed": 0,
    "train_classifier": {
        "dataset": "digits",
        "arch": "resnet_digits",
        "arch_options": {"width": 4},
        "epochs": 12,
        "batch_size": 128,
        "lr": 0.05,
        "device": "cpu",
        "threads": 1,
        "reconstruction": {"dataset": "digits", "measurements": 32, "hidden": 16, "epochs": 1, "batch_size": 256},
    },
    "train_denoiser": {
        "methods": ["zo_ae_ruds"],
        "settings": {
            "sigmas": [0.25],
            "q": 4,
            "epochs": 8,
            "batch_size": 256,
            "lr": 0.001,
            "pretrain_epochs": 1,
            "dncnn": {"depth": 3, "width": 4},
            "rdunet": {"base_width": 2},
            "ae_width": 4,
            "validation_points": 20,
            "reconstruction_epochs": 1,
            "device": "cpu",
            "threads": 1,
        },
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("certify-resume")
    (root / "data" / "raw" / "digits").mkdir(parents=True)
    shutil.copy(sklearn_digits_file(), root / "data" / "raw" / "digits")
    raw = read_dataset("digits", root / "data" / "raw" / "digits", name="digits")
    write_dataset(raw, root / "data" / "processed" / "digits", "data/raw/digits")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def _env(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("ADVREID_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)


def _kill_after_epoch(root: Path, command: list[str], checkpoint: Path, epoch: int) -> None:
    """Run ``advreid <command>`` in a subprocess and SIGKILL it once ``checkpoint`` holds ``epoch`` epochs."""
    env = {**os.environ, "ADVREID_ROOT": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "advreid", *command], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["epoch"] >= epoch:
                break
        except (RuntimeError, EOFError):  # caught between the write and the rename: look again
            pass
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the training finished before it could be killed"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    assert all(torch.equal(wa[key], wb[key]) for key in wa), a.name


def test_classifier_and_denoiser_resume_after_sigkill_bit_for_bit(project, tmp_path, monkeypatch) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(project, reference)
    shutil.copytree(project, killed)
    _env(monkeypatch, reference)
    assert train_classifier.main([]) == 0
    assert train_denoiser.main(["zo_ae_ruds"]) == 0

    classifier = Path("models") / "classifier" / "digits.pt"
    _kill_after_epoch(killed, ["train-classifier"], killed / "models/classifier/checkpoints/last.pt", 3)
    assert not (killed / classifier).exists()
    _env(monkeypatch, killed)
    assert train_classifier.main([]) == 0
    _assert_identical(reference / classifier, killed / classifier)
    history = torch.load(killed / classifier, weights_only=True)["history"]
    assert history == torch.load(reference / classifier, weights_only=True)["history"] and len(history) == 12

    checkpoint = killed / "models" / "denoiser_checkpoints" / "zo_ae_ruds" / "sigma_0.25.pt"
    _kill_after_epoch(killed, ["train-denoiser", "zo_ae_ruds"], checkpoint, 3)
    assert (
        torch.load(checkpoint, weights_only=True)["epoch"] < 8 and not (killed / "models/denoisers/zo_ae_ruds").exists()
    )
    assert train_denoiser.main(["zo_ae_ruds"]) == 0
    for name in ("sigma_0.25.pt", "reconstruction.pt"):
        _assert_identical(
            reference / "models/denoisers/zo_ae_ruds" / name, killed / "models/denoisers/zo_ae_ruds" / name
        )
    curves = Path("reports") / "certify" / "training" / "zo_ae_ruds.csv"
    assert (reference / curves).read_text() == (killed / curves).read_text()  # loss and noisy accuracy per epoch
