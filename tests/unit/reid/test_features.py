"""Feature extraction: eval-mode outputs in loader order, flip averaging and L2 normalisation by hand."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from advreid.models.reid import build_reid_model
from advreid.reid.features import extract_features

CPU = torch.device("cpu")


@pytest.fixture()
def model_and_loader():
    torch.manual_seed(0)
    model = build_reid_model("small_cnn", num_classes=3, channels=(8, 16))
    model(torch.rand(8, 3, 32, 16))  # a train-mode pass moves the BN running stats off their initial values
    images = torch.rand(7, 3, 32, 16)
    labels, cameras = torch.tensor([4, 4, 1, 1, 9, 9, 9]), torch.tensor([0, 1, 0, 1, 0, 1, 2])
    loader = DataLoader(TensorDataset(images, labels, cameras), batch_size=3)
    return model, loader, images, labels, cameras


def test_features_are_eval_outputs_in_order(model_and_loader) -> None:
    model, loader, images, labels, cameras = model_and_loader
    feats, got_labels, got_cameras = extract_features(model, loader, CPU)
    assert model.training  # the caller's mode is restored
    model.eval()
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(feats, expected)
    assert torch.equal(got_labels, labels) and torch.equal(got_cameras, cameras)
    assert feats.dtype == torch.float32 and got_labels.dtype == torch.int64


def test_flip_average_equals_manual_mean(model_and_loader) -> None:
    model, loader, images, _, _ = model_and_loader
    plain, _, _ = extract_features(model, loader, CPU)
    flipped, _, _ = extract_features(model, loader, CPU, flip=True)
    model.eval()
    with torch.no_grad():
        mirror = model(torch.flip(images, dims=[3]))
    torch.testing.assert_close(flipped, (plain + mirror) / 2)
    assert not torch.allclose(flipped, plain, atol=1e-4)  # the model is not flip-invariant: the check bites


def test_normalised_features(model_and_loader) -> None:
    model, loader, _, _, _ = model_and_loader
    raw, _, _ = extract_features(model, loader, CPU, flip=True)
    unit, _, _ = extract_features(model, loader, CPU, flip=True, normalize=True)
    torch.testing.assert_close(unit, raw / raw.norm(dim=1, keepdim=True))
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(len(unit)))
    torch.testing.assert_close(unit, F.normalize(raw, dim=1))


def test_empty_loader_is_an_error(model_and_loader) -> None:
    model = model_and_loader[0]
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, [], CPU)
