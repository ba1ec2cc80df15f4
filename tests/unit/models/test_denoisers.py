"""Denoiser shapes, residual form and registry; autoencoder shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advreid.models.denoisers import DENOISERS, ConvDecoder, ConvEncoder, DnCNN, RDUNet, build_denoiser, wide_dncnn

TINY = {"dncnn": {"depth": 4, "width": 8}, "wide_dncnn": {"depth": 3}, "rdunet": {"base_width": 4}}


def _last_conv(model: nn.Module) -> nn.Conv2d:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]


@pytest.mark.parametrize("name", sorted(DENOISERS))
@pytest.mark.parametrize("size", [(28, 28), (32, 32), (8, 8), (96, 96), (20, 36), (3, 5)])
def test_output_shape_matches_input_for_any_size(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_denoiser(name, 3, **TINY[name])
    out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_an_untrained_denoiser_is_the_identity_and_leaves_it_after_one_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_denoiser(name, 3, **TINY[name])
    x = torch.rand(4, 3, 28, 28)
    assert torch.equal(model(x), x)  # train mode (batch statistics): the residual is exactly 0
    assert torch.equal(model.eval()(x), x)
    assert not _last_conv(model).weight.any()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(x) - torch.zeros_like(x)).pow(2).mean().backward()  # pull the output towards 0: the residual must move
    optimizer.step()
    assert not torch.equal(model.eval()(x), x)


def test_dncnn_follows_zhang_et_al_init() -> None:
    torch.manual_seed(0)
    model = DnCNN(1, depth=4, width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs[1:-1]:  # 8 x (8 * 9) weights: orthonormal rows
        weight = conv.weight.flatten(1)
        torch.testing.assert_close(weight @ weight.T, torch.eye(8), atol=1e-5, rtol=0)
    assert convs[0].bias is not None and not convs[0].bias.any()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-4 and m.momentum == 0.95 for m in norms)


def test_autoencoder_in_eval_mode_decodes_a_sample_alone_as_in_a_batch() -> None:
    torch.manual_seed(0)
    encoder, decoder = ConvEncoder(1, 6, 8, width=4).eval(), ConvDecoder(6, 1, 8, width=4).eval()
    z = encoder(torch.rand(5, 1, 8, 8))  # the black box holds the decoder: its output must not depend on the batch
    torch.testing.assert_close(decoder(z[:1]), decoder(z)[:1])


def test_rdunet_output_is_input_minus_residual_map() -> None:
    torch.manual_seed(0)
    model = RDUNet(1, base_width=4).eval()
    captured: list[torch.Tensor] = []
    model.residual.register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.rand(1, 1, 20, 12)
    out = model(x)
    d = captured[0][..., :20, :12]  # the map is computed on the padded 32 x 16 input, then cropped
    assert captured[0].shape == (1, 1, 32, 16)
    assert torch.allclose(out, x - d)


def test_rdunet_structure_follows_figure_6_2() -> None:
    model = RDUNet(3, base_width=4)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(pools) == 4 and len(ups) == 4
    assert [u.in_channels for u in ups] == [64, 32, 16, 8]  # widths 4, 8, 16, 32, 64
    assert model.residual.kernel_size == (1, 1)
    assert model.residual.in_channels == 4 and model.residual.out_channels == 3


def test_dncnn_layers_and_wide_variant() -> None:
    model = DnCNN(3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(norms) == 15
    assert convs[1].out_channels == 64
    assert [m for m in wide_dncnn(3).modules() if isinstance(m, nn.Conv2d)][1].out_channels == 128


def test_registry_raises_key_error_listing_names() -> None:
    with pytest.raises(KeyError, match="dncnn.*rdunet.*wide_dncnn"):
        build_denoiser("memnet", 3)


@pytest.mark.parametrize("size", [28, 32, (20, 36)])
def test_autoencoder_shapes_and_range(size: int | tuple[int, int]) -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(3, latent_dim=12, size=size, width=4)
    decoder = ConvDecoder(12, 3, size=size, width=4)
    hw = (size, size) if isinstance(size, int) else size
    x = torch.rand(2, 3, *hw)
    z = encoder(x)
    assert z.shape == (2, 12)
    recon = decoder(z)
    assert recon.shape == x.shape
    assert (recon > 0).all() and (recon < 1).all()


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="size"):
        ConvEncoder(3, 4, size=0)
    with pytest.raises(ValueError, match="depth"):
        DnCNN(3, depth=1)
