"""Chapter-6 classifiers: output shapes over the registry, normalisation as the first layer, ResNet-110's layout."""

from __future__ import annotations

import pytest
import torch

from advreid.models.classifiers import CLASSIFIERS, BasicBlock, CifarResNet, build_classifier

# (input side, channels) each registered classifier is meant for; a new registry entry must add its own.
INPUTS = {"resnet_digits": (8, 1), "resnet110": (32, 3), "resnet18": (96, 3), "resnet50": (32, 3), "vgg16": (32, 3)}


def test_every_registered_classifier_has_a_test_input() -> None:
    assert sorted(INPUTS) == sorted(CLASSIFIERS)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_output_shape_is_batch_by_classes(name: str) -> None:
    side, channels = INPUTS[name]
    torch.manual_seed(0)
    model = build_classifier(name, 7, [0.5] * channels, [0.25] * channels, side).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, side, side))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_normalisation_is_the_first_layer() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet_digits", 10, [0.3], [0.2], 8, width=4).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), model.body((x - 0.3) / 0.2), atol=1e-6)
        # an image equal to the mean reaches the body as zeros
        assert torch.equal(model.normalize(torch.full((1, 1, 8, 8), 0.3)), torch.zeros(1, 1, 8, 8))


def test_normalisation_statistics_travel_in_the_state_dict() -> None:
    model = build_classifier("resnet_digits", 10, [0.3], [0.2], 8, width=4)
    state = model.state_dict()
    assert torch.equal(state["normalize.mean"].flatten(), torch.tensor([0.3]))
    other = build_classifier("resnet_digits", 10, [0.0], [1.0], 8, width=4)
    other.load_state_dict(state)
    assert torch.equal(other.normalize.std.flatten(), torch.tensor([0.2]))


def test_resnet110_has_three_stages_of_eighteen_basic_blocks() -> None:
    model = build_classifier("resnet110", 10, [0.5] * 3, [0.25] * 3, 32).body
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 54
    widths = [b.conv2.out_channels for b in blocks]
    assert widths == [16] * 18 + [32] * 18 + [64] * 18
    # 6n + 2 weighted layers: the stem, 2 per block, the classifier
    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert convs + 1 == 110


def test_torchvision_resnets_get_a_cifar_stem_for_small_inputs() -> None:
    small = build_classifier("resnet50", 10, [0.5] * 3, [0.25] * 3, 32).body
    large = build_classifier("resnet18", 10, [0.5] * 3, [0.25] * 3, 96).body
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7)


def test_bad_names_and_arguments_are_reported() -> None:
    with pytest.raises(KeyError, match="valid names:.*resnet110"):
        build_classifier("resnet1000", 10, [0.5], [0.25], 8)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(20 + 1, 10)
    with pytest.raises(ValueError, match="std > 0"):
        build_classifier("resnet_digits", 10, [0.5], [0.0], 8)
    vgg = build_classifier("vgg16", 10, [0.5] * 3, [0.25] * 3, 32).eval()
    with pytest.raises(ValueError, match="at least 32x32"):
        vgg(torch.rand(1, 3, 8, 8))
    digits = build_classifier("resnet_digits", 10, [0.5], [0.25], 8)
    with pytest.raises(ValueError, match="expected 1 channels"):
        digits(torch.rand(1, 3, 8, 8))
