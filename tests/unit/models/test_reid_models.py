"""Re-ID models: registry shapes, BNNeck, IBN-a, in-model normalisation, last stride, local weight loading."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision.models.resnet import resnet50

from advreid.models.reid import (
    IBN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REID_MODELS,
    ReIDOutput,
    ResNetBackbone,
    build_reid_model,
    load_pretrained,
)

FEATURE_DIMS = {"resnet50": 2048, "ibn_resnet50": 2048, "osnet_x1_0": 512, "osnet_x0_25": 128, "small_cnn": 128}


def _build(name: str, num_classes: int = 3, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_reid_model(name, num_classes, **kw)


@pytest.mark.parametrize("name", sorted(REID_MODELS))
def test_forward_shapes_train_and_eval(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name, num_classes=3)
    x = torch.rand(2, 3, 32, 16)
    out = model(x)
    dim = FEATURE_DIMS[name]
    assert isinstance(out, ReIDOutput)
    assert out.logits.shape == (2, 3)
    assert out.feat_triplet.shape == (2, dim) and out.feat.shape == (2, dim)
    model.eval()
    with torch.no_grad():
        feat = model(x)
    assert isinstance(feat, torch.Tensor) and feat.shape == (2, dim)
    assert torch.isfinite(feat).all()


def test_every_registered_model_is_tested() -> None:
    assert set(FEATURE_DIMS) == set(REID_MODELS)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="small_cnn") as info:
        build_reid_model("resnet18", 3)
    assert "resnet18" in str(info.value)


def test_scratch_builder_warns_and_flags() -> None:
    with pytest.warns(UserWarning, match="from scratch"):
        model = build_reid_model("osnet_x0_25", 3)
    assert model.pretrained is None


def test_bnneck_head_matches_batchnorm_by_hand() -> None:
    torch.manual_seed(1)
    model = _build("small_cnn", num_classes=4)
    head = model.head
    assert not head.bottleneck.bias.requires_grad and head.classifier.bias is None
    with torch.no_grad():
        head.bottleneck.weight.uniform_(0.5, 1.5)
    out = model(torch.rand(6, 3, 32, 16))
    f_t = out.feat_triplet
    mean, var = f_t.mean(0), f_t.var(0, unbiased=False)  # train-mode BN uses the biased batch variance
    expected = (f_t - mean) / torch.sqrt(var + head.bottleneck.eps) * head.bottleneck.weight
    torch.testing.assert_close(out.feat, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, expected @ head.classifier.weight.T, rtol=1e-4, atol=1e-5)


def test_normalisation_is_the_first_layer() -> None:
    model = _build("small_cnn")
    seen = {}
    model.backbone.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
    x = torch.rand(2, 3, 32, 16)
    model(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], (x - mean) / std)
    assert "normalize.mean" not in model.state_dict()  # constants, not weights


def test_ibn_a_layout() -> None:
    backbone = ResNetBackbone(ibn=True)
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3):
        for block in layer:
            width = block.conv1.out_channels
            assert isinstance(block.bn1, IBN)
            assert isinstance(block.bn1.IN, nn.InstanceNorm2d) and block.bn1.IN.num_features == width // 2
            assert isinstance(block.bn1.BN, nn.BatchNorm2d) and block.bn1.BN.num_features == width - width // 2
            assert isinstance(block.bn2, nn.BatchNorm2d) and isinstance(block.bn3, nn.BatchNorm2d)
    assert all(isinstance(block.bn1, nn.BatchNorm2d) for block in backbone.layer4)
    assert isinstance(backbone.bn1, nn.BatchNorm2d)


def test_ibn_normalises_first_half_per_instance() -> None:
    torch.manual_seed(2)
    ibn = IBN(8).eval()
    x = torch.randn(3, 8, 5, 4) * 3 + 2
    y = ibn(x)
    first = y[:, :4]
    # instance norm: each sample and channel has zero mean / unit variance, even in eval mode
    torch.testing.assert_close(first.mean((2, 3)), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(first.var((2, 3), unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)
    # eval-mode batch norm with fresh running stats (mean 0, var 1) is the identity up to eps
    torch.testing.assert_close(y[:, 4:], x[:, 4:] / (1 + ibn.BN.eps) ** 0.5)


@pytest.mark.parametrize(("last_stride", "size"), [(1, (4, 2)), (2, (2, 1))])
def test_resnet_last_stride(last_stride: int, size: tuple[int, int]) -> None:
    backbone = ResNetBackbone(last_stride=last_stride).eval()
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 64, 32)).shape == (1, 2048, *size)


def test_resnet_backbone_has_torchvision_keys() -> None:
    reference = {k: v.shape for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    ours = {k: v.shape for k, v in ResNetBackbone().state_dict().items()}
    assert ours == reference


def test_load_local_state_dict_gives_equal_outputs(tmp_path) -> None:
    torch.manual_seed(3)
    source = _build("small_cnn", num_classes=5)
    with torch.no_grad():
        for module in source.backbone.modules():  # non-trivial running stats must travel too
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "weights.pt"
    torch.save({**source.backbone.state_dict(), "fc.weight": torch.zeros(2, 2)}, path)
    torch.manual_seed(4)
    target = _build("small_cnn", num_classes=5, pretrained_path=path)
    report = target.pretrained
    assert report is not None and report.missing == () and report.mismatched == ()
    assert report.unexpected == ("fc.weight",)
    x = torch.rand(3, 3, 32, 16)
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_load_reports_missing_and_mismatched(tmp_path) -> None:
    state = _build("small_cnn").backbone.state_dict()
    del state["features.0.weight"]
    state["features.1.weight"] = torch.ones(7)
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    report = load_pretrained(_build("small_cnn").backbone, path)
    assert report.missing == ("features.0.weight", "features.1.weight")
    assert report.mismatched == ("features.1.weight",)
    with pytest.warns(UserWarning, match="left 2 backbone tensors"):
        build_reid_model("small_cnn", 3, pretrained_path=path)


def test_load_rejects_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(nn.Linear(2, 2), tmp_path / "nope.pt")
    path = tmp_path / "foreign.pt"
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(nn.Linear(2, 2), path)


def test_small_cnn_size_and_demo_input() -> None:
    model = _build("small_cnn", num_classes=10)
    count = sum(p.numel() for p in model.backbone.parameters())
    assert 100_000 <= count <= 300_000
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 128, 64)).shape == (2, 128)


def test_osnet_streams_share_one_gate_and_reduce_16x() -> None:
    model = _build("osnet_x0_25")
    block = model.backbone.conv2[0]
    assert sum(isinstance(m, type(block.gate)) for m in block.modules()) == 1
    assert [len(s) for s in (block.conv2b, block.conv2c, block.conv2d)] == [2, 3, 4]
    with torch.no_grad():
        assert model.backbone.eval()(torch.rand(1, 3, 64, 32)).shape == (1, 128, 4, 2)
