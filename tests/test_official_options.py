"""Official option files (IR-SDE / Refusion, NAFNet, HINet) -> OfficialOptions."""
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from refusion.schedulers.ir_sde import IRSDEScheduler
from refusion.official.options import (
    OfficialOptions,
    OptionsError,
    OptionsMismatchError,
    OptionsWarning,
    check_against,
    parse_options,
    read_options,
)

DATA = Path(__file__).parent / "data" / "official_options"
NAF_SMALL = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": (1, 1), "dec_blk_nums": (1, 1)}
UNET_SMALL = {"in_nc": 3, "out_nc": 3, "nf": 8, "depth": 2}
COND_NAF = {**NAF_SMALL, "cond_channels": 0, "add_intro_skip": False}
IRSDE = ("ir-sde", "cosine", 0.005)
BICUBIC = "torch.nn.functional.interpolate(LQ, scale_factor=scale, mode='bicubic')"

# file -> (task, network name, kwargs, (sde_type, max_sigma, T, schedule, eps, sampler, sample_T) or
#          None, inference mode, inference fields)
EXPECTED = {
    "deshadow_refusion_test.yml": ("deshadow", "ConditionalNAFNet", COND_NAF,
                                   ("ir-sde", 50, 100, "cosine", 0.005, "sde", None), "ir-sde",
                                   {"pretrain_model_G": "pretrained/refusion.pth"}),
    "deshadow_refusion_train.yml": ("deshadow", "ConditionalNAFNet", COND_NAF,
                                    ("ir-sde", 50, 100, "cosine", 0.005, "sde", None), "ir-sde",
                                    {"pretrain_model_G": None}),
    "deshadow_ir-sde_test.yml": ("deshadow", "ConditionalUNet", {**UNET_SMALL, "cond_channels": 0},
                                 ("ir-sde", 30, 100, "cosine", 0.005, "sde", None), "ir-sde", {}),
    "deblurring_ir-sde_test.yml": ("deraining", "ConditionalUNet", {**UNET_SMALL, "cond_channels": 0},
                                   ("ir-sde", 10, 100, "cosine", 0.005, "sde", None), "ir-sde", {}),
    "deraining_ir-sde_test.yml": ("deraining", "ConditionalUNet", {**UNET_SMALL, "cond_channels": 0},
                                  ("ir-sde", 10, 100, "cosine", 0.005, "posterior", None), "ir-sde",
                                  {"pretrain_model_G": "pretrained/rain100h_sde.pth"}),
    "denoising-sde_refusion_test.yml": ("denoising-sde", "UnconditionalNAFNet", NAF_SMALL,
                                        ("denoising", 70, 1000, "cosine", 0.04, "ode", None), "denoising",
                                        {"noise_sigma": 15.0}),
    "denoising-sde_ir-sde_test.yml": ("denoising-sde", "UnconditionalUNet", UNET_SMALL,
                                      ("denoising", 75, 100, "cosine", 0.04, "ode", None), "denoising",
                                      {"noise_sigma": 15.0}),
    "sisr_refusion_test.yml": ("sisr", "ConditionalNAFNet", COND_NAF,
                               ("ir-sde", 50, 100, "cosine", 0.005, "sde", None), "sr",
                               {"upscale": 4, "upscale_fn": BICUBIC, "pretrain_model_G": None}),
    "inpainting_ir-sde_test.yml": ("inpainting", "ConditionalUNet", {**UNET_SMALL, "cond_channels": 0},
                                   ("ir-sde", 30, 100, "cosine", 0.005, "sde", None), "inpainting",
                                   {"mask_root": "data/datasets/gt_keep_masks/thin"}),
    "latent-dehazing_nasde_test.yml": ("latent-dehazing", "ConditionalNAFNet",
                                       {**NAF_SMALL, "img_channel": 8, "cond_channels": 0, "add_intro_skip": True},
                                       ("ir-sde", 50, 100, "cosine", 0.005, "sde", 100), "latent",
                                       {"pretrain_model_L": "pretrained_models/latent-dehazing.pth"}),
    "latent-bokeh_refusion_test.yml": ("latent-bokeh", "BokehNAFNet",
                                       {**NAF_SMALL, "img_channel": 4, "middle_blk_num": 2},
                                       ("ir-sde", 50, 100, "cosine", 0.005, "sde", None), "latent-bokeh",
                                       {"lens_metadata": "datasets/ntire2023/bokeh/ntire_val/meta.txt"}),
    "stereo-sr_refusion_test.yml": ("stereo-sr", "StereoNAFNet", NAF_SMALL,
                                    ("ir-sde", 50, 100, "cosine", 0.005, "sde", 100), "stereo-sr",
                                    {"upscale": 4, "stereo": True, "upscale_fn": BICUBIC}),
    "unet-latent_test_latent.yml": ("unet-latent", "LatentUNet",
                                    {"in_ch": 3, "out_ch": 3, "ch": 4, "ch_mult": (2, 4), "embed_dim": 8},
                                    None, "autoencoder", {}),
    "NAFNet-GoPro-width32.yml": ("NAFNet-GoPro-width32-test", "NAFNet", NAF_SMALL, None, "regression",
                                 {"param_key": "params", "grids_crop_size": None}),
    "NAFNet-SIDD-width32.yml": ("NAFNet-SIDD-width32-test", "NAFNet",
                                {**NAF_SMALL, "middle_blk_num": 2, "enc_blk_nums": (2, 2), "dec_blk_nums": (2, 2)},
                                None, "regression", {}),
    "Baseline-GoPro-width32.yml": ("Baseline-GoPro-width32-test", "Baseline",
                                   {**NAF_SMALL, "dw_expand": 1, "ffn_expand": 2}, None, "regression", {}),
    "Baseline-SIDD-width64.yml": ("Baseline-SIDD-width64-test", "Baseline",
                                  {**NAF_SMALL, "middle_blk_num": 2, "enc_blk_nums": (2, 2), "dec_blk_nums": (2, 2),
                                   "dw_expand": 2, "ffn_expand": 2}, None, "regression", {}),
    "HINet-GoPro.yml": ("HINetPlus-GoPro", "HINet", {"in_chn": 3, "wf": 4, "depth": 5, "relu_slope": 0.2,
                                                     "hin_position_left": 3, "hin_position_right": 4},
                        None, "regression", {"grids_crop_size": (256, 256)}),
    "HINet-SIDD-1x.yml": ("HINet-SIDD", "HINet", {"in_chn": 3, "wf": 4, "depth": 5, "relu_slope": 0.2,
                                                  "hin_position_left": 0, "hin_position_right": 4},
                          None, "regression", {"grids_crop_size": None}),
}
TLC = {"NAFNet-GoPro-width32.yml", "Baseline-GoPro-width32.yml"}


def read(name: str, **kwargs) -> OfficialOptions:
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptionsWarning)
        return read_options(DATA / name, **kwargs)


def raw(name: str) -> dict:
    return yaml.safe_load((DATA / name).read_text())


def parse(data: dict, **kwargs) -> OfficialOptions:
    return parse_options(data, "opts.yml", **kwargs)


def fails(data, *fragments, **kwargs) -> str:
    with pytest.raises(OptionsError) as info:
        parse_options(data, "opts.yml", **kwargs)
    message = str(info.value)
    for fragment in ("opts.yml",) + fragments:
        assert fragment in message, message
    return message


def test_every_fixture_is_expected():
    assert sorted(p.name for p in DATA.glob("*.yml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses(name):
    task, network, kwargs, sde, mode, inference = EXPECTED[name]
    opts = read(name)
    assert opts.source == str(DATA / name)
    assert opts.style == ("ir-sde" if "network_G" in raw(name) else "basicsr")
    assert (opts.task, opts.network.name, opts.network.kwargs) == (task, network, kwargs)
    assert opts.unknown == {}
    if sde is None:
        assert opts.sde is None
    else:
        got = opts.sde
        assert (got.sde_type, got.max_sigma, got.T, got.schedule, got.eps, got.sampler, got.sample_T) == sde
    assert opts.inference.mode == mode
    for key, value in inference.items():
        assert getattr(opts.inference, key) == value, key
    assert (opts.network.tlc is not None) == (name in TLC)
    assert opts.latent is None or opts.task.startswith("latent-")
    for key in ("name", "datasets"):
        assert opts.ignored.get(key), key
    for key, why in opts.ignored.items():
        assert isinstance(why, str) and why, key


def test_model_type_and_distortion():
    assert (read("deshadow_refusion_test.yml").model_type, read("deshadow_refusion_test.yml").distortion) == \
        ("denoising", "deshadow")
    assert read("denoising-sde_refusion_test.yml").distortion is None
    assert read("latent-bokeh_refusion_test.yml").model_type == "latent_denoising"
    assert read("unet-latent_test_latent.yml").model_type == "latent"
    assert read("HINet-GoPro.yml").model_type == "ImageRestorationModel"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_every_parsed_network(name, one_thread):
    from refusion.models import MODELS

    opts = read(name)
    for spec in filter(None, (opts.network, opts.latent)):
        assert spec.name in MODELS, f"refusion.models has no {spec.name} (official {spec.official_type})"
        net = MODELS[spec.name](**spec.kwargs)
        for key, value in spec.kwargs.items():
            got = net.config[key]
            assert (tuple(got) if isinstance(got, list) else got) == value, key
        assert type(spec.build()) is type(net)


def test_tlc_of_the_local_types(one_thread):
    from refusion.models.nafnet import convert_to_local_pooling

    opts = read("NAFNet-GoPro-width32.yml")
    tlc = opts.network.tlc
    assert (tlc.train_size, tlc.base_size, tlc.fast_imp) == ((1, 3, 256, 256), (384, 384), False)
    assert opts.network.official_type == "NAFNetLocal"
    assert any("TLC" in step for step in opts.inference.steps)
    net = opts.network.build().eval()
    replaced = convert_to_local_pooling(net, tlc.train_size, base_size=tlc.base_size)
    assert replaced
    data = raw("Baseline-GoPro-width32.yml")
    data["network_g"].update(train_size=[1, 3, 128, 192], fast_imp=False)
    assert parse(data).network.tlc.base_size == (192, 288)
    data["network_g"]["fast_imp"] = True
    with pytest.warns(OptionsWarning, match="fast_imp"):
        assert parse(data).network.tlc.fast_imp is True
    fails(data, "network_g.fast_imp", "fast TLC", strict=True)


def test_official_sizes_and_defaults():
    data = raw("deshadow_refusion_test.yml")
    data["network_G"]["setting"] = {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1,
                                    "dec_blk_nums": [1, 1, 1, 1]}
    net = parse(data).network
    assert net.kwargs == {"img_channel": 3, "width": 64, "middle_blk_num": 1, "enc_blk_nums": (1, 1, 1, 28),
                          "dec_blk_nums": (1, 1, 1, 1), "cond_channels": 0, "add_intro_skip": False}
    assert net.origin["width"] == "network_G.setting.width"
    assert "official default" in net.origin["img_channel"]
    # the official ConditionalNAFNet defaults (width 16, no levels) are not refusion's
    data["network_G"]["setting"] = {}
    assert parse(data).network.kwargs["width"] == 16
    assert parse(data).network.kwargs["enc_blk_nums"] == ()
    latent = raw("latent-dehazing_nasde_test.yml")
    latent["network_L"]["setting"] = {}
    latent["network_G"]["setting"]["img_channel"] = 4
    assert parse(latent).latent.kwargs == {"in_ch": 3, "out_ch": 3, "ch": 64, "ch_mult": (1, 2, 4, 4), "embed_dim": 4}


def test_sr_upscale_is_bicubic_interpolate_and_ignored_upscale_setting():
    opts = read("sisr_refusion_test.yml")
    assert "F.interpolate(LQ, scale_factor=4, mode='bicubic')" in opts.inference.steps[0]
    assert "imresize" in opts.inference.steps[0]
    data = raw("sisr_refusion_test.yml")
    data["network_G"]["setting"]["upscale"] = 4  # what the official options.py adds
    assert "degradation.scale" in parse(data).ignored["network_G.setting.upscale"]
    data["degradation"]["scale"] = 2
    assert parse(data).inference.upscale == 2
    del data["degradation"]["scale"]
    fails(data, "degradation.scale", "upsamples")


@pytest.mark.parametrize("scale", [2, 3])
def test_stereo_sr_upscale_is_4_whatever_degradation_scale_says(scale):
    # the official stereo-sr test.py upsamples both views by a 4 written in the script; degradation.scale
    # is not read for it, so a file that says 2 or 3 still describes a x4 model
    data = raw("stereo-sr_refusion_test.yml")
    data["degradation"]["scale"] = scale
    opts = parse(data, task="stereo-sr")
    assert (opts.inference.upscale, opts.inference.stereo) == (4, True)
    assert any("F.interpolate(LQ, scale_factor=4, mode='bicubic')" in step for step in opts.inference.steps)
    assert not any(f"scale_factor={scale}" in step for step in opts.inference.steps)
    assert any(f"degradation.scale is {scale}" in note for note in opts.notes)


def test_task_from_the_official_path(tmp_path):
    deblur = tmp_path / "codes" / "config" / "deblurring" / "options" / "test" / "ir-sde.yml"
    deblur.parent.mkdir(parents=True)
    shutil.copy(DATA / "deblurring_ir-sde_test.yml", deblur)
    assert read_options(deblur).task == "deblurring" and read_options(deblur).notes == ()
    assert any("derain" in note for note in read("deblurring_ir-sde_test.yml").notes)
    assert read("deblurring_ir-sde_test.yml", task="deblurring").task == "deblurring"
    gopro = tmp_path / "options" / "test" / "GoPro" / "NAFNet-width32.yml"
    gopro.parent.mkdir(parents=True)
    shutil.copy(DATA / "NAFNet-GoPro-width32.yml", gopro)
    assert read_options(gopro).task == "GoPro"
    fails(raw("deshadow_refusion_test.yml"), "task 'deblur'", "deblurring", task="deblur")


def test_ignored_keys_have_reasons():
    train = read("deshadow_refusion_train.yml")
    for key in ("train", "logger", "use_tb_logger", "gpu_ids", "path.strict_load", "path.resume_state",
                "degradation.sigma", "degradation.scale"):
        assert key in train.ignored, key
    assert "training-only" in train.ignored["train"]
    assert "strictly" in train.ignored["path.strict_load"]
    nafnet = read("NAFNet-SIDD-width32.yml")
    for key in ("dist_params", "manual_seed", "num_gpu", "val.metrics", "val.save_img", "path.strict_load_g"):
        assert key in nafnet.ignored, key
    denoise = read("denoising-sde_refusion_test.yml")
    assert "Gaussian" in denoise.ignored["degradation.noise_type"]
    dehaze = read("latent-dehazing_nasde_test.yml")
    assert any("sample_T" in note for note in dehaze.notes)
    assert read("HINet-SIDD-1x.yml").ignored["val.rgb2bgr"]
    data = raw("denoising-sde_refusion_test.yml")
    data["sde"].update(schedule="linear", eps=0.01)
    assert "0.04" in parse(data).ignored["sde.eps"] and parse(data).sde.eps == 0.04


def test_latent_specs():
    opts = read("latent-dehazing_nasde_test.yml")
    assert opts.latent.name == "LatentUNet" and opts.latent.official_type == "UNet"
    assert opts.latent.kwargs == {"in_ch": 3, "out_ch": 3, "ch": 4, "ch_mult": (1, 2), "embed_dim": 8}
    assert opts.latent.pretrain_model_L == "pretrained_models/latent-dehazing.pth"
    assert "decode" in opts.inference.steps[-1]
    bokeh = read("latent-bokeh_refusion_test.yml")
    assert bokeh.latent.kwargs["embed_dim"] == bokeh.network.kwargs["img_channel"] == 4
    assert any("lens" in step for step in bokeh.inference.steps)
    data = raw("deshadow_refusion_test.yml")
    data["network_L"] = raw("latent-dehazing_nasde_test.yml")["network_L"]
    assert "latent tasks" in parse(data).ignored["network_L"] and parse(data).latent is None


def test_sde_scheduler_kwargs():
    from refusion.schedulers import IRSDEScheduler

    sde = read("deraining_ir-sde_test.yml").sde
    kwargs = sde.scheduler_kwargs()
    assert kwargs == {"max_sigma": 10.0, "num_train_timesteps": 100, "schedule": "cosine", "eps": 0.005,
                      "sampler": "posterior"}
    assert IRSDEScheduler(**sde.scheduler_kwargs("mr_sde")).config.sampler == "mr_sde"
    assert read("deraining_ir-sde_test.yml").sde.scheduler_class == "IRSDEScheduler"
    from refusion import schedulers

    opts = read("denoising-sde_refusion_test.yml")
    scheduler = getattr(schedulers, opts.sde.scheduler_class)(**opts.sde.scheduler_kwargs(),
                                                              noise_level=opts.inference.noise_sigma)
    assert (type(scheduler).__name__, scheduler.config.eps, scheduler.config.sampler) == \
        ("DenoisingSDEScheduler", 0.04, "ode")
    assert 1 <= scheduler.start_timestep < 1000


def test_to_dict():
    data = read("latent-dehazing_nasde_test.yml").to_dict()
    assert data["network"]["kwargs"]["add_intro_skip"] is True and data["latent"]["kwargs"]["embed_dim"] == 8


# ---------------------------------------------------------------------------------------------
# errors


def test_file_errors(tmp_path):
    with pytest.raises(OptionsError, match="not found"):
        read_options(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("network_G: [unclosed\n")
    with pytest.raises(OptionsError, match=r"bad.yml: not valid YAML"):
        read_options(bad)
    bad.write_text("network_g: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(OptionsError, match="refusing a YAML tag"):
        read_options(bad)
    bad.write_text("")
    with pytest.raises(OptionsError, match="empty"):
        read_options(bad)
    fails([1, 2], "must be a mapping")


def test_no_network_section():
    data = raw("deshadow_refusion_test.yml")
    del data["network_G"]
    fails(data, "no network section", "network_G", "network_g", "NAFNet")
    fails({**raw("deshadow_refusion_test.yml"), "network_g": {"type": "NAFNet"}}, "both network_G")


def test_unknown_network_types():
    data = raw("deshadow_refusion_test.yml")
    data["network_G"]["which_model_G"] = "ConditionalNAFNt"
    fails(data, "network_G.which_model_G", "unknown network type 'ConditionalNAFNt'",
          "did you mean 'ConditionalNAFNet'", "ConditionalUNet")
    data = raw("NAFNet-SIDD-width32.yml")
    data["network_g"]["type"] = "Restormer"
    fails(data, "network_g.type", "'Restormer'", "NAFNet, NAFNetLocal, Baseline, BaselineLocal, HINet")
    data["network_g"] = {"type": "NAFSSR", "up_scale": 4, "width": 64, "num_blks": 32}
    fails(data, "network_g.type", "stereo super-resolution", "no refusion implementation")
    data = raw("stereo-sr_refusion_test.yml")
    data["network_G"]["which_model_G"] = "ConditionalUNet"
    fails(data, "for task stereo-sr", "ConditionalNAFNet")


def test_network_section_errors():
    data = raw("deshadow_ir-sde_test.yml")
    del data["network_G"]["setting"]["nf"]
    fails(data, "network_G.setting.nf", "missing", "requires it")
    data = raw("deshadow_ir-sde_test.yml")
    del data["network_G"]["which_model_G"]
    fails(data, "network_G.which_model_G", "missing")
    data = raw("deshadow_ir-sde_test.yml")
    del data["network_G"]["setting"]
    fails(data, "network_G.setting", "missing section")
    data = raw("NAFNet-SIDD-width32.yml")
    data["network_g"]["dw_expand"] = 2  # an argument of Baseline, not of the official NAFNet
    fails(data, "network_g.dw_expand", "not an argument of the official NAFNet", "width")
    data["network_g"] = {"type": "NAFNet", "width": "32"}
    fails(data, "network_g.width", "an integer >= 1", "'32'")
    data["network_g"] = {"type": "NAFNet", "enc_blk_nums": [1, 1], "dec_blk_nums": [1]}
    fails(data, "network_g.dec_blk_nums", "as many levels")
    del data["network_g"]["type"]
    fails(data, "network_g.type", "missing")
    data = raw("latent-dehazing_nasde_test.yml")
    data["network_G"]["setting"]["img_channel"] = 4
    fails(data, "network_G.setting.img_channel", "embed_dim (8)")
    del data["network_L"]
    fails(data, "network_L", "missing section")


def test_sde_errors():
    for key in ("max_sigma", "T", "schedule", "eps"):
        data = raw("deshadow_refusion_test.yml")
        del data["sde"][key]
        fails(data, f"sde.{key}", "missing", "IRSDE", "max_sigma, T, schedule, eps")
    data = raw("deshadow_refusion_test.yml")
    del data["sde"]
    fails(data, "sde", "missing section")
    data = raw("deshadow_refusion_test.yml")
    data["sde"]["eps"] = "5e-3"
    fails(data, "sde.eps", "a number", "5.0e-3")
    data["sde"]["eps"] = 0.005
    data["sde"]["schedule"] = "sigmoid"              # not an official schedule: the scheduler's are listed
    fails(data, "sde.schedule", "sigmoid", ", ".join(IRSDEScheduler.SCHEDULES))
    data["sde"]["schedule"] = "cosin"
    fails(data, "sde.schedule", "did you mean 'cosine'")
    data = raw("denoising-sde_refusion_test.yml")
    del data["sde"]["T"]
    fails(data, "sde.T", "DenoisingSDE", "max_sigma, T")
    data = raw("denoising-sde_refusion_test.yml")
    del data["degradation"]["sigma"]
    fails(data, "degradation.sigma", "missing")
    data = raw("deraining_ir-sde_test.yml")
    data["sde"]["sampling_mode"] = "ddim"
    fails(data, "sde.sampling_mode", "sde, posterior")


def test_unknown_keys_warn_or_raise():
    data = raw("deshadow_refusion_test.yml")
    data["sde"]["gamma"] = 2
    data["tiling"] = True
    with pytest.warns(OptionsWarning, match="sde.gamma"):
        opts = parse(data)
    assert set(opts.unknown) == {"sde.gamma", "tiling"}
    fails(data, "strict", "sde.gamma", "tiling", strict=True)
    inpaint = raw("inpainting_ir-sde_test.yml")
    del inpaint["degradation"]["mask_root"]
    assert parse(inpaint).task == "deraining"  # without mask_root the content reads as deraining
    with pytest.warns(OptionsWarning, match="mask_root"):
        assert parse(inpaint, task="inpainting").inference.mask_root is None
    hinet = raw("HINet-GoPro.yml")
    hinet["val"]["trans_num"] = 8
    with pytest.warns(OptionsWarning, match="trans_num"):
        parse(hinet)


# ---------------------------------------------------------------------------------------------
# check_against


def test_check_against_agrees():
    for name in sorted(EXPECTED):
        opts = read(name)
        assert check_against(opts, opts.network.name, dict(opts.network.kwargs)) == []
        if opts.latent:
            assert check_against(opts, "LatentUNet", dict(opts.latent.kwargs)) == []


def test_check_against_contradictions():
    opts = read("deshadow_refusion_test.yml")
    src = str(DATA / "deshadow_refusion_test.yml")
    [msg] = check_against(opts, "ConditionalUNet", {"in_nc": 3, "nf": 64})
    assert src in msg and "network_G" in msg and "ConditionalNAFNet" in msg and "ConditionalUNet" in msg
    [msg] = check_against(opts, "ConditionalNAFNet", {**COND_NAF, "width": 64})
    assert src in msg and "network_G.setting.width" in msg and "width=8" in msg and "width=64" in msg
    msgs = check_against(opts, "ConditionalNAFNet", {"enc_blk_nums": [1, 1, 1, 28], "img_channel": 6,
                                                     "add_intro_skip": True})
    assert len(msgs) == 3
    assert any("network_G.setting.enc_blk_nums" in m and "(1, 1, 1, 28)" in m for m in msgs)
    assert any("img_channel" in m and "official default" in m for m in msgs)
    assert any("add_intro_skip" in m and "network_G.which_model_G" in m for m in msgs)
    with pytest.raises(OptionsMismatchError, match="width=64"):
        check_against(opts, "ConditionalNAFNet", {"width": 64}, strict=True)
    assert issubclass(OptionsMismatchError, OptionsError) and issubclass(OptionsError, ValueError)


def test_check_against_latent():
    opts = read("latent-dehazing_nasde_test.yml")
    msgs = check_against(opts, "ConditionalNAFNet", {"img_channel": 4, "width": 8})
    assert any("network_G.setting.img_channel" in m for m in msgs)
    assert any("network_L.setting.embed_dim" in m and "8" in m and "4" in m for m in msgs)
    [msg] = check_against(opts, "LatentUNet", {"ch": 8, "embed_dim": 8})
    assert "network_L.setting.ch" in msg and "ch=4" in msg and "ch=8" in msg
    hinet = read("HINet-GoPro.yml")
    [msg] = check_against(hinet, "HINet", {"wf": 64, "hin_position_left": 3})
    assert "network_g.wf" in msg and "wf=4" in msg and "wf=64" in msg


def test_deraining_sampling_mode_and_grids_steps(tmp_path):
    data = raw("deraining_ir-sde_test.yml")
    del data["sde"]["sampling_mode"]
    assert parse(data).sde.sampler == "sde"
    assert not any("sampling_mode" in note for note in parse(data).notes)  # the task is a guess here
    named = parse(data, task="deraining")
    assert named.sde.sampler == "sde" and any("sampling_mode" in note for note in named.notes)
    assert "sde.sampling_mode" in parse(raw("deraining_ir-sde_test.yml"), task="deblurring").ignored
    assert any("grids" in step for step in read("HINet-GoPro.yml").inference.steps)
    assert not any("grids" in step for step in read("HINet-SIDD-1x.yml").inference.steps)
    assert "posterior sampler" in read("deraining_ir-sde_test.yml").inference.steps[1]
