"""Training repeats bit for bit in separate processes under make_deterministic, and the thread count matters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advreid.device import make_deterministic
from advreid.models.reid import build_reid_model
from advreid.params import ParamsError
from advreid.reid.engine import ReIDEngine, seed_everything

ROOT = Path(__file__).resolve().parents[3]


def train_a_few_steps(threads: int, path: str) -> None:
    """In a fresh process: make_deterministic, then 3 steps of small_cnn on a 32 x 3 x 128 x 64 batch (large
    enough that torch splits its kernels over the threads); save the weights to ``path``."""
    make_deterministic(threads, "test.threads")
    seed_everything(0)
    model = build_reid_model("small_cnn", num_classes=8).train()
    engine = ReIDEngine(model, torch.optim.Adam(model.parameters(), lr=1e-3), device=torch.device("cpu"))
    images = torch.rand(32, 3, 128, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8).repeat_interleave(4)
    for _ in range(3):
        engine.forward_backward((images, labels))
    torch.save(model.state_dict(), path)


def _in_a_process(threads: int, path: Path) -> dict[str, torch.Tensor]:
    code = (
        f"from tests.unit.reid.test_determinism import train_a_few_steps; train_a_few_steps({threads}, {str(path)!r})"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    return torch.load(path, weights_only=True)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_train_the_same_bits_and_another_thread_count_does_not(tmp_path):
    first, second = _in_a_process(1, tmp_path / "a.pt"), _in_a_process(1, tmp_path / "b.pt")
    assert _equal(first, second)
    # the reason the thread count is fixed by params: reductions are split by it, and the bits follow
    assert not _equal(first, _in_a_process(2, tmp_path / "c.pt"))


def test_make_deterministic_sets_the_threads_and_the_deterministic_mode():
    threads, mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        make_deterministic(1, "x.threads")
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(ParamsError, match="x.threads: must be >= 0"):
            make_deterministic(-1, "x.threads")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(mode)
