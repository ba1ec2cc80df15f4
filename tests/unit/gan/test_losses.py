"""Each loss of thesis eqs. 3.1-3.19 against a value computed by hand on tiny tensors; the w2 / w4 ramp."""

import math

import pytest
import torch

from advreid.gan import losses


def test_feature_consistency_terms():
    pose, pose_hat = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    style, style_hat = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    # mean |d pose| = (1 + 2) / 2, mean |d style| = 2
    assert losses.feature_consistency_environment(pose, style, pose_hat, style_hat).item() == pytest.approx(3.5)
    assert losses.feature_consistency_identity(torch.tensor([1.0, -1.0]), torch.zeros(2)).item() == 1.0
    parts = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0)]
    assert losses.feature_consistency(*parts).item() == 10.0


def test_cyclic_reconstruction_is_the_pixel_mean_l1():
    image = torch.zeros(1, 3, 2, 2)
    reconstruction = torch.full((1, 3, 2, 2), 0.5)
    reconstruction[0, 0, 0, 0] = 1.5
    assert losses.cyclic_reconstruction(image, reconstruction).item() == pytest.approx((11 * 0.5 + 1.5) / 12)


def test_camera_and_identity_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert losses.camera_style(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    assert losses.identity_cross_entropy(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(2))
    assert losses.camera_style_total(*[torch.tensor(1.0)] * 4).item() == 4.0


def test_soft_cross_entropy_is_eq_3_17():
    logits, eps = torch.tensor([[0.0, math.log(3.0)]]), 0.2
    expected = -(1 - eps) * math.log(0.25) - eps / 2 * (math.log(0.25) + math.log(0.75))
    assert losses.soft_cross_entropy(logits, torch.tensor([0]), eps).item() == pytest.approx(expected)


def test_teacher_kl_is_kl_of_teacher_to_student():
    student, teacher = torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2)  # p = (1/4, 3/4), q = (1/2, 1/2)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert losses.teacher_kl(student, teacher).item() == pytest.approx(expected, abs=1e-6)
    assert losses.teacher_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_lsgan_terms():
    real, fake = [torch.tensor([1.0, 0.0])], [torch.tensor([0.5])]
    # 1/2 mean((1-1)^2, (0-1)^2) + 1/2 0.5^2
    assert losses.adversarial_discriminator(real, fake).item() == pytest.approx(0.25 + 0.125)
    assert losses.adversarial_discriminator(real * 2, fake * 2).item() == pytest.approx(0.75)  # summed over scales
    assert losses.adversarial_generator([torch.tensor([0.0]), torch.tensor([1.0])]).item() == pytest.approx(0.5)


def test_ramp_is_zero_then_linear_then_constant():
    values = [losses.ramp_weight(i, start=10, length=4, maximum=3.0) for i in (0, 10, 11, 12, 14, 100)]
    assert values == [0.0, 0.0, 0.75, 1.5, 3.0, 3.0]
    # the thesis' schedule: slope 3 / 6000 = 5e-4 per iteration after 20K
    assert losses.ramp_weight(21000, 20000, 6000, 3.0) == pytest.approx(0.5)


def test_total_objective_weights_eq_3_19():
    terms = {name: torch.tensor(1.0) for name in ("cyc", "con", "cam", "adv", "ce", "soft_ce", "kl")}
    assert losses.ipes_gan_objective(terms, w1=5, w2=2, w3=0.5, w4=3).item() == pytest.approx(13.5)
    assert losses.ipes_gan_objective({"cyc": torch.tensor(2.0)}, 5, 0, 0.5, 0).item() == 10.0
    with pytest.raises(KeyError, match="unknown term"):
        losses.ipes_gan_objective({"recon": torch.tensor(1.0)}, 5, 0, 0.5, 0)
