"""Tiling: weights form a partition of unity, and tiled == whole for a local function."""
import math

import pytest
import torch
from torch import nn

from refusion.inference.tiling import blend_weights_1d, tile_layout, tile_starts, tiled_apply, validate_tiling


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("height,width,tile,overlap,multiple", [
    (64, 64, 32, 8, 8), (96, 72, 32, 16, 8), (200, 136, 64, 16, 8), (40, 40, 64, 16, 8), (72, 48, 16, 12, 4),
])
def test_blend_weights_sum_to_one_everywhere(height, width, tile, overlap, multiple):
    total = torch.zeros(height, width, dtype=torch.float64)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for spec, w in tile_layout(height, width, tile, overlap, multiple):
        assert spec.top % multiple == 0 and spec.left % multiple == 0
        assert spec.height % multiple == 0 and spec.width % multiple == 0
        assert (w >= 0).all()
        total[spec.top:spec.top + spec.height, spec.left:spec.left + spec.width] += w
        covered[spec.top:spec.top + spec.height, spec.left:spec.left + spec.width] |= w > 0
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    assert covered.all()


def test_weights_are_smooth_and_zero_near_inner_edges():
    weights = blend_weights_1d(96, 32, 16, 8)
    first, middle = weights[0], weights[1]
    assert torch.all(middle[:4] == 0) and torch.all(middle[-4:] == 0)   # margin overlap // 4
    assert torch.all(first[:16] == 1)                                      # no neighbour on the image edge
    assert torch.all(torch.diff(middle[:16]) >= 0)                         # monotone fade-in
    assert torch.diff(middle[:16]).abs().max() < 0.25                      # no hard step


def test_tile_starts_cover_the_axis():
    assert tile_starts(64, 64, 16) == [0]
    starts = tile_starts(200, 64, 16, 8)
    assert starts[0] == 0 and starts[-1] + 64 == 200
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("tile,overlap,multiple,match", [
    (0, 0, 8, "tile_size"), (30, 8, 8, "multiple of 8"), (32, 32, 8, "tile_overlap"), (32, -1, 8, "tile_overlap"),
])
def test_invalid_tiling_is_refused(tile, overlap, multiple, match):
    with pytest.raises(ValueError, match=match):
        validate_tiling(tile, overlap, multiple)


def _local_net(in_ch=3, out_ch=5, seed=0):
    # receptive-field radius 3 (three 3x3 convs), zero padding like the networks' convs
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.GELU(), nn.Conv2d(8, out_ch, 3, padding=1)).eval()


def test_tiled_equals_whole_for_local_network():
    net = _local_net()
    x = torch.rand(2, 3, 64, 56)
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_apply(net, x, tile=32, overlap=16, multiple=8)
    assert tiled.shape == (2, 5, 64, 56)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_tiled_with_several_inputs_and_padding_to_multiple():
    net = _local_net(in_ch=6, out_ch=3)
    a, b = torch.rand(1, 3, 60, 44), torch.rand(1, 3, 60, 44)
    fn = lambda u, v: net(torch.cat([u, v], 1))
    with torch.no_grad():
        tiled = tiled_apply(fn, (a, b), tile=32, overlap=16, multiple=8)
        # the image is reflect-padded to 64x48 before tiling; compare with the whole padded image
        padded = [torch.nn.functional.pad(t, (0, 4, 0, 4), mode="reflect") for t in (a, b)]
        whole = fn(*padded)[..., :60, :44]
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_tiled_rejects_shape_changing_function():
    with pytest.raises(ValueError, match="keep batch size and spatial size"):
        tiled_apply(lambda t: t[..., ::2, ::2], torch.rand(1, 3, 64, 64), tile=32, overlap=8)


# The blend is defined in refusion/inference/tiling.py: within an overlap of `overlap` pixels the
# incoming tile's weight is 0 for the first `overlap // 4` pixels, then rises as sin^2 sampled at the
# pixel centres of the middle half, r_k = sin^2(pi/2 * (k + 1/2) / n) with n = overlap - 2 * (overlap // 4),
# then is 1; the outgoing tile's weight is the mirror image. For tile 16, overlap 8 on a 24-pixel
# axis the tiles start at 0 and 8 (overlap exactly 8), margin 2, n 4: r_k = sin^2((2k + 1) pi / 16).
RAMP_8 = [math.sin((2 * k + 1) * math.pi / 16) ** 2 for k in range(4)]   # 0.038, 0.309, 0.691, 0.962
SECOND_TILE_ALONG_24 = [0.0] * 8 + [0.0, 0.0, *RAMP_8] + [1.0] * 10        # weight of the tile at 8, per pixel


def test_blend_weights_are_the_raised_cosine_of_their_definition():
    first, second = blend_weights_1d(24, 16, 8, 1)
    want_second = torch.tensor([0.0, 0.0, *RAMP_8] + [1.0] * 10, dtype=torch.float64)
    want_first = torch.tensor([1.0] * 10 + RAMP_8[::-1] + [0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(second, want_second, rtol=0, atol=1e-12)
    torch.testing.assert_close(first, want_first, rtol=0, atol=1e-12)
    # pixel-centre samples: the ramp is symmetric (r_k + r_{n-1-k} = 1), so the sum is one before
    # any normalisation, and no ramp sample is exactly 0 or 1
    assert all(0.0 < r < 1.0 for r in RAMP_8) and RAMP_8[0] + RAMP_8[3] == pytest.approx(1.0, abs=1e-15)


def test_tiled_global_mean_is_the_blend_of_the_tile_means():
    # A function that sees the whole tile (receptive field far wider than the overlap): each tile's
    # output is its own mean, so the tiled result at a pixel is sum_t w_t * mean(tile t), exactly.
    # On x[i, j] = a*i + b*j the tile starting at (top, left) has mean a*(top + 7.5) + b*(left + 7.5),
    # and with the weights summing to one along each axis the result is
    # a*(7.5 + 8 * v[i]) + b*(7.5 + 8 * v[j]), v being the second tile's weight along the axis.
    a, b = 0.25, 1.0
    rows = torch.arange(24, dtype=torch.float64).view(24, 1)
    cols = torch.arange(24, dtype=torch.float64).view(1, 24)
    x = (a * rows + b * cols).expand(24, 24).reshape(1, 1, 24, 24)
    tiled = tiled_apply(lambda t: t.mean(dim=(-2, -1), keepdim=True).expand_as(t), x, tile=16, overlap=8,
                        multiple=8)
    v = torch.tensor(SECOND_TILE_ALONG_24, dtype=torch.float64)
    want = a * (7.5 + 8 * v).view(24, 1) + b * (7.5 + 8 * v).view(1, 24)
    torch.testing.assert_close(tiled[0, 0], want, rtol=0, atol=1e-12)
