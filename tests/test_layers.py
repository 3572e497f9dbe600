import torch
from torch import nn

from lightnets.models.layers import (
    ConvBnAct,
    channel_shuffle,
    fuse_conv_bn,
    fuse_linear_bn,
    make_divisible,
    pad_kernel_to,
    round_up,
)

from .conftest import randomize_batchnorm


def test_channel_shuffle_matches_paper_permutation():
    # Paper Fig. 1: with g groups of n channels, reshape to (g, n), transpose to (n, g), flatten.
    # Output position i*g + j must hold input channel j*n + i.
    groups, per_group = 3, 4
    x = torch.arange(groups * per_group, dtype=torch.float32).reshape(1, -1, 1, 1)
    out = channel_shuffle(x, groups).flatten().tolist()
    expected = [float(j * per_group + i) for i in range(per_group) for j in range(groups)]
    assert out == expected
    assert out[:3] == [0.0, 4.0, 8.0]  # first channel of each input group, side by side


def test_channel_shuffle_feeds_every_group_from_every_group():
    groups, per_group = 4, 8
    x = torch.arange(groups * per_group, dtype=torch.float32).reshape(1, -1, 1, 1).repeat(2, 1, 3, 5)
    out = channel_shuffle(x, groups)
    assert out.shape == x.shape
    source_group = out[0, :, 0, 0].long() // per_group
    for output_group in source_group.reshape(groups, per_group):
        assert sorted(output_group.tolist()) == sorted(list(range(groups)) * (per_group // groups))
    # Shuffling with g then with n = C/g restores the order (the inverse permutation).
    assert torch.equal(channel_shuffle(out, per_group), x)


def test_channel_shuffle_one_group_is_identity():
    x = torch.randn(2, 6, 3, 3)
    assert channel_shuffle(x, 1) is x


def test_fuse_conv_bn_is_exact_in_eval():
    block = ConvBnAct(8, 16, 3, stride=2, groups=4, act_layer=None)
    randomize_batchnorm(block)
    block.eval()
    x = torch.randn(2, 8, 9, 9)
    fused = fuse_conv_bn(block.conv, block.bn)
    assert torch.allclose(fused(x), block(x), atol=1e-5)
    block.reparameterize()
    assert isinstance(block.bn, nn.Identity)
    assert torch.allclose(block(x), fused(x))


def test_fuse_linear_bn_is_exact_in_eval():
    linear, bn = nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)
    randomize_batchnorm(bn)
    bn.eval()
    x = torch.randn(4, 6)
    assert torch.allclose(fuse_linear_bn(linear, bn)(x), bn(linear(x)), atol=1e-5)


def test_rounding_helpers():
    assert round_up(5.6) == 8 and round_up(140) == 144 and round_up(16) == 16
    assert make_divisible(16 * 0.35) == 8 and make_divisible(32 * 0.75) == 24
    assert pad_kernel_to(torch.ones(2, 2, 1, 1), 3)[0, 0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
