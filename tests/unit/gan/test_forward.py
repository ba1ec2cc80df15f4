"""The forward pass: the environment swap with encoders whose outputs are known, and which parameters each loss
trains under the spec's (DG-Net) gradient routing and under ``routing: literal``."""

import pytest
import torch
from torch import nn

from advreid.gan.forward import GANBatch, generator_terms, ipes_forward
from advreid.gan.networks import Generator, MultiScaleDiscriminator
from advreid.models.reid import ReIDOutput, build_reid_model
from tests.unit.gan.helpers import TINY


class ChannelPose(nn.Module):
    """f_pose = channel 0 of the image; remembers the pose maps it was given."""

    def forward(self, image, pose):
        self.pose = pose
        return image[:, :1]


class ChannelStyle(nn.Module):
    def forward(self, image):  # f_style = mean of channel 1
        return image[:, 1].mean((1, 2))[:, None]


class ChannelIdentity(nn.Module):
    def forward(self, image):  # f_ind = mean of channel 2
        code = image[:, 2].mean((1, 2))[:, None]
        return ReIDOutput(torch.zeros(len(image), 2), code, code)


class Compose(nn.Module):
    """Image = [f_pose; f_style; f_ind] broadcast: each channel shows where its part came from."""

    def forward(self, pose, style, identity):
        b, _, h, w = pose.shape
        return torch.cat(
            [pose, style[:, :, None, None].expand(b, 1, h, w), identity[:, :, None, None].expand(b, 1, h, w)], 1
        )


def _known_generator() -> nn.Module:
    g = nn.Module()
    g.pose_source, g.pose_target = ChannelPose(), ChannelPose()
    g.style_source, g.style_target = ChannelStyle(), ChannelStyle()
    g.decoder_source, g.decoder_target = Compose(), Compose()
    return g


def _constant_images(values):
    return torch.stack([torch.tensor(v)[:, None, None].expand(3, 4, 2) for v in values]).float()


def _batch(source, target, height=4, width=2):
    n = len(source)
    return GANBatch(
        source,
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
        torch.full((n, 18, height, width), 1.0),
        target,
        torch.zeros(n, dtype=torch.long),
        torch.full((n, 18, height, width), 2.0),
    )


def test_swap_puts_the_target_environment_with_the_source_identity():
    source = _constant_images([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    target = _constant_images([[0.7, 0.8, 0.9], [0.15, 0.25, 0.35]])
    g = _known_generator()
    out = ipes_forward(g, ChannelIdentity(), _batch(source, target), routing="dgnet", pose_pairing="cross")
    # I^{S->G}: pose and style (environment) of the paired target image, identity of the source image
    assert torch.allclose(out.source_to_target[:, :2], target[:, :2])
    assert torch.allclose(out.source_to_target[:, 2], source[:, 2])
    assert torch.allclose(out.target_to_source[:, :2], source[:, :2])
    assert torch.allclose(out.target_to_source[:, 2], target[:, 2])
    # re-encoding and decoding again gives back the inputs (the cycle of eq. 3.6)
    assert torch.allclose(out.cycle_source, source) and torch.allclose(out.cycle_target, target)
    # cross pairing: E^S_p sees the target's pose maps (2.0), E^T_p the source's (1.0)
    assert g.pose_source.pose.unique().tolist() == [2.0] and g.pose_target.pose.unique().tolist() == [1.0]
    ipes_forward(g, ChannelIdentity(), _batch(source, target), pose_pairing="own")
    assert g.pose_source.pose.unique().tolist() == [1.0]
    ipes_forward(g, ChannelIdentity(), _batch(source, target), pose_pairing="none")
    assert g.pose_source.pose.abs().sum() == 0
    single = ipes_forward(g, ChannelIdentity(), _batch(source, target), cyclic=False)
    assert single.cycle_source is None and torch.allclose(single.source_to_target[:, 2], source[:, 2])


def _modules():
    torch.manual_seed(0)
    identity = build_reid_model("small_cnn", 4)
    teacher = build_reid_model("small_cnn", 4).eval()
    generator = Generator(TINY.sizes, identity.feature_dim, 2, 2)
    return generator, identity, teacher, MultiScaleDiscriminator(TINY.sizes)


def _grads(term: str, routing: str) -> dict[str, bool]:
    generator, identity, teacher, discriminator = _modules()
    torch.manual_seed(1)
    b = 4
    batch = GANBatch(
        torch.rand(b, 3, 32, 16),
        torch.tensor([0, 0, 1, 1]),
        torch.tensor([0, 1, 0, 1]),
        torch.rand(b, 18, 32, 16),
        torch.rand(b, 3, 32, 16),
        torch.tensor([0, 1, 1, 0]),
        torch.rand(b, 18, 32, 16),
    )
    out = ipes_forward(generator, identity, batch, routing=routing)
    terms = generator_terms(out, batch, generator, identity, teacher, discriminator, routing=routing, enabled=(term,))
    terms[term].backward()

    def touched(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    parts = {
        "identity": identity,
        "teacher": teacher,
        "pose": generator.pose_source,
        "style": generator.style_target,
        "decoder": generator.decoder_source,
    }
    return {name: touched(module) for name, module in parts.items()}


# which modules each loss trains under the spec's routing (sec. 1.3)
ROUTING = {
    "ce": {"identity": True, "pose": False, "style": False, "decoder": False},
    "soft_ce": {"identity": True, "pose": False, "style": False, "decoder": False},
    "kl": {"identity": True, "pose": False, "style": False, "decoder": False},
    "cyc": {"identity": False, "pose": True, "style": True, "decoder": True},
    "con": {"identity": False, "pose": True, "style": True, "decoder": True},
    "adv": {"identity": False, "pose": True, "style": True, "decoder": True},
    "cam": {"identity": False, "pose": True, "style": True, "decoder": True},
}


@pytest.mark.parametrize("term", sorted(ROUTING))
def test_dgnet_routing(term):
    grads = _grads(term, "dgnet")
    assert grads["teacher"] is False
    assert {k: grads[k] for k in ROUTING[term]} == ROUTING[term]


@pytest.mark.parametrize("term", ["cyc", "con", "adv", "cam"])
def test_literal_routing_also_trains_the_identity_encoder(term):
    grads = _grads(term, "literal")
    assert grads["identity"] is True and grads["decoder"] is True and grads["teacher"] is False


def test_frozen_reencoding_leaves_batchnorm_statistics_alone():
    _, identity, _, _ = _modules()
    before = {k: v.clone() for k, v in identity.state_dict().items()}
    from advreid.gan.forward import frozen_call

    image = torch.rand(2, 3, 32, 16, requires_grad=True)
    frozen_call(identity.train(), image).feat_triplet.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in identity.parameters())
    assert all(torch.equal(before[k], v) for k, v in identity.state_dict().items())
