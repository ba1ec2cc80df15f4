"""The trainer: a fixed seed repeats, resume after an interruption equals an uninterrupted run, the cycle loss
falls, target labels are refused, and the batches follow the thesis' sampling rules."""

from dataclasses import replace

import pytest
import torch

from advreid.gan.data import batch_indices
from advreid.gan.trainer import train_ipes_gan
from tests.unit.gan.helpers import TINY, tiny_domain, tiny_teacher

CPU = torch.device("cpu")
SOURCE = tiny_domain("src", identities=4, cameras=2, per_camera=2, seed=0, labelled=True)
TARGET = tiny_domain("tgt", identities=4, cameras=2, per_camera=2, seed=1, labelled=False)


def _train(settings=TINY, seed=0, **kw):
    return train_ipes_gan(settings, SOURCE, TARGET, tiny_teacher(4), "small_cnn", seed=seed, device=CPU, **kw)


def _state(result):
    return {
        f"{name}.{k}": v
        for name in ("generator", "discriminator", "identity")
        for k, v in getattr(result, name).state_dict().items()
    }


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fixed_seed_repeats_and_another_seed_differs():
    first, second, other = (
        _train(checkpoint_path=None),
        _train(checkpoint_path=None),
        _train(seed=1, checkpoint_path=None),
    )
    assert _equal(_state(first), _state(second)) and first.history == second.history
    assert not _equal(_state(first), _state(other))
    assert [r["iteration"] for r in first.history] == [1, 2, 3, 4, 5, 6]
    assert [r["w2"] for r in first.history] == [0.0, 0.0, 1.5, 3.0, 3.0, 3.0]  # ramp start 2, length 2


def test_resume_after_an_interruption_gives_the_uninterrupted_checkpoint(tmp_path):
    whole = _train(checkpoint_path=tmp_path / "a.pt")
    # killed after iteration 3: the checkpoint of iteration 2 survives, iteration 3 is lost and redone
    _train(checkpoint_path=tmp_path / "b.pt", stop_after=3)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["iteration"] == 2
    resumed = _train(checkpoint_path=tmp_path / "b.pt")
    assert resumed.resumed_from == 2
    assert _equal(_state(whole), _state(resumed)) and whole.history == resumed.history
    # the checkpoint files hold the same values (weights, optimizer states, history, the random states training
    # draws from). Not Python's global `random`: training never draws from it, and other threads of the test
    # session do (Prefect's client retries jitter their sleeps with random.uniform), so comparing it was flaky.
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("a.pt", "b.pt"))
    for checkpoint in (a, b):
        del checkpoint["rng"]["python"]
    _assert_same(a, b)


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_a_checkpoint_of_other_settings_is_discarded(tmp_path, capsys):
    _train(checkpoint_path=tmp_path / "c.pt", stop_after=2)
    result = _train(replace(TINY, w1=4.0), checkpoint_path=tmp_path / "c.pt")
    assert result.resumed_from == 0
    assert "discarding checkpoint" in capsys.readouterr().err


def test_a_few_steps_lower_the_cycle_loss():
    settings = replace(TINY, max_iter=30, ramp_start=100, losses=("cyc",), lr_gen=2e-3)
    history = _train(settings, checkpoint_path=None).history
    first, last = history[0]["cyc"], sum(r["cyc"] for r in history[-5:]) / 5
    assert last < 0.9 * first, (first, last)


def test_target_labels_never_reach_the_trainer():
    labelled_target = replace(TARGET, labels=torch.zeros(len(TARGET), dtype=torch.long))
    with pytest.raises(ValueError, match="labels must not reach the trainer"):
        train_ipes_gan(
            TINY, SOURCE, labelled_target, tiny_teacher(4), "small_cnn", seed=0, device=CPU, checkpoint_path=None
        )
    with pytest.raises(ValueError, match="teacher has 5 classes"):
        train_ipes_gan(TINY, SOURCE, TARGET, tiny_teacher(5), "small_cnn", seed=0, device=CPU, checkpoint_path=None)


def test_batches_take_identities_across_cameras_and_target_cameras_in_turn():
    rows_s, rows_t = batch_indices(SOURCE, TARGET, batch_size=4, source_k=2, seed=0, iteration=7)
    labels, cams = SOURCE.labels[rows_s].tolist(), SOURCE.cameras[rows_s].tolist()
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    assert cams[0] != cams[1] and cams[2] != cams[3]
    assert sorted(TARGET.cameras[rows_t].tolist()) == [0, 0, 1, 1]
    assert batch_indices(SOURCE, TARGET, 4, 2, 0, 7) == (rows_s, rows_t)
    assert batch_indices(SOURCE, TARGET, 4, 2, 0, 8) != (rows_s, rows_t)
