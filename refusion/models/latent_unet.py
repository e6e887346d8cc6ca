"""LatentUNet: the U-Net autoencoder of Refusion's high-resolution dehazing (6000x4000 images).

``encode(x) -> (latent, skips)`` and ``decode(latent, skips) -> image``. The diffusion runs on the
small latent (embed_dim x H/8 x W/8 in the dehazing setting); the decoder gets the fine detail
back from the skip features, which at inference come from the degraded (LQ) image ("latent
replacement"). Structure and state-dict keys follow the official ``UNet`` of image-restoration-sde
(``codes/config/latent-dehazing/models/modules/UNet_arch.py``): ResBlocks with SiLU, 4x4 stride-2
downsampling, nearest x2 + conv upsampling, linear attention at the deepest level only.

Memory for very large images
----------------------------
What dominates memory is everything at full resolution. For the dehazing setting (ch 8,
ch_mult [4, 8, 8, 16]) the skips alone add up to about 50 full-resolution channels (24 at full
size, 2 x 32 at 1/2, 2 x 64 at 1/4, 2 x 64 at 1/8): 4.8 GB in float32 for 6000x4000. The
decoder's last level then builds 64-channel nearest-upsampled maps, 40-channel concatenations and
32-channel ResBlock activations at full size on top of that: a whole-image encode + decode
peaks at about 1.1 KB per pixel in float32 (measured: 645 MiB above the model for 768x768),
i.e. about 26 GB for 6000x4000.

The tiled paths split the network where it is naturally split. Every level except the deepest is
purely convolutional (local), so it runs tile by tile, each tile with ``overlap`` pixels of context
on every side and only the tile's core written out. The deepest level holds the linear attention,
which sees the whole feature map; it runs once on the whole 1/8-resolution tensor (about 100-200
MB for 6000x4000), exactly as in the whole-image network. Tiled results therefore equal the
whole-image ones (to float rounding) once ``overlap`` covers the receptive field of the local
levels; they are not an approximation of the attention.

* ``encode_tiled(x, tile, overlap)`` bounds the encoder's working memory to one tile; with
  ``return_skips=False`` it keeps no full-resolution tensor at all (the latent of the LQ image,
  which is what the SDE needs).
* ``decode_tiled(latent, skips, tile, overlap)`` bounds the decoder's working memory to one tile,
  but the caller still holds the full skips.
* ``decode_from_lq(latent, lq, tile, overlap)`` never holds the full skips: it recomputes the LQ
  image's skips tile by tile (the encoder's local levels run twice, which costs far less than the
  memory it saves). This is the high-resolution inference path. Its overlap must cover the local
  encoder and decoder together (about 45 + 40 pixels for the dehazing setting; 128 is safe).
  Its peak is set by the tile, not the image: 375 MiB at tile 256 / overlap 128 (measured, the
  same at any image size) plus the 1/8-resolution tensors and the output image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .capabilities import Capabilities

from .unet_blocks import ResBlock, attention_layer, default_conv, downsample, pad_to_multiple, upsample


class LatentSkips(list):
    """The encoder's skip features in the official order (initial features, then b1 and b2 outputs
    of every level) plus the size of the image they came from, so decode can crop back."""

    def __init__(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]):
        super().__init__(features)
        self.image_size = tuple(image_size)


def _tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(core_start, core_end, context_start, context_end) of every tile along one axis."""
    spans = []
    for start in range(0, size, tile):
        end = min(start + tile, size)
        spans.append((start, end, max(0, start - overlap), min(size, end + overlap)))
    return spans


class LatentUNet(ModelMixin, ConfigMixin):
    """U-Net autoencoder with the official constructor arguments (defaults: the dehazing setting).

    Args:
        in_ch, out_ch: image channels in and out.
        ch: base width; level i works at ch * ch_mult[i - 1] channels (ch at level 0).
        ch_mult: width multipliers; len(ch_mult) levels, len(ch_mult) - 1 downsamplings.
        embed_dim: latent channels.
    """

    @register_to_config
    def __init__(self, in_ch: int = 3, out_ch: int = 3, ch: int = 8, ch_mult: Sequence[int] = (4, 8, 8, 16),
                 embed_dim: int = 8):
        super().__init__()
        if len(ch_mult) < 1 or any(int(m) < 1 for m in ch_mult):
            raise ValueError(f"LatentUNet: ch_mult must be a non-empty list of positive ints, got {ch_mult}")
        for name, value in (("in_ch", in_ch), ("out_ch", out_ch), ("ch", ch), ("embed_dim", embed_dim)):
            if int(value) < 1:
                raise ValueError(f"LatentUNet: {name} must be >= 1, got {value}")
        self.depth = len(ch_mult)
        mults = [1, *ch_mult]
        self.init_conv = default_conv(in_ch, ch, 3)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(self.depth):
            dim_in, dim_out = ch * mults[i], ch * mults[i + 1]
            deepest = i == self.depth - 1
            self.encoder.append(nn.ModuleList([
                ResBlock(dim_in, dim_in),
                ResBlock(dim_in, dim_in),
                attention_layer(dim_in) if deepest else nn.Identity(),
                default_conv(dim_in, dim_out) if deepest else downsample(dim_in, dim_out),
            ]))
            self.decoder.insert(0, nn.ModuleList([
                ResBlock(dim_out + dim_in, dim_out),
                ResBlock(dim_out + dim_in, dim_out),
                attention_layer(dim_out) if deepest else nn.Identity(),
                default_conv(dim_out, dim_in) if i == 0 else upsample(dim_out, dim_in),
            ]))
        mid_dim = ch * mults[-1]
        self.latent_conv = default_conv(mid_dim, embed_dim, 1)
        self.post_latent_conv = default_conv(embed_dim, mid_dim, 1)
        self.final_conv = nn.Conv2d(ch, out_ch, 3, 1, 1)

    def capabilities(self) -> Capabilities:
        return Capabilities(purpose="autoencoder", multiple=self.pad_multiple, channels=self.config.in_ch)

    @property
    def downscale(self) -> int:
        """Latent side = image side / downscale (8 for four levels)."""
        return 2 ** (self.depth - 1)

    @property
    def pad_multiple(self) -> int:
        """Inputs are reflect-padded to a multiple of this (2^depth, as the official network)."""
        return 2**self.depth

    # -- the network in two parts: local (convolutional) levels and the deepest (global) level --

    def _encode_local(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Levels 0..depth-2 on a padded image: their skips and the input of the deepest level."""
        x = self.init_conv(x)
        skips = [x]
        for block1, block2, _, down in self.encoder[:-1]:
            x = block1(x)
            skips.append(x)
            x = block2(x)
            skips.append(x)
            x = down(x)
        return skips, x

    def _encode_deep(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        block1, block2, attn, conv = self.encoder[-1]
        first = block1(x)
        second = attn(block2(first))
        return self.latent_conv(conv(second)), [first, second]

    def _decode_deep(self, latent: torch.Tensor, deep_skips: Sequence[torch.Tensor]) -> torch.Tensor:
        block1, block2, attn, _ = self.decoder[0]
        x = self.post_latent_conv(latent)
        x = block1(torch.cat([x, deep_skips[1]], dim=1))
        return attn(block2(torch.cat([x, deep_skips[0]], dim=1)))

    def _decode_local(self, x: torch.Tensor, local_skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """The deepest level's upsampling and levels depth-2..0, then the output conv."""
        x = self.decoder[0][3](x)
        for k, (block1, block2, _, up) in enumerate(self.decoder[1:], start=1):
            level = self.depth - 1 - k
            x = block1(torch.cat([x, local_skips[2 * level + 2]], dim=1))
            x = block2(torch.cat([x, local_skips[2 * level + 1]], dim=1))
            x = up(x)
        return self.final_conv(x + local_skips[0])

    # -- whole-image API (official behaviour) --

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, LatentSkips]:
        """Image (B, in_ch, H, W) -> latent (B, embed_dim, H'/8, W'/8) and skips (H' = H padded to 16)."""
        self._check_image(x, "x")
        local, low = self._encode_local(pad_to_multiple(x, self.pad_multiple))
        latent, deep = self._encode_deep(low)
        return latent, LatentSkips(local + deep, x.shape[-2:])

    def decode(self, latent: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latent + skips (from ``encode``, possibly of another image of the same size) -> image.

        The output is cropped to the encoded image's size when ``skips`` is the ``LatentSkips``
        that ``encode`` returned; a plain list of skips gives the padded size.
        """
        self._check_skips(latent, skips)
        local, deep = list(skips[:-2]), list(skips[-2:])
        out = self._decode_local(self._decode_deep(latent, deep), local)
        return self._crop(out, skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))

    # -- tiled API for very large images --

    def encode_tiled(self, x: torch.Tensor, tile: int = 512, overlap: int = 64, *, return_skips: bool = True
                     ) -> tuple[torch.Tensor, LatentSkips | None]:
        """``encode`` with the local levels run tile by tile (see the module docstring).

        ``tile`` and ``overlap`` are in image pixels and must be multiples of ``downscale``. With
        ``return_skips=False`` no full-resolution tensor is kept and the second item is None.
        """
        self._check_image(x, "x")
        self._check_tiling(tile, overlap)
        padded = pad_to_multiple(x, self.pad_multiple)
        local, low = self._encode_local_tiled(padded, tile, overlap, keep_skips=return_skips)
        latent, deep = self._encode_deep(low)
        return latent, (LatentSkips(local + deep, x.shape[-2:]) if return_skips else None)

    def decode_tiled(self, latent: torch.Tensor, skips: Sequence[torch.Tensor], tile: int = 512,
                     overlap: int = 64) -> torch.Tensor:
        """``decode`` with the local levels run tile by tile; equals ``decode`` once the overlap
        covers the local decoder's receptive field."""
        self._check_skips(latent, skips)
        self._check_tiling(tile, overlap)
        local, deep = list(skips[:-2]), list(skips[-2:])
        low = self._decode_deep(latent, deep)
        full_height = local[0].shape[-2]

        def decode_tile(rows: slice, cols: slice) -> torch.Tensor:
            tile_skips = [self._crop_scaled(s, rows, cols, full_height) for s in local]
            return self._decode_local(self._crop_scaled(low, rows, cols, full_height), tile_skips)

        out = self._run_tiles(local[0].shape[-2:], tile, overlap, decode_tile)
        return self._crop(out, skips)

    def decode_from_lq(self, latent: torch.Tensor, lq: torch.Tensor, tile: int = 512, overlap: int = 128) -> torch.Tensor:
        """Decode ``latent`` with the skips of the LQ image, recomputed tile by tile.

        Equals ``decode(latent, encode(lq)[1])`` once the overlap covers the local encoder and
        decoder together, and never holds the full-resolution skips.
        """
        self._check_image(lq, "lq")
        self._check_tiling(tile, overlap)
        padded = pad_to_multiple(lq, self.pad_multiple)
        expected = (lq.shape[0], self.config.embed_dim, padded.shape[-2] // self.downscale, padded.shape[-1] // self.downscale)
        if tuple(latent.shape) != expected:
            raise ValueError(f"LatentUNet.decode_from_lq: latent has shape {tuple(latent.shape)}, expected {expected} for lq {tuple(lq.shape)}")
        _, lq_low = self._encode_local_tiled(padded, tile, overlap, keep_skips=False)
        _, deep = self._encode_deep(lq_low)
        low = self._decode_deep(latent, deep)

        def decode_tile(rows: slice, cols: slice) -> torch.Tensor:
            tile_skips, _ = self._encode_local(padded[..., rows, cols])
            return self._decode_local(self._crop_scaled(low, rows, cols, padded.shape[-2]), tile_skips)

        out = self._run_tiles(padded.shape[-2:], tile, overlap, decode_tile)
        return out[..., : lq.shape[-2], : lq.shape[-1]]

    # -- helpers --

    def _encode_local_tiled(self, padded: torch.Tensor, tile: int, overlap: int, *, keep_skips: bool
                            ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Assemble the local encoder's outputs (skips optional, deepest input always) tile by tile."""
        height, width = padded.shape[-2:]
        outputs: list[torch.Tensor] | None = None
        for row in _tile_spans(height, tile, overlap):
            for col in _tile_spans(width, tile, overlap):
                region = padded[..., row[2]:row[3], col[2]:col[3]]
                skips, low = self._encode_local(region)
                results = (skips + [low]) if keep_skips else [low]
                if outputs is None:
                    outputs = [self._empty_scaled(r, region, height, width) for r in results]
                for full, part in zip(outputs, results):
                    self._write_core(full, part, region, row, col)
        return outputs[:-1], outputs[-1]

    def _run_tiles(self, size: Sequence[int], tile: int, overlap: int, fn) -> torch.Tensor:
        """Call ``fn(rows, cols)`` on every tile's context region and assemble the full-size cores."""
        height, width = size
        out = None
        for row in _tile_spans(height, tile, overlap):
            for col in _tile_spans(width, tile, overlap):
                rows, cols = slice(row[2], row[3]), slice(col[2], col[3])
                part = fn(rows, cols)
                if out is None:
                    out = part.new_empty(*part.shape[:2], height, width)
                out[..., row[0]:row[1], col[0]:col[1]] = part[..., row[0] - row[2]:row[1] - row[2], col[0] - col[2]:col[1] - col[2]]
        return out

    @staticmethod
    def _empty_scaled(part: torch.Tensor, region: torch.Tensor, height: int, width: int) -> torch.Tensor:
        scale = region.shape[-2] // part.shape[-2]
        return part.new_empty(*part.shape[:2], height // scale, width // scale)

    @staticmethod
    def _write_core(full: torch.Tensor, part: torch.Tensor, region: torch.Tensor, row, col) -> None:
        scale = region.shape[-2] // part.shape[-2]
        r0, r1, c0, c1 = row[0] // scale, row[1] // scale, col[0] // scale, col[1] // scale
        rr, cc = row[2] // scale, col[2] // scale
        full[..., r0:r1, c0:c1] = part[..., r0 - rr:r1 - rr, c0 - cc:c1 - cc]

    @staticmethod
    def _crop_scaled(t: torch.Tensor, rows: slice, cols: slice, full_height: int) -> torch.Tensor:
        """Crop ``t`` to the image-pixel region (rows, cols), scaled to ``t``'s resolution."""
        scale = full_height // t.shape[-2]
        return t[..., rows.start // scale:rows.stop // scale, cols.start // scale:cols.stop // scale]

    def _crop(self, out: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        size = getattr(skips, "image_size", None)
        return out if size is None else out[..., : size[0], : size[1]]

    def _check_image(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_ch:
            raise ValueError(f"LatentUNet: {name} must be (B, {self.config.in_ch}, H, W), got {tuple(x.shape)}")

    def _check_skips(self, latent: torch.Tensor, skips: Sequence[torch.Tensor]) -> None:
        expected = 1 + 2 * self.depth
        if len(skips) != expected:
            raise ValueError(f"LatentUNet: skips must hold {expected} tensors (from encode), got {len(skips)}")
        low = skips[-1].shape[-2:]
        if latent.ndim != 4 or latent.shape[1] != self.config.embed_dim or latent.shape[-2:] != low:
            raise ValueError(f"LatentUNet: latent must be (B, {self.config.embed_dim}, {low[0]}, {low[1]}) to match the skips, "
                             f"got {tuple(latent.shape)}")

    def _check_tiling(self, tile: int, overlap: int) -> None:
        step = self.downscale
        if tile <= 0 or tile % step or overlap < 0 or overlap % step:
            raise ValueError(f"LatentUNet: tile ({tile}) must be a positive and overlap ({overlap}) a non-negative "
                             f"multiple of {step}, so tiles align with the 1/{step} latent grid")
