"""Noise modules and the MP-SNN losses: statistics, exact noise-off, placement, FCA and r(phi) by hand, projections."""

from __future__ import annotations

import math

import pytest
import torch

from advreid.defense.losses import (
    LossSettings,
    feature_covariance_alignment,
    harmonic_number,
    noise_regularizer,
)
from advreid.defense.noise import (
    NoiseConfig,
    anisotropic_noise,
    build_stochastic_model,
    isotropic_noise,
    noise_enabled,
    noise_sites,
)
from advreid.models.reid import build_reid_model
from advreid.reid.losses import batch_hard_indices

SIZE = (16, 8)


def tiny(noise: NoiseConfig = NoiseConfig()):
    torch.manual_seed(0)
    vanilla = build_reid_model("small_cnn", 4, channels=(4, 8))
    return vanilla, build_stochastic_model(vanilla, noise, SIZE)


def test_anisotropic_noise_has_zero_mean_and_covariance_phi_a_phi_a_t():
    generator = torch.Generator().manual_seed(0)
    phi_a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    samples = anisotropic_noise(torch.zeros(200_000, 3, dtype=torch.float64), phi_a, generator)
    assert samples.dtype == torch.float64
    assert samples.mean(0).abs().max() < 0.01
    assert torch.allclose(torch.cov(samples.T), phi_a @ phi_a.T, atol=0.01)


def test_isotropic_noise_has_the_sigma_map_as_std_and_per_batch_draws_repeat():
    sigma = torch.tensor([0.1, 2.0]).view(2, 1, 1)
    out = isotropic_noise(torch.ones(20_000, 2, 1, 1), sigma, torch.Generator().manual_seed(1))
    assert torch.allclose(out.mean((0, 2, 3)), torch.ones(2), atol=0.05)
    assert torch.allclose(out.std((0, 2, 3)), sigma.flatten(), rtol=0.03)
    shared = isotropic_noise(torch.zeros(3, 2, 1, 1), sigma, torch.Generator().manual_seed(1), per_sample=False)
    assert torch.equal(shared[0], shared[2])


def test_noise_off_gives_the_vanilla_output_exactly_and_noise_stays_on_in_eval_mode():
    x = torch.rand(6, 3, *SIZE)
    vanilla, model = tiny()
    model.eval()
    with torch.no_grad():
        noisy_a, noisy_b = model(x), model(x)
        with noise_enabled(model, False):
            quiet = model(x)
        with noise_enabled(model, False):
            plain = type(vanilla).forward(vanilla, x)
    assert not torch.equal(noisy_a, noisy_b)
    assert torch.equal(quiet, plain)
    assert len(model.isotropic) == 2 and model.isotropic[0].sigma.shape == (4, 16, 8)
    assert model.anisotropic.phi_a.shape == (8, 8) and torch.equal(
        model.anisotropic.phi_a, model.anisotropic.phi_a.tril()
    )
    assert model.anisotropic.phi_a.max() <= 1 / math.sqrt(8)


def test_a_seeded_generator_repeats_the_draws():
    x = torch.rand(4, 3, *SIZE)
    _, model = tiny()
    model.eval()
    outs = []
    for _ in range(2):
        model.set_generator(torch.Generator().manual_seed(5))
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(*outs)


@pytest.mark.parametrize("arch, count", [("resnet50", 17), ("osnet_x0_25", 7)])
def test_placement_rule_on_the_thesis_backbones(arch, count):
    with pytest.warns(UserWarning):
        model = build_reid_model(arch, 3)
    assert len(noise_sites(model.backbone)) == count


def test_projection_clamps_phi_and_re_tril_phi_a():
    _, model = tiny()
    with torch.no_grad():
        model.isotropic[0].sigma.fill_(-1.0)
        model.anisotropic.phi_a.fill_(1.0)
    model.project()
    assert float(model.isotropic[0].sigma.min()) == pytest.approx(0.01)
    assert torch.equal(model.anisotropic.phi_a, torch.ones(8, 8).tril())


def test_fca_matches_a_hand_computed_value():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    positive, negative, valid = batch_hard_indices(features, labels)
    assert positive.tolist() == [1, 0, 3, 2] and negative.tolist() == [2, 2, 0, 0] and valid.all()
    phi_a = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    sigma = phi_a @ phi_a.T
    d = [features[1] - features[2], features[0] - features[2], features[3] - features[0], features[2] - features[0]]
    expected = math.log(sum(float(v @ sigma @ v) for v in d) / 4)
    assert float(feature_covariance_alignment(features, labels, phi_a)) == pytest.approx(expected, rel=1e-6)


def test_regularizer_uses_the_harmonic_number_of_the_epoch():
    assert harmonic_number(3) == pytest.approx(1 + 1 / 2 + 1 / 3)
    sigmas = [torch.full((2, 2), 0.25), torch.full((3,), 4.0)]
    assert float(noise_regularizer(sigmas, 2)) == pytest.approx(-(4 * 0.5 + 3 * 2.0) / 1.5)


def test_negative_lambda_or_eta_is_an_error_naming_it():
    with pytest.raises(ValueError, match="lambda_r"):
        LossSettings(lambda_r=-1e-4).check()
    with pytest.raises(ValueError, match="eta"):
        LossSettings(eta=-0.5).check()


def test_a_deep_copy_draws_its_own_noise_from_its_own_modules():
    import copy

    _, model = tiny()
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        clone.anisotropic.phi_a.zero_()
        for noise in clone.isotropic:
            noise.sigma.zero_()
        x = torch.rand(2, 3, *SIZE)
        with noise_enabled(clone, False):
            quiet = clone(x)
        assert torch.allclose(clone(x), quiet)  # zero noise in the copy; the original's noise is untouched
    assert model.anisotropic.phi_a.abs().sum() > 0
