"""Table 3.6's metrics from local weights: LPIPS against a second computation, the Fréchet distance against its closed
form, and clear errors for missing or foreign weight files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import alexnet, inception_v3

from advreid.gan import quality
from tests.fixtures_gan import write_lpips_weights as _lpips_files


def test_lpips_matches_the_formula_computed_independently(tmp_path):
    alex_path, lin_path = _lpips_files(tmp_path)
    metric = quality.LPIPS(alex_path, lin_path)
    x, y = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(1)).split(1)
    # second computation: torchvision's AlexNet run layer by layer, taps after ReLUs 1, 2, 3, 4, 5
    net = alexnet(weights=None)
    net.load_state_dict(torch.load(alex_path))
    lins = torch.load(lin_path)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h, out = (2 * img - 1 - shift) / scale, []
        for index, layer in enumerate(net.features[:12]):  # the last max-pool is not used
            h = layer(h)
            if index in (1, 4, 7, 9, 11):
                out.append(h)
        return out

    expected = 0.0
    with torch.no_grad():
        for i, (fx, fy) in enumerate(zip(taps(x), taps(y), strict=True)):
            nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            w = lins[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)
            expected += float(((nx - ny) ** 2 * w).sum(1).mean())
        got = quality.lpips_distance(x, y, metric)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-5)
    assert float(quality.lpips_distance(x, x, metric)[0]) == 0.0
    assert float(quality.lpips_distance(y, x, metric)[0]) == pytest.approx(float(got[0]), rel=1e-6)


def test_frechet_distance_equals_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()  # 5 + (1 + 1 + 4)
    assert quality.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)
    assert quality.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-9)


def test_fid_is_the_frechet_distance_of_the_network_features():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    real, fake = torch.rand(20, 3, 4, 4), torch.rand(20, 3, 4, 4) * 0.5
    with torch.no_grad():
        fr, ff = net(real).double().numpy(), net(fake).double().numpy()
    expected = quality.frechet_distance(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))
    assert quality.fid(real, fake, net, batch_size=7) == pytest.approx(expected, rel=1e-9)


def test_inception_pool_loads_torchvision_weights_and_gives_2048_features(tmp_path):
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    features = quality.InceptionPool(path)(torch.rand(2, 3, 64, 32))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_missing_or_foreign_weights_name_the_file(tmp_path):
    alex_path, lin_path = _lpips_files(tmp_path)
    with pytest.raises(quality.WeightsError, match=r"nope\.pth: .*not found.*nothing is downloaded"):
        quality.LPIPS(tmp_path / "nope.pth", lin_path)
    with pytest.raises(quality.WeightsError, match=r"alexnet\.pth: does not fit torchvision Inception-v3"):
        quality.InceptionPool(alex_path)
    with pytest.raises(quality.WeightsError, match=r"alexnet\.pth: LPIPS v0.1 alex.pth has keys"):
        quality.LPIPS(alex_path, alex_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(quality.WeightsError, match=r"garbage\.pth: not a readable") as info:
        quality.LPIPS(garbage, lin_path)
    assert "weights_only" not in str(info.value)
