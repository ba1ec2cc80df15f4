"""The black box gives labels and probabilities only, refuses gradients and counts every query."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.smoothing import Smooth
from advreid.certify.zeroth_order import cge_gradient, rge_gradient, zo_backward
from advreid.models.denoisers import ConvDecoder, ConvEncoder, DnCNN


def _classifier(channels: int = 3, size: int = 8, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))


class _RecordingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


def test_probabilities_sum_to_one_and_labels_are_their_argmax() -> None:
    model = _classifier()
    box = BlackBox(model)
    x = torch.rand(6, 3, 8, 8)
    probs = box.probs(x)
    assert probs.shape == (6, 4)
    assert torch.allclose(probs.sum(1), torch.ones(6))
    assert torch.allclose(probs, torch.softmax(model(x), dim=1))
    assert torch.equal(box.labels(x), model(x).argmax(1))


def test_black_box_refuses_gradient_flow() -> None:
    box = BlackBox(_classifier())
    denoiser = DnCNN(3, depth=3, width=4)
    with pytest.raises(RuntimeError, match="black box refuses gradient flow"):
        box.probs(denoiser(torch.rand(2, 3, 8, 8)))  # a white-box output carries a graph
    with pytest.raises(RuntimeError, match="black box refuses gradient flow"):
        box.labels(torch.rand(2, 3, 8, 8, requires_grad=True))

    probs = box.probs(torch.rand(2, 3, 8, 8))
    assert not probs.requires_grad and probs.grad_fn is None
    with pytest.raises(RuntimeError):
        probs.sum().backward()  # nothing to differentiate through


def test_query_count_and_internal_batching() -> None:
    model = _RecordingModel(_classifier())
    box = BlackBox(model, max_batch=4)
    box.probs(torch.rand(10, 3, 8, 8))
    assert model.batch_sizes == [4, 4, 2]
    assert (box.query_count, box.batch_count) == (10, 3)
    box.labels(torch.rand(3, 3, 8, 8))
    assert (box.query_count, box.batch_count) == (13, 4)
    box.reset_counts()
    assert (box.query_count, box.batch_count) == (0, 0)


def test_wrapping_puts_the_model_in_eval_mode() -> None:
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12), nn.Linear(12, 3))
    model.train()
    BlackBox(model)
    assert not model.training


def test_rge_and_cge_respect_their_query_budgets() -> None:
    batch, q, latent = 3, 5, 6
    box = BlackBox(_classifier(), max_batch=16)
    clean_labels = torch.tensor([0, 1, 2])

    def loss_fn(images: torch.Tensor) -> torch.Tensor:
        probs = box.probs(images)
        rows = clean_labels.repeat(images.shape[0] // batch)
        return -probs.gather(1, rows[:, None]).squeeze(1).clamp_min(1e-12).log()

    rge_gradient(loss_fn, torch.rand(batch, 3, 8, 8), q=q, generator=torch.Generator().manual_seed(0))
    assert box.query_count == (q + 1) * batch

    # AE variant: the decoder sits on the black-box side, ZO runs on the latent (2d queries per sample)
    decoder_box = BlackBox(nn.Sequential(ConvDecoder(latent, 3, 8, width=4), _classifier()))
    cge_gradient(lambda z: decoder_box.probs(z)[:, 0], torch.randn(batch, latent))
    assert decoder_box.query_count == 2 * latent * batch


def test_zo_training_step_updates_the_white_box_only() -> None:
    classifier = _classifier()
    box = BlackBox(classifier)
    encoder = ConvEncoder(3, latent_dim=5, size=8, width=4)
    decoder_box = BlackBox(nn.Sequential(ConvDecoder(5, 3, 8, width=4), classifier))
    denoiser = DnCNN(3, depth=3, width=4)
    x = torch.rand(2, 3, 8, 8)
    targets = box.labels(x)

    z = encoder(denoiser(x + 0.25 * torch.randn_like(x)))  # white box: denoiser + encoder

    def loss_fn(latents: torch.Tensor) -> torch.Tensor:
        probs = decoder_box.probs(latents)
        return -probs.gather(1, targets.repeat(latents.shape[0] // 2)[:, None]).squeeze(1).log()

    zo_backward(z, cge_gradient(loss_fn, z))
    # the denoiser starts at the identity (zero last layer): the estimate reaches that layer first, the layers
    # before it get a gradient through it from the next step on
    last = denoiser.body[-1].weight
    assert last.grad is not None and last.grad.abs().sum() > 0
    assert all(p.grad is not None for p in denoiser.parameters())
    assert all(p.grad is not None for p in encoder.parameters())
    assert all(p.grad is None for p in classifier.parameters())


def test_smooth_can_certify_through_the_black_box_and_counts_its_queries() -> None:
    box = BlackBox(_classifier())
    label, radius = Smooth(box, num_classes=4, sigma=0.1).certify(
        torch.rand(3, 8, 8), n0=20, n=200, alpha=0.01, batch_size=64, generator=torch.Generator().manual_seed(0)
    )
    assert box.query_count == 220
    assert label in (-1, 0, 1, 2, 3) and radius >= 0.0


def test_bad_model_output_is_reported() -> None:
    box = BlackBox(lambda x: x.flatten(1).sum(1))
    with pytest.raises(ValueError, match="float logits of shape"):
        box.probs(torch.rand(2, 3))
    with pytest.raises(ValueError, match="max_batch"):
        BlackBox(_classifier(), max_batch=0)
