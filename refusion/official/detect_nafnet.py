"""Detectors of the NAFNet U-Net family: NAFNet, Baseline, NAFFT-Net and the IR-SDE noise networks
built on it (ConditionalNAFNet, UnconditionalNAFNet, BokehNAFNet, StereoNAFNet).

They share the stages (official keys ``intro``, ``encoders.i.j``, ``downs.i``, ``middle_blks.j``,
``ups.i``, ``decoders.i.j``, ``ending``): width = ``intro.weight.shape[0]``, one encoder level
per ``downs.i``, one decoder level per ``ups.i``, ``enc_blk_nums[i]`` = number of
``encoders.i.j`` blocks. The block type tells the networks apart:

- NAFNet: ``sca`` (simplified channel attention) and LayerNorm ``norm1.weight``;
- Baseline: ``se`` (squeeze-and-excitation attention) and ``norm1.weight``;
- NAFFT-Net: ``eca`` (1-D conv attention), ``fft_blocks`` on the skips, DO-Conv ``conv2.W/D``
  (or a plain ``conv2.weight`` once folded);
- noise networks: gain-only ``norm1.g``, per-block time projection, a network ``time_mlp``.

Among the noise networks: ``cam_mlp`` (lens embedding) and ``time_mlp.0`` make the bokeh network,
``fusion`` (cross-view attention) in the blocks the stereo one. Conditional and unconditional
networks have the same keys; the channels decide: ``ending`` outputs img_channel, and the intro
takes img_channel channels (unconditional: x_t alone) or 2 x img_channel + cond_channels
(conditional: x_t - mu, mu, cond). So a 6-channel intro with a 6-channel ending is an
unconditional 6-channel network, with a 3-channel ending a conditional RGB one.
"""
from __future__ import annotations

import re

from refusion.models.nafft import eca_kernel_size
from refusion.official.detect_keys import (
    NOISE, REGRESSOR, Channels, Detector, HasAny, HasNone, Misfit, Reading, StateDict, Undetermined,
    class_default, count, defaulted, has_all,
)

BLOCK = r"(?:(?:encoders|decoders)\.\d+\.\d+|middle_blks\.\d+)"
_BLOCK_PREFIX = re.compile(BLOCK + r"(?=\.)")
_STAGE_ORDER = ("encoders", "middle_blks", "decoders")
# eca_gamma / eca_b values tried when fitting the ECA kernel sizes
_ECA_GAMMAS, _ECA_BS = range(1, 9), range(0, 9)


def block_has(suffix: str) -> HasAny:
    """Some NAF block (encoder, middle or decoder) has the key ``<block>.<suffix>``."""
    return HasAny(BLOCK + re.escape("." + suffix), f"<block>.{suffix}")


def blocks(sd: StateDict) -> list[str]:
    """The NAF block prefixes ('encoders.0.0', 'middle_blks.1', ...) in network order."""
    found = {m.group(0) for m in map(_BLOCK_PREFIX.match, sd) if m}

    def order(prefix: str):
        stage, *indices = prefix.split(".")
        return _STAGE_ORDER.index(stage), tuple(map(int, indices))

    return sorted(found, key=order)


def stages(sd: StateDict) -> dict:
    """width, middle_blk_num, enc_blk_nums, dec_blk_nums."""
    return {
        "width": int(sd["intro.weight"].shape[0]),
        "middle_blk_num": count(sd, "middle_blks."),
        "enc_blk_nums": [count(sd, f"encoders.{i}.") for i in range(count(sd, "downs."))],
        "dec_blk_nums": [count(sd, f"decoders.{i}.") for i in range(count(sd, "ups."))],
    }


def _expansions(name: str, sd: StateDict) -> Reading:
    """dw_expand and ffn_expand from the first block's 1x1 convs (c -> dw_expand*c, c -> ffn_expand*c)."""
    found = blocks(sd)
    if not found:
        return {}, defaulted(name, "the weights hold no block to read it from", "dw_expand", "ffn_expand")
    conv1, conv4 = sd[f"{found[0]}.conv1.weight"], sd[f"{found[0]}.conv4.weight"]
    c = int(conv1.shape[1])
    return {"dw_expand": int(conv1.shape[0]) // c, "ffn_expand": int(conv4.shape[0]) // c}, {}


def _regressor(name: str, sd: StateDict) -> Reading:
    """What NAFNet, Baseline and NAFFT-Net share: channels, stages, expansions, dropout."""
    kwargs, undetermined = _expansions(name, sd)
    kwargs = {"img_channel": int(sd["intro.weight"].shape[1]), **stages(sd), **kwargs}
    return kwargs, {**undetermined, **defaulted(name, "dropout has no weights", "drop_out_rate")}


def _with_tlc(name: str, sd: StateDict) -> Reading:
    kwargs, undetermined = _regressor(name, sd)
    undetermined["train_size"] = Undetermined(
        None, f"TLC (the official {name}Local) changes no weight: its training size comes from the option file "
              "(official default (1, 3, 256, 256)); refusion applies it at inference, None = off", constructor=False)
    return kwargs, undetermined


def read_nafnet(sd: StateDict) -> Reading:
    return _with_tlc("NAFNet", sd)


def read_baseline(sd: StateDict) -> Reading:
    return _with_tlc("Baseline", sd)


def read_nafft(sd: StateDict) -> Reading:
    """The NAFNet arguments, ``do_conv`` from the depthwise conv's keys, ECA settings fitted to the
    kernel sizes (they fix eca_gamma / eca_b only up to the pairs that give the same sizes)."""
    kwargs, undetermined = _regressor("NAFFTNet", sd)
    found = blocks(sd)
    if found:
        kwargs["do_conv"] = f"{found[0]}.conv2.W" in sd
    else:
        undetermined.update(defaulted("NAFFTNet", "the weights hold no block to read it from", "do_conv"))
    undetermined.update(defaulted("NAFFTNet", "the residual around each FFT skip filter has no weights", "fft_residual"))
    undetermined.update(_eca_settings(sd, found))
    return kwargs, undetermined


def _eca_settings(sd: StateDict, found: list[str]) -> dict[str, Undetermined]:
    sizes = {int(sd[f"{b}.conv3.weight"].shape[1]): int(sd[f"{b}.eca.conv.weight"].shape[-1]) for b in found}
    fits = [(g, b) for g in _ECA_GAMMAS for b in _ECA_BS
            if all(eca_kernel_size(c, g, b) == k for c, k in sizes.items())]
    default = (class_default("NAFFTNet", "eca_gamma"), class_default("NAFFTNet", "eca_b"))
    if not fits:
        raise Misfit(f"ECA kernel sizes {sizes} (channels: size, from <block>.eca.conv.weight) fit no eca_gamma in "
                     f"{_ECA_GAMMAS.start}..{_ECA_GAMMAS.stop - 1} with eca_b in {_ECA_BS.start}..{_ECA_BS.stop - 1}")
    gamma, b = default if default in fits else fits[0]
    reason = f"the ECA kernel sizes {sizes} (channels: size) fix only the kernel sizes; {len(fits)} (eca_gamma, eca_b) pairs give them"
    return {"eca_gamma": Undetermined(gamma, reason), "eca_b": Undetermined(b, reason)}


def _noise_stages(sd: StateDict) -> dict:
    return {"img_channel": int(sd["ending.weight"].shape[0]), **stages(sd)}


def read_conditional(sd: StateDict) -> Reading:
    """img_channel from the ending, cond_channels = intro inputs - 2 x img_channel."""
    kwargs = _noise_stages(sd)
    kwargs["cond_channels"] = int(sd["intro.weight"].shape[1]) - 2 * kwargs["img_channel"]
    return kwargs, defaulted("ConditionalNAFNet", "the latent-dehazing variant (ending(x + intro features)) has the "
                             "same keys and shapes", "add_intro_skip")


def read_noise(sd: StateDict) -> Reading:
    """Unconditional, bokeh and stereo networks: img_channel from the ending; every argument is in the weights."""
    return _noise_stages(sd), {}


UNET = has_all("intro.weight", "ending.weight")
NOISE_TIME = has_all("time_mlp.1.weight", "time_mlp.3.weight")
NO_FUSION = HasNone(BLOCK + r"\.fusion\..*", "<block>.fusion.*")

DETECTORS = (
    Detector("NAFNet", REGRESSOR, (*UNET, block_has("sca.1.weight"), block_has("norm1.weight")), read_nafnet),
    Detector("Baseline", REGRESSOR, (*UNET, block_has("se.1.weight"), block_has("norm1.weight")), read_baseline),
    Detector("NAFFTNet", REGRESSOR, (*UNET, block_has("eca.conv.weight"), block_has("norm1.weight")), read_nafft),
    Detector("ConditionalNAFNet", NOISE,
             (*UNET, *NOISE_TIME, block_has("mlp.1.weight"), NO_FUSION,
              Channels("intro.weight", 1, ">=", 2, "ending.weight", 0)), read_conditional),
    Detector("UnconditionalNAFNet", NOISE,
             (*UNET, *NOISE_TIME, block_has("mlp.1.weight"), NO_FUSION,
              Channels("intro.weight", 1, "==", 1, "ending.weight", 0)), read_noise),
    Detector("BokehNAFNet", NOISE,
             (*UNET, *has_all("time_mlp.0.weight", "time_mlp.2.weight", "cam_mlp.0.weight", "cam_mlp.2.weight"),
              block_has("time_mlp.1.weight"), block_has("cam_mlp.1.weight")), read_noise),
    Detector("StereoNAFNet", NOISE,
             (*UNET, *NOISE_TIME, block_has("mlp.1.weight"), block_has("fusion.l_proj1.weight")), read_noise),
)
