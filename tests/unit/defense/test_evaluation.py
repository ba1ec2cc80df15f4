"""The chapter-5 evaluation protocol: which cells each model gets, and its parameter errors."""

from __future__ import annotations

import pytest

from advreid.defense.evaluation import EvalProtocol

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
