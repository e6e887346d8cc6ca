"""detect_architecture: every refusion network and constructor argument read back from weights
alone (key patterns and shapes), through the official wrappers and prefixes; the official
reference networks; refusals that name the closest architecture and the keys that do not fit."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from refusion.models import MODELS
from refusion.official.detection import DETECTORS, DetectionError, detect_architecture

DATA = Path(__file__).parent / "data"

# several non-default configurations of every MODELS network
CONFIGS = [
    ("NAFNet", dict(width=8, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1])),
    ("NAFNet", dict(img_channel=1, width=4, middle_blk_num=0, enc_blk_nums=[0, 2, 1], dec_blk_nums=[2, 0, 1],
                    dw_expand=4, ffn_expand=3)),
    ("NAFNet", dict(img_channel=4, width=6, middle_blk_num=2, dw_expand=1)),          # no levels at all
    ("Baseline", dict(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    ("Baseline", dict(img_channel=4, width=6, middle_blk_num=0, enc_blk_nums=[2], dec_blk_nums=[1], dw_expand=2,
                      ffn_expand=3)),
    ("NAFFTNet", dict(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    ("NAFFTNet", dict(img_channel=1, width=16, middle_blk_num=2, enc_blk_nums=[1, 0, 1], dec_blk_nums=[1, 1, 1],
                      dw_expand=4, do_conv=False)),
    ("ConditionalNAFNet", dict(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    ("ConditionalNAFNet", dict(img_channel=4, width=8, middle_blk_num=2, enc_blk_nums=[2], dec_blk_nums=[1],
                               cond_channels=5)),
    ("ConditionalNAFNet", dict(img_channel=1, width=4, middle_blk_num=0, enc_blk_nums=[1, 1, 2], dec_blk_nums=[0, 1, 1],
                               cond_channels=1)),
    ("UnconditionalNAFNet", dict(width=8, middle_blk_num=2, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1])),
    ("UnconditionalNAFNet", dict(img_channel=6, width=8, middle_blk_num=0, enc_blk_nums=[1], dec_blk_nums=[2])),
    ("BokehNAFNet", dict(img_channel=4, width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    ("BokehNAFNet", dict(width=8, middle_blk_num=2, enc_blk_nums=[2], dec_blk_nums=[1])),
    ("StereoNAFNet", dict(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    ("StereoNAFNet", dict(img_channel=1, width=4, middle_blk_num=0, enc_blk_nums=[2], dec_blk_nums=[1])),
    ("HINet", dict(wf=4, depth=3, hin_position_left=1, hin_position_right=1)),
    ("HINet", dict(in_chn=1, wf=4, depth=2)),
    ("HINet", dict(in_chn=4, wf=2, depth=4, hin_position_left=2, hin_position_right=2)),
    ("ConditionalUNet", dict(nf=4, depth=2)),
    ("ConditionalUNet", dict(in_nc=1, out_nc=1, nf=4, depth=1, cond_channels=2)),
    ("UnconditionalUNet", dict(nf=4, depth=2)),
    ("UnconditionalUNet", dict(in_nc=2, out_nc=1, nf=4, depth=1)),
    ("LatentUNet", dict(ch=4, ch_mult=[1, 2, 4], embed_dim=3)),
    ("LatentUNet", dict(in_ch=1, out_ch=2, ch=2, ch_mult=[2], embed_dim=2)),
    ("LatentUNet", dict(ch=2, ch_mult=[2, 2, 3, 1], embed_dim=4)),
]
PURPOSE = {"NAFNet": "regressor", "Baseline": "regressor", "NAFFTNet": "regressor", "HINet": "regressor",
           "LatentUNet": "autoencoder"}
WRAPPERS = (None, "params", "params_ema", "state_dict")
PREFIXES = ("", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.")


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def constructor_args(name: str, kwargs: dict) -> dict:
    """Every constructor argument of MODELS[name] with ``kwargs`` applied (sequences as lists)."""
    params = inspect.signature(MODELS[name].__init__).parameters
    return {k: plain(kwargs.get(k, p.default)) for k, p in params.items() if k != "self"}


def wrapped(sd: dict, wrapper: str | None, prefix: str) -> dict:
    sd = {prefix + k: v for k, v in sd.items()}
    if wrapper is None:
        return sd
    return {wrapper: sd, "epoch": 3} if wrapper == "state_dict" else {wrapper: sd}


def assert_detected(found, name: str, expected: dict) -> None:
    assert found.name == name
    assert found.purpose == PURPOSE.get(name, "noise")
    assert {k: plain(v) for k, v in found.build_kwargs.items()} == expected
    constructor = {k for k, u in found.undetermined.items() if u.constructor}
    assert not constructor & set(found.kwargs)
    assert set(found.kwargs) | constructor == set(expected)     # every argument is read or reported


def test_there_is_one_detector_per_network():
    assert isinstance(DETECTORS, tuple)
    names = [d.name for d in DETECTORS]
    assert len(names) == len(set(names)) and set(names) == set(MODELS)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_every_network_is_read_back_from_its_weights_through_every_wrapper(name, kwargs):
    torch.manual_seed(0)
    sd = MODELS[name](**kwargs).state_dict()
    expected = constructor_args(name, kwargs)
    for wrapper in WRAPPERS:
        for prefix in PREFIXES:
            assert_detected(detect_architecture(wrapped(sd, wrapper, prefix)), name, expected)
    for i, wrapper in enumerate(WRAPPERS):
        found = detect_architecture(sd)
        model = found.load(wrapped(sd, wrapper, PREFIXES[i % len(PREFIXES)]))
        assert type(model) is MODELS[name]
        got = model.state_dict()
        assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_size_default_networks_are_detected_from_shapes_alone(name):
    with torch.device("meta"):           # shapes without memory: the 76M-parameter Refusion network too
        sd = MODELS[name]().state_dict()
    found = detect_architecture(sd)
    assert_detected(found, name, constructor_args(name, {}))
    assert found.build(device="meta").state_dict().keys() == sd.keys()


def test_unconditional_six_channel_and_conditional_rgb_networks_share_an_intro_shape_but_not_a_name():
    uncond = MODELS["UnconditionalNAFNet"](img_channel=6, width=8, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()
    cond = MODELS["ConditionalNAFNet"](img_channel=3, width=8, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()
    assert uncond["intro.weight"].shape == cond["intro.weight"].shape and uncond.keys() == cond.keys()
    a, b = detect_architecture(uncond), detect_architecture(cond)
    assert (a.name, a.kwargs["img_channel"]) == ("UnconditionalNAFNet", 6)
    assert (b.name, b.kwargs["img_channel"], b.kwargs["cond_channels"]) == ("ConditionalNAFNet", 3, 0)


@pytest.mark.parametrize("name, kwargs, args", [
    ("ConditionalNAFNet", dict(width=8, enc_blk_nums=[1], dec_blk_nums=[1], add_intro_skip=True), ["add_intro_skip"]),
    ("NAFNet", dict(width=8, enc_blk_nums=[1], dec_blk_nums=[1], drop_out_rate=0.1), ["drop_out_rate"]),
    ("Baseline", dict(width=8, enc_blk_nums=[1], dec_blk_nums=[1], drop_out_rate=0.2), ["drop_out_rate"]),
    ("NAFFTNet", dict(width=8, enc_blk_nums=[1], dec_blk_nums=[1], fft_residual=True, drop_out_rate=0.1),
     ["fft_residual", "drop_out_rate"]),
    # kernel sizes 5 and 7 that the default (eca_gamma 2, eca_b 1) would not give: another pair is fitted
    ("NAFFTNet", dict(width=16, enc_blk_nums=[1], dec_blk_nums=[1], eca_gamma=1, eca_b=1), ["eca_gamma", "eca_b"]),
    ("HINet", dict(wf=4, depth=3, relu_slope=0.1), ["relu_slope"]),
    ("HINet", dict(wf=4, depth=3, hin_position_right=9), ["hin_position_right"]),    # any value >= depth - 1
    ("HINet", dict(wf=2, depth=7, hin_position_right=6), ["hin_position_right"]),    # the class default 4 would not do
    ("HINet", dict(wf=4, depth=3, hin_position_left=3), ["hin_position_left", "hin_position_right"]),  # no HIN
])
def test_arguments_the_weights_cannot_determine_are_reported_and_the_build_still_loads(name, kwargs, args):
    sd = MODELS[name](**kwargs).state_dict()
    found = detect_architecture(sd)
    assert found.name == name
    for arg in args:
        assert arg not in found.kwargs and arg in found.undetermined and found.undetermined[arg].reason
    found.load(sd)        # strict: the values used give exactly these keys and shapes


def test_eca_settings_are_fitted_to_the_kernel_sizes():
    sd = MODELS["NAFFTNet"](width=16, enc_blk_nums=[1], dec_blk_nums=[1], eca_gamma=1, eca_b=1).state_dict()
    used = detect_architecture(sd).build_kwargs
    assert (used["eca_gamma"], used["eca_b"]) != (2, 1)


def test_a_folded_nafft_net_is_detected_with_plain_depthwise_convs():
    net = MODELS["NAFFTNet"](width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).fold()
    found = detect_architecture(net.state_dict())
    assert found.name == "NAFFTNet" and found.kwargs["do_conv"] is False
    found.load(net.state_dict())


def test_hin_positions_are_read_from_the_norm_keys():
    found = detect_architecture(MODELS["HINet"](wf=4, depth=4, hin_position_left=1, hin_position_right=2).state_dict())
    assert (found.kwargs["hin_position_left"], found.kwargs["hin_position_right"]) == (1, 2)


def _reference_specs() -> list[tuple[str, str, dict, str]]:
    """(state-dict file, expected MODELS name, official kwargs, official class) of every reference network."""
    networks = json.loads((DATA / "networks.json").read_text())
    networks["unet_ae_small"] = json.loads((DATA / "net_unet_ae_small.json").read_text())
    variants = json.loads((DATA / "variants" / "variants.json").read_text())
    variants.update(json.loads((DATA / "variants" / "variants_extra.json").read_text()))
    names = {"nafnet_small": "NAFNet", "baseline_small": "Baseline", "nafnet_local_small": "NAFNet",
             "cnafnet_refusion_small": "ConditionalNAFNet", "cnafnet_latent_small": "ConditionalNAFNet",
             "hinet_small": "HINet", "cunet_small": "ConditionalUNet", "unet_ae_small": "LatentUNet",
             "cnafnet_denoise_small": "UnconditionalNAFNet", "cnafnet_bokeh_small": "BokehNAFNet",
             "cnafnet_stereo_small": "StereoNAFNet", "cunet_denoise_small": "UnconditionalUNet"}
    specs = [(f"net_{key}.pt", names[key], networks[key]["kwargs"], networks[key]["class_name"]) for key in
             ("nafnet_small", "baseline_small", "nafnet_local_small", "cnafnet_refusion_small", "cnafnet_latent_small",
              "hinet_small", "cunet_small", "unet_ae_small")]
    specs += [(f"variants/net_{key}.pt", names[key], variants[key]["kwargs"], variants[key]["class_name"]) for key in
              ("cnafnet_denoise_small", "cnafnet_bokeh_small", "cnafnet_stereo_small", "cunet_denoise_small")]
    return specs


# the official NAFNetLocal's TLC arguments: refusion applies TLC at inference, not in the constructor
TLC_KEYS = {"train_size", "fast_imp"}


@pytest.mark.parametrize("path, name, kwargs, official", _reference_specs(), ids=lambda v: str(v)[:24])
def test_reference_networks_of_the_official_code_are_detected_with_their_configuration(path, name, kwargs, official):
    sd = torch.load(DATA / path, weights_only=True)
    found = detect_architecture({"params": {f"module.{k}": v for k, v in sd.items()}})
    assert found.name == name
    used = found.build_kwargs
    assert {k: plain(used[k]) for k in kwargs if k not in TLC_KEYS} == {k: plain(v) for k, v in kwargs.items()
                                                                        if k not in TLC_KEYS}
    if official.endswith("Local"):
        assert not found.undetermined["train_size"].constructor
    if path == "net_cnafnet_latent_small.pt":     # the latent-dehazing network: its intro skip is not in the weights
        assert "add_intro_skip" in found.undetermined
    found.load(sd)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [{}, {"params": {}}, {"epoch": 3, "lr": 0.1}, {"intro.weight": [1, 2]}, [1, 2]],
                         ids=["empty", "empty-params", "no-tensors", "list-value", "not-a-dict"])
def test_empty_or_non_tensor_input_is_refused_with_a_plain_message(obj):
    with pytest.raises(DetectionError) as info:
        detect_architecture(obj)
    assert info.value.closest is None and "closest" not in str(info.value)
    assert isinstance(info.value, ValueError)


def small_nafnet() -> dict:
    return MODELS["NAFNet"](width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).state_dict()


def refusal(sd: dict) -> DetectionError:
    with pytest.raises(DetectionError) as info:
        detect_architecture(sd)
    return info.value


def test_a_missing_key_is_named_with_the_closest_architecture():
    sd = small_nafnet()
    del sd["decoders.1.0.sca.1.weight"]
    err = refusal(sd)
    assert err.closest == "NAFNet" and err.missing == ["decoders.1.0.sca.1.weight"]
    assert not err.unexpected and not err.shape_mismatches
    assert "closest: NAFNet" in str(err) and "decoders.1.0.sca.1.weight" in str(err)


def test_an_unexpected_key_and_a_wrong_shape_are_named():
    sd = small_nafnet()
    sd["extra.weight"] = torch.zeros(3)
    sd["decoders.0.0.conv4.weight"] = torch.zeros(48, 16, 1, 1)
    err = refusal({"params_ema": {f"_orig_mod.{k}": v for k, v in sd.items()}})
    assert err.closest == "NAFNet" and err.unexpected == ["extra.weight"] and not err.missing
    assert len(err.shape_mismatches) == 1 and err.shape_mismatches[0].startswith("decoders.0.0.conv4.weight: weights (48, 16, 1, 1)")
    assert "extra.weight" in str(err) and "decoders.0.0.conv4.weight" in str(err)


def test_an_unmet_key_condition_is_named():
    sd = MODELS["ConditionalNAFNet"](width=8, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()
    del sd["time_mlp.3.weight"]
    err = refusal(sd)
    assert err.closest == "ConditionalNAFNet" and err.unmet == ["missing key time_mlp.3.weight"]
    assert "time_mlp.3.weight" in str(err)


def test_intro_channels_that_fit_no_noise_network_are_named():
    sd = MODELS["ConditionalNAFNet"](width=8, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()
    sd["intro.weight"] = torch.zeros(8, 5, 3, 3)     # 5 inputs, a 3-channel ending: neither 3 nor >= 6
    err = refusal(sd)
    assert err.closest == "ConditionalNAFNet"
    assert err.unmet == ["intro.weight.shape[1] is 5, not >= 2 x ending.weight.shape[0] = 6"]


def test_levels_that_no_constructor_accepts_are_named():
    sd = {k: v for k, v in small_nafnet().items() if not k.startswith("ups.1.")}
    err = refusal(sd)
    assert err.closest == "NAFNet" and len(err.problems) == 1 and "enc_blk_nums" in err.problems[0]


def test_hin_on_levels_that_are_not_one_range_is_refused():
    sd = {k: v for k, v in MODELS["HINet"](wf=4, depth=4).state_dict().items() if ".1.norm." not in k}
    err = refusal(sd)
    assert err.closest == "HINet" and "levels [0, 2, 3]" in err.problems[0]


def test_a_foreign_network_is_refused_naming_the_missing_keys():
    sd = {"conv_first.weight": torch.zeros(64, 3, 3, 3), "body.0.rdb1.conv1.weight": torch.zeros(32, 64, 3, 3)}
    err = refusal(sd)
    assert err.closest in MODELS and err.unmet and all(u.startswith(("missing key", "no key like")) for u in err.unmet)
    assert "no refusion network fits" in str(err)
