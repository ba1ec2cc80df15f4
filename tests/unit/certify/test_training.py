"""Training of the chapter-6 defenses (FO and ZO, with and without AE) and the reconstruction task of Table 6.3."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.reconstruction import (
    RECONSTRUCTION,
    CompressedSensing,
    ReconstructionBlackBox,
    ReconstructionNet,
    ReconstructionStability,
    ReconstructionTotal,
    defended_reconstruction,
    l2_pgd,
    reconstruction_errors,
)
from advreid.certify.training import (
    CLASSIFICATION,
    METHODS,
    DefenseMethod,
    DefenseTrainer,
    StabilityLoss,
    TotalLoss,
    TrainSchedule,
    black_box_scores,
    build_defense,
    get_method,
    prepare_defense,
    train_defense,
)
from advreid.models.classifiers import build_classifier

TINY = {"dncnn": {"depth": 3, "width": 8}, "rdunet": {"base_width": 4}}
LATENT = 6


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images[:256] / 16.0, dtype=torch.float32)[:, None]  # (256, 1, 8, 8) in [0, 1]
    return images, torch.tensor(data.target[:256])


@pytest.fixture(scope="module")
def classifier(digits) -> nn.Module:
    """A small digits classifier, trained for a few steps so that its predictions vary across classes."""
    images, labels = digits
    torch.manual_seed(0)
    model = build_classifier("resnet_digits", 10, [0.3], [0.3], 8, width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(60):
        index = torch.arange(step * 32, step * 32 + 32) % images.shape[0]
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def _defense(name: str, seed: int = 0):
    torch.manual_seed(seed)
    method = get_method(name)
    return method, build_defense(method, 1, (8, 8), LATENT, TINY[method.denoiser], ae_width=4)


def _trainer(name: str, target: nn.Module, seed: int = 0, task=None, **kwargs) -> DefenseTrainer:
    method, defense = _defense(name, seed)
    options = {"sigma": 0.25, "q": 8, "generator": torch.Generator().manual_seed(seed), **kwargs}
    return DefenseTrainer(method, defense, target, task or CLASSIFICATION, **options)


class Permuted(nn.Module):
    """The classifier with its classes renamed: logit j of this model is logit perm[j] of the original."""

    def __init__(self, model: nn.Module, perm: torch.Tensor) -> None:
        super().__init__()
        self.model, self.perm = model, perm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.perm]


class Probe(nn.Module):
    """Wraps a target and records, per call, whether autograd could reach it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        )
        return self.model(x)


# --- methods -----------------------------------------------------------------------------------------------


def test_registry_has_the_thesis_methods_with_their_parts() -> None:
    expected = {  # name: (denoiser, objective, order, autoencoder, estimator) - thesis Table 6.1, Algorithms 4-5
        "fo_ds": ("dncnn", "ds", "first", False, None),
        "fo_ae_ds": ("dncnn", "ds", "first", True, None),
        "zo_ds": ("dncnn", "ds", "zeroth", False, "rge"),
        "zo_ae_ds": ("dncnn", "ds", "zeroth", True, "cge"),
        "fo_ruds": ("rdunet", "ruds", "first", False, None),
        "fo_ae_ruds": ("rdunet", "ruds", "first", True, None),
        "zo_ruds": ("rdunet", "ruds", "zeroth", False, "rge"),
        "zo_ae_ruds": ("rdunet", "ruds", "zeroth", True, "cge"),
    }
    for name, parts in expected.items():
        m = METHODS[name]
        assert (m.denoiser, m.objective, m.order, m.autoencoder, m.estimator) == parts, name
    with pytest.raises(KeyError, match="valid names"):
        get_method("zo_magic")
    with pytest.raises(ValueError, match="CGE needs"):
        DefenseMethod("x", "x", "dncnn", "ds", "zeroth", False, "cge")
    with pytest.raises(ValueError, match="estimator"):
        DefenseMethod("x", "x", "dncnn", "ds", "first", False, "rge")


# --- targets come from the black box -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fo_ds", "zo_ds"])
def test_training_targets_follow_the_black_box_not_the_dataset(digits, classifier, name: str) -> None:
    images, labels = digits[0][:32], digits[1][:32]
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    target = Permuted(classifier, perm)
    expected = torch.argsort(perm)[classifier(images).argmax(dim=1)]  # the renamed predictions
    targets = black_box_scores(BlackBox(target), images)
    assert torch.equal(targets.argmax(dim=1), expected)
    assert (expected != labels).float().mean() > 0.5  # the renaming really moves the labels

    trainer = _trainer(name, target)
    noisy = trainer.noisy(images)
    with torch.no_grad():
        logits = target(trainer.defense(noisy))  # train mode, as inside the step
        denoised = trainer.defense.denoiser(noisy)
    terms = trainer.forward_backward(images, targets, noisy)
    assert terms["objective"] == pytest.approx(F.cross_entropy(logits, expected).item(), rel=1e-4)
    assert terms["objective"] != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-2)
    assert terms["mse"] == pytest.approx((denoised - images).pow(2).mean().item(), rel=1e-5)


# --- the training loop reduces its objective ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["fo_ruds", "zo_ruds", "zo_ae_ruds"])
def test_training_reduces_the_objective_on_digits(digits, classifier, name: str) -> None:
    images = digits[0]
    trainer = _trainer(name, classifier, q=16)
    targets = black_box_scores(BlackBox(classifier), images)
    generator = torch.Generator().manual_seed(1)
    prepare_defense(trainer, images, TrainSchedule(3, 32, 1e-2), generator=generator, progress=False)
    held, held_targets = images[:64], targets[:64]
    # the objective on four fixed noise draws: one draw's value moves by a few percent on its own
    noisy = [held + 0.25 * torch.randn(held.shape, generator=torch.Generator().manual_seed(2 + k)) for k in range(4)]
    before = sum(trainer.objective_value(held, held_targets, n) for n in noisy)
    history = train_defense(trainer, images, targets, TrainSchedule(3, 32, 1e-2), generator=generator, progress=False)
    after = sum(trainer.objective_value(held, held_targets, n) for n in noisy)
    # from the identity denoiser there is less to gain in 3 epochs; measured: 0.80 (FO), 0.86 (RGE), 0.68 (CGE).
    # At lr 3e-3 RGE's ratio was 0.96 on one machine and 0.98-1.01 on another (CPU kernels): too close to 1 to test.
    assert after < {"fo_ruds": 0.9, "zo_ruds": 0.95, "zo_ae_ruds": 0.8}[name] * before, (before, after)
    assert history[-1]["loss"] < history[0]["loss"]


# --- the zeroth-order estimate is chained through the white box (eqs. 6.15, 6.18) ---------------------------


def _gradients(defense) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in defense.trainable_parameters()])


@pytest.mark.parametrize(("first", "zeroth"), [("fo_ae_ds", "zo_ae_ds"), ("fo_ae_ruds", "zo_ae_ruds")])
def test_cge_training_gradient_equals_the_first_order_gradient(digits, classifier, first, zeroth) -> None:
    target = copy.deepcopy(classifier).double()
    images = digits[0][:8].double()
    targets = black_box_scores(BlackBox(target), images)
    _, defense = _defense(zeroth)
    defense.double()
    twin = copy.deepcopy(defense)
    zo = DefenseTrainer(get_method(zeroth), defense, target, sigma=0.25, mu=1e-5)
    fo = DefenseTrainer(get_method(first), twin, target, sigma=0.25)
    noisy = images + 0.25 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zo_terms = zo.forward_backward(images, targets, noisy)
    fo_terms = fo.forward_backward(images, targets, noisy)
    assert zo_terms["loss"] == pytest.approx(fo_terms["loss"], rel=1e-9)
    estimate, truth = _gradients(defense), _gradients(twin)
    assert torch.linalg.vector_norm(estimate - truth) < 1e-6 * torch.linalg.vector_norm(truth)


def test_rge_training_gradient_points_along_the_first_order_gradient(digits, classifier) -> None:
    target = copy.deepcopy(classifier).double()
    images = digits[0][:8].double()
    targets = black_box_scores(BlackBox(target), images)
    _, defense = _defense("zo_ruds")
    defense.double()
    twin = copy.deepcopy(defense)
    zo = DefenseTrainer(get_method("zo_ruds"), defense, target, sigma=0.25, q=3000, mu=1e-4,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    fo = DefenseTrainer(get_method("fo_ruds"), twin, target, sigma=0.25)
    noisy = images + 0.25 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zo.forward_backward(images, targets, noisy)
    fo.forward_backward(images, targets, noisy)
    cosine = F.cosine_similarity(_gradients(defense), _gradients(twin), dim=0)
    assert cosine > 0.9


# --- the black box: no gradient reaches it, queries as budgeted ---------------------------------------------


@pytest.mark.parametrize("name", ["zo_ds", "zo_ae_ds", "zo_ruds", "zo_ae_ruds"])
def test_zeroth_order_never_differentiates_through_the_target(digits, classifier, name: str) -> None:
    images = digits[0][:16]
    probe = Probe(copy.deepcopy(classifier))
    trainer = _trainer(name, probe)
    targets = black_box_scores(BlackBox(classifier), images)
    trainer.black_box.reset_counts()
    trainer.forward_backward(images, targets)
    assert probe.calls and not any(probe.calls)
    assert all(p.grad is None for p in probe.parameters())
    per_sample = trainer.black_box.query_count / images.shape[0]
    assert per_sample == (trainer.q + 1 if trainer.method.estimator == "rge" else 2 * LATENT + 1)
    assert trainer.black_box.batch_count == 1  # the reference batch z and all estimator queries in one call
    with pytest.raises(RuntimeError, match="refuses gradient flow"):
        trainer.black_box(images.requires_grad_(True))


def test_first_order_does_differentiate_through_the_target(digits, classifier) -> None:
    probe = Probe(copy.deepcopy(classifier))
    trainer = _trainer("fo_ds", probe)
    images = digits[0][:16]
    trainer.forward_backward(images, black_box_scores(BlackBox(classifier), images))
    assert any(probe.calls)  # the probe can see a white-box call
    assert trainer.black_box is None


def test_training_repeats_with_a_seed_and_reports_queries(digits, classifier) -> None:
    images = digits[0][:96]
    targets = black_box_scores(BlackBox(classifier), images)
    runs = []
    for _ in range(2):
        trainer = _trainer("zo_ds", classifier, seed=3)
        history = train_defense(trainer, images, targets, TrainSchedule(2, 32, 1e-3),
                                generator=torch.Generator().manual_seed(4), progress=False)  # fmt: skip
        runs.append((history, trainer.defense.state_dict()))
    (first, state), (second, state_again) = runs
    assert first == second
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert [r["queries_per_sample"] for r in first] == [9.0, 9.0]  # q + 1 with q = 8


def test_autoencoder_is_pretrained_then_its_decoder_stays_frozen(digits, classifier) -> None:
    images = digits[0][:128]
    trainer = _trainer("zo_ae_ruds", classifier)
    defense = trainer.defense
    losses = prepare_defense(trainer, images, TrainSchedule(4, 32, 1e-2), progress=False)["autoencoder"]
    assert losses[-1] < losses[0]
    decoder = copy.deepcopy(defense.decoder.state_dict())
    targets = black_box_scores(BlackBox(classifier), images)
    train_defense(trainer, images, targets, TrainSchedule(1, 32, 1e-2), progress=False)
    assert not defense.decoder.training and all(not p.requires_grad for p in defense.decoder.parameters())
    assert all(torch.equal(v, defense.decoder.state_dict()[k]) for k, v in decoder.items())


def test_objectives_agree_between_first_and_zeroth_order_forms() -> None:
    gen = torch.Generator().manual_seed(0)
    clean = torch.softmax(torch.randn(5, 4, generator=gen), dim=1)
    scores = torch.softmax(torch.randn(5, 4, generator=gen), dim=1)
    recon_clean, recon = torch.rand(5, 16, generator=gen), torch.rand(5, 16, generator=gen)
    for loss, (s, c) in (
        (StabilityLoss(), (scores, clean)),
        (TotalLoss(1.0, 4.0), (scores, clean)),
        (ReconstructionStability(), (recon, recon_clean)),
        (ReconstructionTotal(1.0, 4.0), (recon, recon_clean)),
    ):
        assert loss.per_sample(s, c, s).mean().item() == pytest.approx(loss.batch(s, c).item(), rel=1e-5)
    # hand value of the reconstruction stability: mean squared error per sample
    assert ReconstructionStability().batch(torch.ones(2, 4), torch.zeros(2, 4)).item() == 1.0


# --- reconstruction task (Table 6.3) ------------------------------------------------------------------------


def test_compressed_sensing_is_a_rescaled_back_projection() -> None:
    degrade = CompressedSensing((1, 8, 8), 32, seed=0, low=-1.0, high=2.0)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(32, 64, generator=generator) / 32**0.5
    expected = (x.flatten(1) @ matrix.T @ matrix).view(x.shape)
    assert torch.allclose(degrade.back_projection(x), expected, atol=1e-5)
    assert torch.allclose(degrade(x), ((expected + 1.0) / 3.0).clamp(0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="measurements must be in"):
        CompressedSensing((1, 8, 8), 64)


def test_l2_pgd_respects_its_budget_and_raises_the_reconstruction_error() -> None:
    torch.manual_seed(0)
    net = ReconstructionNet((1, 8, 8), hidden=32).eval()
    inputs = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    originals = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(l2_pgd(net, inputs, originals, 0.0), inputs)
    adversarial = l2_pgd(net, inputs, originals, 1.0, steps=10, generator=torch.Generator().manual_seed(3))
    assert (torch.linalg.vector_norm((adversarial - inputs).flatten(1), dim=1) <= 1.0 + 1e-5).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        clean_error = (net(inputs) - originals).pow(2).sum()
        attacked_error = (net(adversarial) - originals).pow(2).sum()
    assert attacked_error > clean_error


def test_reconstruction_errors_hand_values() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    rmse, ssim = reconstruction_errors(x, x)
    assert rmse == 0.0 and ssim == pytest.approx(1.0)
    rmse, ssim = reconstruction_errors(x + 0.25, x)
    assert rmse == pytest.approx(0.25, rel=1e-6)
    assert ssim < 1.0
    with pytest.raises(ValueError, match="must be equal"):
        reconstruction_errors(x, x[:2])


def test_defended_reconstruction_averages_noise_draws_and_black_box_refuses_grad() -> None:
    torch.manual_seed(0)
    net = ReconstructionNet((1, 8, 8), hidden=16).eval()
    _, defense = _defense("fo_ds")
    defense.eval()
    inputs = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(defended_reconstruction(net, defense, inputs, 0.0, 4), net(defense(inputs)), atol=1e-6)
        assert torch.equal(defended_reconstruction(net, None, inputs, 0.5, 4), net(inputs))
    box = ReconstructionBlackBox(net)
    assert box(inputs).shape == (3, 64) and box.query_count == 3
    with pytest.raises(RuntimeError, match="refuses gradient flow"):
        box(inputs.requires_grad_(True))


def test_reconstruction_defense_trains_by_queries(digits) -> None:
    images = digits[0][:128]
    torch.manual_seed(0)
    degrade = CompressedSensing((1, 8, 8), 32, seed=0, low=-0.5, high=1.5)
    net = ReconstructionNet((1, 8, 8), hidden=32).eval().requires_grad_(False)
    inputs = degrade(images)
    trainer = _trainer("zo_ruds", net, task=RECONSTRUCTION, q=16)
    targets = black_box_scores(RECONSTRUCTION.black_box(net), inputs)
    held = inputs[:64]
    noisy = held + 0.25 * torch.randn(held.shape, generator=torch.Generator().manual_seed(5))
    before = trainer.objective_value(held, targets[:64], noisy)
    history = train_defense(trainer, inputs, targets, TrainSchedule(3, 32, 3e-3), progress=False)
    assert trainer.objective_value(held, targets[:64], noisy) < before
    assert history[0]["queries_per_sample"] == 17.0
