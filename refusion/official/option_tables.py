"""What the official option files mean: network classes, keys and test behaviour per task.

Facts read from the official code (Algolzw/image-restoration-sde at 2598d73, megvii-research/NAFNet at
2b4af71, megvii-model/HINet at 4e72315): every official network class with its constructor defaults
(a key an option file leaves out takes the official default, which is not always refusion's), the
refusion network it maps to, and what each official test script does with the rest of the file.
:mod:`refusion.official.options` reads option files with these tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

REQUIRED = "<required>"  # an official constructor argument without a default

# task folders under codes/config of the IR-SDE repository
IRSDE_TASKS = ("deblurring", "denoising-sde", "deraining", "deshadow", "inpainting", "sisr",
               "latent-dehazing", "latent-bokeh", "stereo-sr", "unet-latent")
# how the official options.py and test.py of each task group treat an option file
CONDITIONAL_TASKS = ("deblurring", "deraining", "deshadow", "inpainting", "sisr")
LATENT_TASKS = ("latent-dehazing", "latent-bokeh")
SAMPLING_MODES = ("sde", "posterior")  # sde.sampling_mode of the deraining test


@dataclass(frozen=True)
class OfficialNet:
    """One official network class and the refusion network that has its weights."""

    refusion: str                       # refusion.models.MODELS name
    defaults: Mapping[str, Any]         # official keyword -> official default (REQUIRED if none)
    ignored: Mapping[str, str] = field(default_factory=dict)  # official keyword -> why unused
    fixed: Mapping[str, Any] = field(default_factory=dict)    # refusion kwargs the class implies
    local_train_size: tuple[int, ...] | None = None          # a TLC ("Local") class: default train_size
    channels: str = "img_channel"       # the keyword holding the image (or latent) channels


_NAF = {"img_channel": 3, "width": 16, "middle_blk_num": 1, "enc_blk_nums": (), "dec_blk_nums": ()}
_UNET = {"in_nc": REQUIRED, "out_nc": REQUIRED, "nf": REQUIRED, "depth": 4}
_UPSCALE = {"upscale": "the official options.py sets it to degradation.scale for distortion 'sr'; "
                       "the network stores it and never uses it"}
_NAF_SR = {**_NAF, "upscale": 1}
_UNET_SR = {**_UNET, "upscale": 1}
_NO_COND = {"cond_channels": 0, "add_intro_skip": False}
TLC_KEYS = {"train_size": "TLC training size", "fast_imp": "TLC fast implementation"}

# network_G of each IR-SDE task: official class name -> OfficialNet
IRSDE_NETWORKS: dict[str, dict[str, OfficialNet]] = {
    **{task: {
        "ConditionalNAFNet": OfficialNet("ConditionalNAFNet", _NAF_SR, _UPSCALE, _NO_COND),
        "ConditionalUNet": OfficialNet("ConditionalUNet", _UNET_SR, _UPSCALE, {"cond_channels": 0},
                                       channels="in_nc"),
    } for task in CONDITIONAL_TASKS},
    # x_t alone (no mu): the intro conv sees img_channel channels, forward(x, t)
    "denoising-sde": {
        "ConditionalNAFNet": OfficialNet("UnconditionalNAFNet", _NAF_SR, _UPSCALE),
        "ConditionalUNet": OfficialNet("UnconditionalUNet", _UNET, channels="in_nc"),
    },
    # the latent-dehazing copy adds the intro features back before the last conv
    "latent-dehazing": {
        "ConditionalNAFNet": OfficialNet("ConditionalNAFNet", _NAF_SR, _UPSCALE,
                                         {"cond_channels": 0, "add_intro_skip": True}),
        "CNAFNetLocal": OfficialNet("ConditionalNAFNet", _NAF_SR, _UPSCALE,
                                    {"cond_channels": 0, "add_intro_skip": True},
                                    local_train_size=(1, 3, 128, 128)),
    },
    # lens information (source lens, target lens, disparity) modulates every block
    "latent-bokeh": {"ConditionalNAFNet": OfficialNet("BokehNAFNet", _NAF_SR, _UPSCALE)},
    # left and right views batched, cross-view attention (SCAM) in every block
    "stereo-sr": {"ConditionalNAFNet": OfficialNet("StereoNAFNet", _NAF_SR, _UPSCALE)},
    # the autoencoder alone (model: latent)
    "unet-latent": {},
}
# network_L of the latent tasks, and network_G of unet-latent
LATENT_NETWORKS = {
    "UNet": OfficialNet("LatentUNet", {"in_ch": 3, "out_ch": 3, "ch": 64, "ch_mult": (1, 2, 4, 4),
                                       "embed_dim": 4}, channels="embed_dim"),
}
IRSDE_NETWORKS["unet-latent"] = dict(LATENT_NETWORKS)

_BASELINE = {**_NAF, "dw_expand": 1, "ffn_expand": 2}
# network_g type of the BasicSR repositories (NAFNet, HINet)
BASICSR_NETWORKS = {
    "NAFNet": OfficialNet("NAFNet", _NAF),
    "NAFNetLocal": OfficialNet("NAFNet", _NAF, local_train_size=(1, 3, 256, 256)),
    "Baseline": OfficialNet("Baseline", _BASELINE),
    "BaselineLocal": OfficialNet("Baseline", _BASELINE, local_train_size=(1, 3, 256, 256)),
    "HINet": OfficialNet("HINet", {"in_chn": 3, "wf": 64, "depth": 5, "relu_slope": 0.2,
                                   "hin_position_left": 0, "hin_position_right": 4},
                         channels="in_chn"),
}
# official classes refusion has no network for
UNSUPPORTED_NETWORKS = {
    "NAFSSR": "NAFSSR, NAFNet's stereo super-resolution network, has no refusion implementation",
    **{name: f"{name}, the DiT noise network of latent-dehazing, has no refusion implementation"
       for name in ("DiT_L_2", "DiT_L_4", "DiT_B_2", "DiT_B_4", "DiT_S_4", "DiT_S_8")},
}

# top-level keys: the ones not listed here and not read by options.py are reported as unknown
_RUN_NAME = "run name: names the official output folders"
_DATASETS = "dataset paths and loader settings: refusion takes its inputs on the command line"
_TRAINING = "training-only: optimizer, learning-rate schedule and loss"
_LOGGER = "training-only: logging and checkpoint frequency"
IRSDE_IGNORED = {
    "name": _RUN_NAME, "suffix": "suffix of the saved image names", "datasets": _DATASETS,
    "gpu_ids": "device selection of the official scripts", "use_tb_logger": "training-only: TensorBoard",
    "train": _TRAINING, "logger": _LOGGER, "dist": "training-only: distributed launch",
    "is_train": "set by the official scripts at run time", "network_D": "training-only: discriminator",
    "crop_border": "evaluation: border removed before PSNR/SSIM",
}
BASICSR_IGNORED = {
    "name": _RUN_NAME, "num_gpu": "device selection of the official scripts", "datasets": _DATASETS,
    "manual_seed": "random seed of the official scripts (regression inference is deterministic)",
    "train": _TRAINING, "logger": _LOGGER, "dist_params": "distributed launch backend and port",
    "img_path": "demo input and output image paths", "is_train": "set by the official scripts at run time",
}
PATH_IGNORED = {
    "strict_load": "refusion always loads weights strictly (all keys and shapes, or nothing)",
    "strict_load_g": "refusion always loads weights strictly (all keys and shapes, or nothing)",
    "resume_state": "training-only: resuming a run",
}
# val keys of BasicSR files that only concern metrics and saving
VAL_IGNORED = {
    "save_img": "saving of result images", "metrics": "evaluation metrics", "use_image":
    "whether metrics are computed on saved uint8 images", "rgb2bgr": "channel order of saved images",
    "val_freq": "training-only: validation frequency", "max_minibatch": "batching of the grid crops",
}

# what the official test of each task does, in order (InferenceSpec.steps)
_SR = ("F.interpolate(LQ, scale_factor={scale}, mode='bicubic') (util.upscale in codes/utils/deg_utils.py; "
       "torch defaults: align_corners=False, no antialias); training LQ were MATLAB-style "
       "imresize(GT, 1/scale) (data/util.imresize) when no dataroot_LQ is given")
_SDE = "x_T = mu + lambda * z (sde.noise_state), then the reverse {sampler} for T steps with mu fixed"
_SR_4 = _SR.replace("{scale}", "4")
STEPS = {
    "ir-sde": ("mu = the LQ image", _SDE, "output = x_0"),
    "sr": ("mu = " + _SR, _SDE, "output = x_0 at the GT size"),
    "inpainting": (
        ("mask = cv2.imread(mask_root/f'{i:06d}.png') / 255 for the i-th test image (3 channels), resized "
         "to the image with F.interpolate(mode='nearest')"),
        "mu = mask * GT + (1 - mask): the masked region is white", _SDE, "output = x_0"),
    "denoising": (
        "LQ = GT + N(0, (sigma/255)^2) (util.add_noise with degradation.sigma)",
        "start step t* = argmin_t |Theta_t - Theta(sigma)| (DenoisingSDE.get_optimal_timestep)",
        "reverse ODE of the DenoisingSDE from x_t* = LQ down to t = 1; the network sees x_t alone",
        "output = x_0"),
    "stereo-sr": (
        ("LQ pairs: the sorted dataroot_LQ list, files 2i (left) and 2i+1 (right), concatenated on "
         "channels"),
        f"each view upsampled: {_SR_4}; the 4 is written in test.py, not read from degradation.scale",
        _SDE + " on both views (6 channels)", "output = the left and right views"),
    "latent": ("latent_LQ, skips = network_L.encode(LQ)", "mu = latent_LQ; " + _SDE + " on the latents",
               "output = network_L.decode(latent_0, skips of the LQ)"),
    "latent-bokeh": (
        ("lens info per image from dataroot_meta (lines 'id, src_lens, tgt_lens, disparity'); a lens "
         "string becomes a float after 'Canon50mmf' -> '-', 'Sony50mmf' -> '', 'BS' -> ''; src and tgt "
         "are multiplied by 10"),
        "latent_LQ, skips = network_L.encode(LQ)",
        "mu = latent_LQ; " + _SDE + " on the latents, lens_info = [src, tgt, disparity]",
        "output = network_L.decode(latent_0, skips of the LQ)"),
    "autoencoder": (
        ("encode LQ and GT; decode(latent_LQ, skips_LQ) and decode(latent_GT, skips_LQ) (latent "
         "replacement), compared with LQ and GT"),
        "no SDE: this evaluates the autoencoder"),
    "regression": ("output = network(LQ) (HINet returns [stage1, stage2]: the image is the last)",),
}
TLC_STEP = ("TLC: global average pools replaced by a local mean over base_size = 1.5 x train_size "
            "(NAFNet local_arch; refusion.models.nafnet.local_pooling)")
GRIDS_STEP = ("val.grids: the LQ is cut into crop_size tiles with adaptive overlapping steps, each tile "
              "restored, the overlaps averaged (ImageRestorationModel.grids / grids_inverse)")
