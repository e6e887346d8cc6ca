"""The one loader and the one restore path: capabilities declared by the networks, defaults in one place,
settings validated once with the keyword and the flag, and the restore function's results."""
from __future__ import annotations

import pytest
import torch

import refusion
from refusion.inference.model import LoadedModel, load_model
from refusion.inference.restorer import check_settings, restore_image
from refusion.inference.settings import RestoreSettings, SettingsError
from refusion.models import (BokehNAFNet, ConditionalNAFNet, ConditionalUNet, HINet, LatentUNet, NAFNet, StereoNAFNet,
                             UnconditionalNAFNet, UnconditionalUNet)
from refusion.models.capabilities import capabilities_of
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler

TINY = dict(width=4, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1], middle_blk_num=1)


@pytest.mark.parametrize("net, purpose, conditioning, multiple, channels", [
    (NAFNet(**TINY), "regressor", "none", 4, 3),
    (HINet(wf=4, depth=3), "regressor", "none", 4, 3),
    (ConditionalNAFNet(**TINY), "noise", "degraded", 4, 3),
    (UnconditionalNAFNet(**TINY), "noise", "none", 4, 3),
    (BokehNAFNet(**TINY), "noise", "lens", 4, 3),
    (StereoNAFNet(**TINY), "noise", "stereo", 4, 6),
    (ConditionalUNet(nf=4, depth=2), "noise", "degraded", 4, 3),
    (UnconditionalUNet(nf=4, depth=3), "noise", "none", 8, 3),
    (LatentUNet(ch=4, ch_mult=[1, 2], embed_dim=2), "autoencoder", "none", 4, 3),
], ids=lambda v: type(v).__name__ if isinstance(v, torch.nn.Module) else None)
def test_each_network_declares_what_it_can_do(net, purpose, conditioning, multiple, channels):
    caps = capabilities_of(net)
    assert (caps.purpose, caps.conditioning, caps.multiple, caps.input_channels) == \
        (purpose, conditioning, multiple, channels)
    # the declared multiple is the one the network pads to: a side of that multiple runs unpadded
    assert caps.multiple & (caps.multiple - 1) == 0


def test_subclasses_and_wrappers_keep_the_declaration():
    class MyStereo(StereoNAFNet):      # a user's subclass: no name list to fail
        pass

    net = MyStereo(**TINY)
    assert capabilities_of(net).conditioning == "stereo"
    wrapped = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(wrapped)
    wrapped.module = net
    assert capabilities_of(wrapped).conditioning == "stereo"
    assert capabilities_of(torch.compile(net)).conditioning == "stereo"     # OptimizedModule._orig_mod
    with pytest.raises(TypeError, match="does not declare its capabilities"):
        capabilities_of(lambda x: x)


def test_default_steps_are_the_samplers_documented_ones():
    scheduler = IRSDEScheduler(num_train_timesteps=100)
    model = load_model(ConditionalNAFNet(**TINY), scheduler=scheduler)
    assert model.kind == "sde" and model.defaults.sampler == "mr_sde"
    assert [model.default_steps(s) for s in ("mr_sde", "mr_ode", "posterior", "sde", "ode")] == [10, 10, 100, 100, 100]
    assert check_settings(model, RestoreSettings()).steps == 10
    assert check_settings(model, RestoreSettings(sampler="posterior")).steps == 100
    assert check_settings(model, RestoreSettings(steps=7)).steps == 7
    short = load_model(ConditionalNAFNet(**TINY), scheduler=IRSDEScheduler(num_train_timesteps=5))
    assert short.default_steps() == 5                     # never more than the trained steps
    denoising = load_model(UnconditionalNAFNet(**TINY),
                           scheduler=DenoisingSDEScheduler(num_train_timesteps=50, noise_level=25, sampler="ode"))
    assert denoising.default_steps() == denoising.scheduler.start_timestep < 50


def test_a_default_call_runs_the_default_steps():
    net = ConditionalNAFNet(**TINY)
    lq = torch.rand(1, 3, 16, 16)
    model = load_model(net, scheduler=IRSDEScheduler(num_train_timesteps=100))
    calls = []
    default = restore_image(model, lq, RestoreSettings(seed=1), callback=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 10) for i in range(11)]
    explicit = refusion.sample(lq, model=net, scheduler=IRSDEScheduler(num_train_timesteps=100), steps=10,
                               generator=torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(default.image, explicit, rtol=0, atol=1e-6)


@pytest.mark.parametrize("changes, words", [
    (dict(steps=0), ["steps", "--steps", ">= 1"]),
    (dict(samples=0), ["samples", "--samples"]),
    (dict(tile=-4), ["tile", "--tile"]),
    (dict(color_fix="grey"), ["color_fix", "--color-fix", "adain"]),
    (dict(eta=1.5), ["eta", "--eta", "[0, 1]"]),
    (dict(seed=1, generator=torch.Generator()), ["seed", "not both"]),
    (dict(tlc=(0, 4)), ["tlc", "--tlc"]),
    (dict(half="yes"), ["half", "--half"]),
])
def test_settings_are_refused_once_naming_the_keyword_and_the_flag(changes, words):
    with pytest.raises(SettingsError) as info:
        RestoreSettings(**changes)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_what_a_model_cannot_do_is_refused_before_any_work():
    regressor = load_model(NAFNet(**TINY))
    sde = load_model(ConditionalNAFNet(**TINY), scheduler=IRSDEScheduler(num_train_timesteps=10))
    stereo = load_model(StereoNAFNet(**TINY), scheduler=IRSDEScheduler(num_train_timesteps=10))
    bokeh = load_model(BokehNAFNet(**TINY), scheduler=IRSDEScheduler(num_train_timesteps=10))
    cases = [(regressor, RestoreSettings(samples=2), "posterior samples need an SDE model"),
             (regressor, RestoreSettings(tlc=True), "training patch size"),
             (sde, RestoreSettings(sampler="euler"), "choose one of sde, ode, posterior, mr_ode, mr_sde"),
             (sde, RestoreSettings(steps=11), "10 trained steps"),
             (sde, RestoreSettings(tlc=32), "for regressors"),
             (sde, RestoreSettings(lens_info=[1.0, 2.0, 3.0]), "only for bokeh models"),
             (stereo, RestoreSettings(self_ensemble=True), "stereo"),
             (bokeh, RestoreSettings(), "needs the lens information")]
    for model, settings, words in cases:
        with pytest.raises(SettingsError, match=words.replace("(", r"\(")):
            check_settings(model, settings)
    # the regressor ignores the sampler's knobs rather than failing (the command line notes it)
    assert check_settings(regressor, RestoreSettings(sampler="mr_sde", steps=3)).steps is None


def test_posterior_samples_come_back_with_their_mean_and_std():
    net = ConditionalNAFNet(**TINY)
    model = load_model(net, scheduler=IRSDEScheduler(num_train_timesteps=10))
    lq = torch.rand(1, 3, 16, 16)
    out = restore_image(model, lq, RestoreSettings(samples=3, steps=2, seed=4))
    assert out.samples.shape == (3, 1, 3, 16, 16)
    torch.testing.assert_close(out.image, out.samples.mean(0))
    torch.testing.assert_close(out.std, out.samples.std(0, correction=0))
    assert float(out.std.mean()) > 1e-4                     # different starts x_T: different samples
    post = refusion.sample_posterior(lq, model=model, num_samples=3, steps=2,
                                     generator=torch.Generator().manual_seed(4), progress=False)
    torch.testing.assert_close(post.samples, out.samples, rtol=0, atol=1e-6)


def test_a_loaded_model_is_accepted_by_every_library_entry_point(tmp_path):
    torch.manual_seed(0)
    net = NAFNet(**TINY)
    lq = torch.rand(1, 3, 16, 16)
    loaded = load_model(net)
    assert isinstance(loaded, LoadedModel) and loaded.kind == "regressor"
    torch.testing.assert_close(refusion.restore(lq, model=loaded, progress=False),
                               refusion.restore(lq, model=net, progress=False), rtol=0, atol=0)
    with pytest.raises(ValueError, match="regressor"):
        refusion.sample(lq, model=loaded, progress=False)
    sde = load_model(ConditionalNAFNet(**TINY), scheduler=IRSDEScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match="sde model"):
        refusion.restore(lq, model=sde, progress=False)


def test_load_model_names_what_it_cannot_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="describe an official checkpoint file"):
        load_model(tmp_path, options=tmp_path / "opts.yml")
    noise = tmp_path / "noise"
    ConditionalNAFNet(**TINY).save_pretrained(noise)
    with pytest.raises(ValueError, match="without its scheduler"):
        load_model(noise)
