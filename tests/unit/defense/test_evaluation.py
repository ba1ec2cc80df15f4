"""The chapter-5 evaluation protocol: which cells each model gets, its parameter errors, repeatable cells."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from advreid.attacks.evaluation import ReIDSplit
from advreid.defense.evaluation import EvalProtocol, ScoringSettings, TensorImages, attack_with_noise_seed
from advreid.defense.noise import NoiseConfig, build_stochastic_model
from advreid.models.reid import build_reid_model

ATTACKS = {"pgd": {"method": "pgd", "random_start": True}, "sma": {"method": "pgd", "objective": "sma"},
           "fgsm": {"method": "fgsm"}}  # fmt: skip
BUDGETS = {"eps8": {"eps": 8, "step": 2, "steps": 3}, "eps5": {"eps": 5, "step": 2, "steps": 3, "attacks": ["sma"]}}


def _protocol(**kw) -> EvalProtocol:
    return EvalProtocol(attacks=ATTACKS, budgets=BUDGETS, sweep_eps=(2.0, 64.0), sweep_steps=2, **kw)


def test_every_attack_at_every_budget_then_transfer_and_sweep():
    cells, sweep = _protocol().cells(stochastic=True)
    names = [c.name for c in cells]
    assert names == ["pgd-eps8", "sma-eps8", "fgsm-eps8", "sma-eps5", "transfer_pgd-eps8",
                     "sweep_pgd-eps2", "sweep_pgd-eps64"]  # fmt: skip
    assert sweep == {2.0: "sweep_pgd-eps2", 64.0: "sweep_pgd-eps64"}
    by_name = {c.name: c for c in cells}
    assert by_name["sweep_pgd-eps64"].step == pytest.approx(2.5 * 64 / 2 / 255)  # Madry et al.'s 2.5 eps / steps
    assert by_name["transfer_pgd-eps8"].transfer and not by_name["pgd-eps8"].transfer
    assert [c.name for c in _protocol().cells(stochastic=False)[0]][-2:] == ["sweep_pgd-eps2", "sweep_pgd-eps64"]
    assert "transfer_pgd-eps8" not in [c.name for c in _protocol().cells(stochastic=False)[0]]


def test_model_attacks_limit_one_models_white_box_cells_only():
    protocol = _protocol(model_attacks={"ablation": ["pgd", "sma"]}).check("defense.eval", ["vanilla", "ablation"])
    limited = [c.name for c in protocol.cells(True, "ablation")[0]]
    assert limited == ["pgd-eps8", "sma-eps8", "sma-eps5", "transfer_pgd-eps8", "sweep_pgd-eps2", "sweep_pgd-eps64"]
    assert [c.name for c in protocol.cells(True, "vanilla")[0]] == [c.name for c in _protocol().cells(True)[0]]


@pytest.mark.parametrize(
    ("model_attacks", "message"),
    [
        ({"ablation": ["nope"]}, r"defense.eval.model_attacks.ablation: .*unknown \['nope'\]"),
        ({"ablation": []}, r"defense.eval.model_attacks.ablation: need a non-empty list"),
        ({"other": ["pgd"]}, r"defense.eval.model_attacks: 'other' is not an evaluated model"),
    ],
)
def test_model_attacks_errors_name_the_key(model_attacks, message):
    with pytest.raises(ValueError, match=message):
        _protocol(model_attacks=model_attacks).check("defense.eval", ["vanilla", "ablation"])


def test_budget_cells_are_the_white_box_cells_of_one_budget_as_cells_names_them():
    protocol = _protocol()
    only = protocol.budget_cells(["pgd", "fgsm"], "eps8")
    by_name = {c.name: c for c in protocol.cells(stochastic=True)[0]}
    assert [c.name for c in only] == ["pgd-eps8", "fgsm-eps8"]
    assert all(c == by_name[c.name] for c in only)


def test_a_white_box_attack_on_a_stochastic_model_repeats_whatever_the_global_generator():
    """The attack's EOT noise draws come from the cell's own generator: torch's global one is seeded from the OS in
    every process, and a run's numbers must not depend on it."""
    torch.manual_seed(0)
    vanilla = build_reid_model("small_cnn", 4).eval()
    model = build_stochastic_model(vanilla, NoiseConfig(iso_init=0.5), (32, 16), seed=0).eval()
    images = torch.rand(12, 3, 32, 16)
    labels, cameras = torch.arange(4).repeat(3), torch.tensor([0] * 4 + [1] * 8)
    with torch.no_grad():
        features = model(images)
    splits = {"query": ReIDSplit(TensorImages(images[:4]), features[:4], labels[:4], cameras[:4]),
              "gallery": ReIDSplit(TensorImages(images[4:]), features[4:], labels[4:], cameras[4:])}  # fmt: skip
    (cell,) = _protocol().budget_cells(["pgd"], "eps8")
    config = replace(cell.config, eot_samples=2)
    settings, cpu = ScoringSettings(draws=2, eot_samples=2), torch.device("cpu")
    outcomes = []
    for global_seed, noise_seed in ((1, 7), (2, 7), (1, 8)):
        torch.manual_seed(global_seed)
        outcome = attack_with_noise_seed(model, config, cell, splits, torch.arange(4), settings, cpu, noise_seed)
        outcomes.append(outcome.images)
    assert torch.equal(outcomes[0], outcomes[1])  # the global generator changed, the attack did not
    assert not torch.equal(outcomes[0], outcomes[2])  # the attack sees the noise: another noise seed, other images
    assert all(m.generator is None for m in model.noise_modules())  # the model is left on the global generator
