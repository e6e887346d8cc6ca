"""Detectors of HINet and of the ResBlock U-Nets (ConditionalUNet, UnconditionalUNet, LatentUNet).

HINet: ``conv_01`` gives in_chn and wf, the number of ``down_path_1.i`` levels the depth, and the
levels with HIN are those with ``down_path_1.i.norm`` keys: hin_position_left is the first of them,
hin_position_right the last unless HIN reaches the deepest level (every larger value then gives the
same weights).

ResBlock U-Nets: ``init_conv`` gives the width and input channels, ``final_conv`` the output
channels, the number of ``downs.i`` / ``encoder.i`` levels the depth. The two noise U-Nets differ in
the middle attention (linear, with an output LayerNorm ``to_out.1.g``, or softmax ``to_out``);
LatentUNet has no time embedding and a ``latent_conv``. ConditionalUNet's init conv takes
2 x in_nc + cond_channels channels, which the weights cannot split by themselves: in_nc is taken
equal to out_nc (the predicted noise has the shape of x_t) and the rest is cond_channels.
"""
from __future__ import annotations

from refusion.official.detect_keys import (
    AUTOENCODER, NOISE, REGRESSOR, Channels, Detector, Has, HasNone, Misfit, Reading, StateDict, Undetermined,
    class_default, count, defaulted, has_all,
)


def read_hinet(sd: StateDict) -> Reading:
    depth = count(sd, "down_path_1.")
    kwargs = {"in_chn": int(sd["conv_01.weight"].shape[1]), "wf": int(sd["conv_01.weight"].shape[0]), "depth": depth}
    undetermined = defaulted("HINet", "the LeakyReLU slope has no weights", "relu_slope")
    deepest = depth - 1
    right = class_default("HINet", "hin_position_right")
    right = right if right >= deepest else deepest
    hin = [i for i in range(depth) if f"down_path_1.{i}.norm.weight" in sd]
    if not hin:
        reason = f"no level has HIN (no down_path_*.norm keys): every range outside levels 0..{deepest} gives these weights"
        undetermined["hin_position_left"] = Undetermined(depth, reason)
        undetermined["hin_position_right"] = Undetermined(right, reason)
        return kwargs, undetermined
    if hin != list(range(hin[0], hin[-1] + 1)):
        raise Misfit(f"HIN (down_path_1.i.norm.weight) at levels {hin}: HINet puts it on one range of levels")
    kwargs["hin_position_left"] = hin[0]
    if hin[-1] < deepest:
        kwargs["hin_position_right"] = hin[-1]
    else:
        undetermined["hin_position_right"] = Undetermined(
            right, f"HIN reaches the deepest level ({deepest}): every value >= {deepest} gives these weights")
    return kwargs, undetermined


def _noise_unet(sd: StateDict, in_nc: int) -> dict:
    return {"in_nc": in_nc, "out_nc": int(sd["final_conv.weight"].shape[0]), "nf": int(sd["init_conv.weight"].shape[0]),
            "depth": count(sd, "downs.")}


def read_conditional_unet(sd: StateDict) -> Reading:
    """in_nc = out_nc; cond_channels = init conv inputs - 2 x in_nc (see the module docstring)."""
    out_nc = int(sd["final_conv.weight"].shape[0])
    return {**_noise_unet(sd, out_nc), "cond_channels": int(sd["init_conv.weight"].shape[1]) - 2 * out_nc}, {}


def read_unconditional_unet(sd: StateDict) -> Reading:
    return _noise_unet(sd, int(sd["init_conv.weight"].shape[1])), {}


def read_latent_unet(sd: StateDict) -> Reading:
    """ch_mult[i] = output channels of level i's last conv (``encoder.i.3``) / ch."""
    ch = int(sd["init_conv.weight"].shape[0])
    return {
        "in_ch": int(sd["init_conv.weight"].shape[1]),
        "out_ch": int(sd["final_conv.weight"].shape[0]),
        "ch": ch,
        "ch_mult": [int(sd[f"encoder.{i}.3.weight"].shape[0]) // ch for i in range(count(sd, "encoder."))],
        "embed_dim": int(sd["latent_conv.weight"].shape[0]),
    }, {}


NOISE_UNET = has_all("init_conv.weight", "time_mlp.1.weight", "time_mlp.3.weight", "final_res_block.block1.proj.weight",
                     "final_conv.weight")

DETECTORS = (
    Detector("HINet", REGRESSOR,
             has_all("conv_01.weight", "conv_02.weight", "down_path_1.0.conv_1.weight", "down_path_2.0.conv_1.weight",
                     "sam12.conv2.weight", "cat12.weight", "last.weight"), read_hinet),
    Detector("ConditionalUNet", NOISE,
             (*NOISE_UNET, Has("mid_attn.fn.fn.to_out.1.g"),
              Channels("init_conv.weight", 1, ">=", 2, "final_conv.weight", 0)), read_conditional_unet),
    Detector("UnconditionalUNet", NOISE, (*NOISE_UNET, Has("mid_attn.fn.fn.to_out.weight")), read_unconditional_unet),
    Detector("LatentUNet", AUTOENCODER,
             (*has_all("init_conv.weight", "encoder.0.0.block1.proj.weight", "latent_conv.weight",
                       "post_latent_conv.weight", "final_conv.weight"), HasNone(r"time_mlp\..*", "time_mlp.*")),
             read_latent_unet),
)
