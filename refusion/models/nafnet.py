"""NAFNet and Baseline (Chen et al., ECCV 2022): one U-Net whose block type is a parameter, and
TLC, the test-time local converter (Chu et al., 2021) for any network with global pooling.

The U-Net stages (intro, encoders, downs, middle_blks, ups, decoders, ending) are built and run by
``NAFUNetStages`` so that NAFNet, Baseline, NAFFT-Net and the conditional noise network share them;
the attribute names are the official ones, so official state dicts load as they are.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .capabilities import Capabilities

from .blocks import BaselineBlock, NAFBlock

SkipTransform = Callable[[int, torch.Tensor], torch.Tensor]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom/right of an NCHW tensor so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class NAFUNetStages:
    """Mixin holding the NAFNet U-Net stages; ``make_block(channels)`` builds one block."""

    def build_stages(
        self,
        width: int,
        middle_blk_num: int,
        enc_blk_nums: Sequence[int],
        dec_blk_nums: Sequence[int],
        make_block: Callable[[int], nn.Module],
    ) -> None:
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(
                f"enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)} must have the same length"
            )
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.ModuleList(make_block(chan) for _ in range(num)))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.ModuleList(make_block(chan) for _ in range(middle_blk_num))
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.ModuleList(make_block(chan) for _ in range(num)))
        self.padder_size = 2 ** len(enc_blk_nums)

    def run_stages(self, x: torch.Tensor, *block_args, skip_transform: SkipTransform | None = None) -> torch.Tensor:
        """Encoders, middle and decoders on intro features; ``block_args`` go to every block."""
        skips = []
        for blocks, down in zip(self.encoders, self.downs):
            for block in blocks:
                x = block(x, *block_args)
            skips.append(x)
            x = down(x)
        for block in self.middle_blks:
            x = block(x, *block_args)
        for level, (blocks, up, skip) in enumerate(zip(self.decoders, self.ups, reversed(skips))):
            if skip_transform is not None:
                skip = skip_transform(len(skips) - 1 - level, skip)
            x = up(x) + skip
            for block in blocks:
                x = block(x, *block_args)
        return x


class RegressorUNet(ModelMixin, ConfigMixin, NAFUNetStages):
    """The image-to-image U-Net body shared by NAFNet, Baseline and NAFFT-Net.

    Inputs of any size: zero-padded bottom/right to a multiple of 2**len(enc_blk_nums), cropped
    back; global residual. ``skip_transform(level, skip)``, when a subclass defines it, filters the
    encoder skips (NAFFT-Net). Large test images: see :func:`local_pooling` (TLC).
    """

    skip_transform: SkipTransform | None = None

    def capabilities(self) -> Capabilities:
        return Capabilities(purpose="regressor", multiple=self.padder_size, channels=self.config.img_channel)

    def _build(self, img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums, make_block) -> None:
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.build_stages(width, middle_blk_num, enc_blk_nums, dec_blk_nums, make_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, self.padder_size)
        y = self.run_stages(self.intro(inp), skip_transform=self.skip_transform)
        return (self.ending(y) + inp)[..., :h, :w]


class NAFNet(RegressorUNet):
    """NAFNet image restorer (official argument names): ``forward(x)`` -> restored image."""

    @register_to_config
    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        dw_expand: int = 2,
        ffn_expand: int = 2,
        drop_out_rate: float = 0.0,
    ):
        super().__init__()
        self._build(
            img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums,
            lambda c: NAFBlock(c, dw_expand, ffn_expand, drop_out_rate),
        )


class Baseline(RegressorUNet):
    """NAFNet's Baseline: the same U-Net with LayerNorm + GELU + SE channel-attention blocks."""

    @register_to_config
    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        dw_expand: int = 1,
        ffn_expand: int = 2,
        drop_out_rate: float = 0.0,
    ):
        super().__init__()
        self._build(
            img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums,
            lambda c: BaselineBlock(c, dw_expand, ffn_expand, drop_out_rate),
        )


# --- TLC: test-time local converter --------------------------------------------------------------


def box_mean(x: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Mean over every kernel_size window (stride 1, no padding) via an integral image, then
    replicate-padded (centred) back to the input size; the global mean when the window covers the map.

    O(HW) whatever the window, unlike avg_pool2d's O(HW k^2); the official TLC semantics.
    """
    h, w = x.shape[-2:]
    if kernel_size[0] >= h and kernel_size[1] >= w:
        return x.mean((-2, -1), keepdim=True)
    k1, k2 = min(h, kernel_size[0]), min(w, kernel_size[1])
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    # centring keeps the running sums near zero, so their differences lose fewer digits
    offset = work.mean((-2, -1), keepdim=True)
    s = F.pad((work - offset).cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    out = s[..., k1:, k2:] - s[..., :-k1, k2:] - s[..., k1:, :-k2] + s[..., :-k1, :-k2]
    out = out / (k1 * k2) + offset
    dh, dw = h - out.shape[-2], w - out.shape[-1]
    out = F.pad(out, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), mode="replicate")
    return out.to(x.dtype)


class LocalAvgPool2d(nn.Module):
    """Local replacement of a global average pool (TLC).

    The window is fixed by the first input seen (the training-size probe run by
    :func:`convert_to_local_pooling`): ``kernel = feature_size * base_size // train_size``.
    """

    def __init__(self, base_size: tuple[int, int], train_size: tuple[int, int], kernel_size: tuple[int, int] | None = None):
        super().__init__()
        self.base_size = tuple(base_size)
        self.train_size = tuple(train_size)
        self.kernel_size = None if kernel_size is None else tuple(kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, base_size={self.base_size}, train_size={self.train_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size is None:
            h, w = x.shape[-2:]
            self.kernel_size = (h * self.base_size[0] // self.train_size[0], w * self.base_size[1] // self.train_size[1])
        return box_mean(x, self.kernel_size)


def _is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _probe_args(model: nn.Module, shape: tuple[int, int, int, int]) -> tuple:
    param = next(model.parameters())
    x = torch.zeros(shape, dtype=param.dtype, device=param.device)
    if hasattr(model, "local_pooling_probe_args"):
        return model.local_pooling_probe_args(x)
    return (x,)


def convert_to_local_pooling(
    model: nn.Module,
    train_size: Sequence[int],
    *,
    base_size: Sequence[int] | None = None,
    probe_args: tuple | None = None,
) -> dict[str, nn.Module]:
    """Replace every global average pool of ``model`` (in place) by a :class:`LocalAvgPool2d`.

    train_size: the training patch, (H, W) or official (N, C, H, W); base_size: the window at
    input resolution, default 1.5 x train_size. One forward pass at the training size (zeros, or
    ``probe_args``; networks with other inputs provide ``local_pooling_probe_args(x)``) fixes each
    pool's window. Returns the replaced modules by name, for :func:`restore_global_pooling`.
    """
    train_size = tuple(int(v) for v in train_size)
    if len(train_size) == 2:
        channels = getattr(getattr(model, "config", None), "img_channel", None)
        if channels is None:
            raise ValueError("train_size (H, W) needs model.config.img_channel; give train_size as (N, C, H, W)")
        train_size = (1, channels) + train_size
    if len(train_size) != 4 or min(train_size) < 1:
        raise ValueError(f"train_size must be (H, W) or (N, C, H, W) of positive ints, got {train_size}")
    hw = train_size[2:]
    base_size = (int(1.5 * hw[0]), int(1.5 * hw[1])) if base_size is None else tuple(int(v) for v in base_size)
    if len(base_size) != 2:
        raise ValueError(f"base_size must be (H, W), got {base_size}")

    replaced = {}
    for name, module in list(model.named_modules()):
        if _is_global_pool(module):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, LocalAvgPool2d(base_size, hw))
            replaced[name] = module
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no global average pooling (nn.AdaptiveAvgPool2d(1)) to convert")
    with torch.no_grad():
        model(*(probe_args if probe_args is not None else _probe_args(model, train_size)))
    return replaced


def restore_global_pooling(model: nn.Module, replaced: dict[str, nn.Module]) -> None:
    """Undo :func:`convert_to_local_pooling` with the modules it returned."""
    for name, module in replaced.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)


@contextmanager
def local_pooling(
    model: nn.Module,
    train_size: Sequence[int],
    *,
    base_size: Sequence[int] | None = None,
    probe_args: tuple | None = None,
) -> Iterator[nn.Module]:
    """``with local_pooling(net, train_size=(256, 256)): y = net(big_image)`` -- TLC inside the block,
    the trained global pooling restored after it."""
    replaced = convert_to_local_pooling(model, train_size, base_size=base_size, probe_args=probe_args)
    try:
        yield model
    finally:
        restore_global_pooling(model, replaced)
