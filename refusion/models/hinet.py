"""HINet (Chen et al., CVPRW 2021): two-stage U-Net with Half Instance Normalization.

Stage 1 is a U-Net whose supervised attention module (SAM) emits the stage-1 image and attention-
gated features; stage 2 starts from those features and fuses stage 1's encoder and decoder
features into its encoder (cross-stage feature fusion, CSFF). ``forward`` returns
``[stage1, stage2]`` like the official network; the restored image is the last element.

Unlike the official code, inputs of any size are accepted: they are reflect-padded at the bottom
and right to a multiple of 2^(depth-1) and both outputs are cropped back. State-dict keys are the
official ones (``basicsr/models/archs/hinet_arch.py`` of megvii-model/HINet).
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .capabilities import Capabilities
from .unet_blocks import pad_to_multiple


class HINBlock(nn.Module):
    """Conv-LeakyReLU-conv-LeakyReLU with a 1x1 shortcut (the official ``UNetConvBlock``).

    With ``use_hin`` the first conv's output is instance-normalised on its first half of channels
    only (HIN); with ``use_csff`` two 3x3 convs add the stage-1 encoder and decoder features.
    ``downsample`` appends a 4x4 stride-2 conv; the block then returns (downsampled, full-size).
    """

    def __init__(self, in_size: int, out_size: int, downsample: bool, relu_slope: float,
                 use_csff: bool = False, use_hin: bool = False):
        super().__init__()
        self.identity = nn.Conv2d(in_size, out_size, 1, 1, 0)
        self.conv_1 = nn.Conv2d(in_size, out_size, 3, padding=1, bias=True)
        self.relu_1 = nn.LeakyReLU(relu_slope)
        self.conv_2 = nn.Conv2d(out_size, out_size, 3, padding=1, bias=True)
        self.relu_2 = nn.LeakyReLU(relu_slope)
        self.use_csff = downsample and use_csff
        if self.use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, 1, 1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, 1, 1)
        self.use_hin = use_hin
        if use_hin:
            self.norm = nn.InstanceNorm2d(out_size // 2, affine=True)
        self.downsample = nn.Conv2d(out_size, out_size, 4, 2, 1, bias=False) if downsample else None

    def forward(self, x: torch.Tensor, enc: torch.Tensor | None = None, dec: torch.Tensor | None = None):
        out = self.conv_1(x)
        if self.use_hin:
            normed, kept = out.chunk(2, dim=1)
            out = torch.cat([self.norm(normed), kept], dim=1)
        out = self.relu_2(self.conv_2(self.relu_1(out)))
        out = out + self.identity(x)
        if enc is not None and dec is not None:
            if not self.use_csff:
                raise ValueError("HINBlock: stage-1 features were given to a block built without CSFF")
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        if self.downsample is not None:
            return self.downsample(out), out
        return out


class HINUpBlock(nn.Module):
    """2x2 transposed-conv upsampling, concatenation with the skip, then a plain HINBlock."""

    def __init__(self, in_size: int, out_size: int, relu_slope: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2, bias=True)
        self.conv_block = HINBlock(in_size, out_size, False, relu_slope)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.up(x), bridge], dim=1))


class SAM(nn.Module):
    """Supervised attention module: stage-1 image = conv(x) + input; features gated by it."""

    def __init__(self, n_feat: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(n_feat, n_feat, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(n_feat, out_channels, kernel_size, padding=pad)
        self.conv3 = nn.Conv2d(out_channels, n_feat, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + x_img
        gate = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * gate + x, img


class HINet(ModelMixin, ConfigMixin):
    """HINet with the official constructor arguments.

    Args:
        in_chn: image channels (input and both outputs).
        wf: width of the first level; level i has wf * 2^i channels.
        depth: number of levels (depth - 1 downsamplings).
        relu_slope: LeakyReLU negative slope.
        hin_position_left, hin_position_right: encoder levels i with left <= i <= right use HIN.
    """

    @register_to_config
    def __init__(self, in_chn: int = 3, wf: int = 64, depth: int = 5, relu_slope: float = 0.2,
                 hin_position_left: int = 0, hin_position_right: int = 4):
        super().__init__()
        for name, value in (("in_chn", in_chn), ("wf", wf), ("depth", depth)):
            if int(value) < 1:
                raise ValueError(f"HINet: {name} must be >= 1, got {value}")
        self.depth = depth
        self.conv_01 = nn.Conv2d(in_chn, wf, 3, 1, 1)
        self.conv_02 = nn.Conv2d(in_chn, wf, 3, 1, 1)

        self.down_path_1 = nn.ModuleList()
        self.down_path_2 = nn.ModuleList()
        prev = wf
        for i in range(depth):
            use_hin = hin_position_left <= i <= hin_position_right
            down = i + 1 < depth
            self.down_path_1.append(HINBlock(prev, wf * 2**i, down, relu_slope, use_hin=use_hin))
            self.down_path_2.append(HINBlock(prev, wf * 2**i, down, relu_slope, use_csff=down, use_hin=use_hin))
            prev = wf * 2**i

        self.up_path_1 = nn.ModuleList()
        self.up_path_2 = nn.ModuleList()
        self.skip_conv_1 = nn.ModuleList()
        self.skip_conv_2 = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            width = wf * 2**i
            self.up_path_1.append(HINUpBlock(prev, width, relu_slope))
            self.up_path_2.append(HINUpBlock(prev, width, relu_slope))
            self.skip_conv_1.append(nn.Conv2d(width, width, 3, 1, 1))
            self.skip_conv_2.append(nn.Conv2d(width, width, 3, 1, 1))
            prev = width
        # The official SAM always emits 3 channels; in_chn is the same for RGB and also lets
        # other channel counts work (the official network fails on them).
        self.sam12 = SAM(prev, in_chn)
        self.cat12 = nn.Conv2d(prev * 2, prev, 1, 1, 0)
        self.last = nn.Conv2d(prev, in_chn, 3, 1, 1, bias=True)

    def capabilities(self) -> Capabilities:
        return Capabilities(purpose="regressor", multiple=2 ** (self.depth - 1), channels=self.config.in_chn)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[stage1, stage2]`` images, each the size of ``x``."""
        h, w = x.shape[-2:]
        image = pad_to_multiple(x, 2 ** (self.depth - 1))

        # stage 1
        x1 = self.conv_01(image)
        encs, decs = [], []
        for down in self.down_path_1:
            if down.downsample is not None:
                x1, x1_full = down(x1)
                encs.append(x1_full)
            else:
                x1 = down(x1)
        for i, up in enumerate(self.up_path_1):
            x1 = up(x1, self.skip_conv_1[i](encs[-i - 1]))
            decs.append(x1)
        sam_feature, out_1 = self.sam12(x1, image)

        # stage 2, fed with stage 1's attention-gated features and its encoder/decoder (CSFF)
        x2 = self.cat12(torch.cat([self.conv_02(image), sam_feature], dim=1))
        blocks = []
        for i, down in enumerate(self.down_path_2):
            if down.downsample is not None:
                x2, x2_full = down(x2, encs[i], decs[-i - 1])
                blocks.append(x2_full)
            else:
                x2 = down(x2)
        for i, up in enumerate(self.up_path_2):
            x2 = up(x2, self.skip_conv_2[i](blocks[-i - 1]))
        out_2 = self.last(x2) + image
        return [out_1[..., :h, :w], out_2[..., :h, :w]]
