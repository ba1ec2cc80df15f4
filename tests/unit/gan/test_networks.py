"""Shapes of every IPES-GAN module at the demo (128 x 64) and thesis (256 x 128) sizes."""

import pytest
import torch

from advreid.gan.networks import Generator, MultiScaleDiscriminator, NetworkSizes, PoseEncoder, StyleEncoder

SIZES = NetworkSizes(
    pose_width=2,
    res_blocks=1,
    style_width=2,
    style_dim=4,
    mlp_dim=8,
    dis_width=2,
    dis_scales=3,
    dis_res_blocks=1,
    decoder_kernel=5,
)


@pytest.mark.parametrize("height,width", [(128, 64), (256, 128)])
def test_every_module_has_the_specified_shapes(height, width):
    torch.manual_seed(0)
    images, pose = torch.rand(2, 3, height, width), torch.rand(2, 18, height, width)
    encoder = PoseEncoder(SIZES)
    f_pose = encoder(images, pose)
    assert encoder.net[0][0].in_channels == 21  # image + 18 pose channels
    assert f_pose.shape == (2, 8 * SIZES.pose_width, height // 4, width // 4)
    style = StyleEncoder(SIZES, num_cameras=6)
    f_style = style(images)
    assert f_style.shape == (2, SIZES.style_dim)
    assert style.camera_logits(f_style).shape == (2, 6)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in style.net.modules()) == 7  # 6 layers + the 1x1 code
    generator = Generator(SIZES, id_dim=12, source_cameras=6, target_cameras=8)
    image = generator.decoder_source(f_pose, f_style, torch.rand(2, 12))
    assert image.shape == (2, 3, height, width)
    assert image.min() >= 0 and image.max() <= 1
    assert generator.style_target.camera_head.out_features == 8
    scores = MultiScaleDiscriminator(SIZES)(images)
    assert [s.shape for s in scores] == [(2, 1, height // 4 // 2**i, width // 4 // 2**i) for i in range(3)]


def test_adain_parameters_change_the_output_per_sample():
    torch.manual_seed(0)
    generator = Generator(SIZES, id_dim=3, source_cameras=2, target_cameras=2)
    f_pose = torch.rand(1, 16, 8, 4).expand(2, -1, -1, -1)
    style = torch.rand(1, SIZES.style_dim).expand(2, -1)
    out = generator.decoder_source(f_pose, style, torch.tensor([[0.0, 0, 0], [5.0, -5, 5]]))
    assert not torch.allclose(out[0], out[1])  # same pose and style, another identity code
