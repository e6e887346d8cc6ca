"""RefusionPipeline, load_pipeline, sample and restore: reproducibility, input kinds, tiling, latent path."""
import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import refusion
import refusion.inference.pipeline as pipeline_module
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.models.latent_unet import LatentUNet
from refusion.models.nafnet import NAFNet
from refusion.benchmarks.perf import activate_skip_gains
from refusion.inference.pipeline import RefusionPipeline, load_pipeline, sde_sample
from refusion.inference.sampling import sample
from refusion.inference.restoration import restore
from refusion.schedulers.ir_sde import IRSDEScheduler
from same_results import INSTANCE_ATOL, assert_close_outputs, assert_same_state


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: one thread avoids OpenMP spin contention on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_noise_net(channels=3, seed=0):
    torch.manual_seed(seed)
    net = ConditionalNAFNet(img_channel=channels, width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                            dec_blk_nums=[1, 1])
    return activate_skip_gains(net, 0.5).eval()


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe():
    return RefusionPipeline(unet=tiny_noise_net(), scheduler=IRSDEScheduler(sampler="posterior"))


def test_save_load_round_trip_gives_the_same_outputs(pipe, tmp_path):
    lq = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    before = pipe(lq, num_inference_steps=5, generator=gens(3, 4), output_type="pt", progress=False).images
    pipe.save_pretrained(tmp_path / "saved")
    loaded = load_pipeline(tmp_path / "saved")
    after = loaded(lq, num_inference_steps=5, generator=gens(3, 4), output_type="pt", progress=False).images
    assert_same_state(loaded.unet, pipe.unet)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert_close_outputs(after, before)                   # another instance: float32 tolerance
    # the clamped images saturate for an untrained network: compare the raw final states too
    raw = [sde_sample(p.unet, IRSDEScheduler.from_config(p.scheduler.config), lq, num_inference_steps=5,
                      generator=gens(3, 4)) for p in (pipe, loaded)]
    assert_close_outputs(raw[1], raw[0])
    again = pipe(lq, num_inference_steps=5, generator=gens(3, 5), output_type="pt", progress=False).images
    assert not torch.allclose(before[1], again[1])          # the seed matters (stochastic sampler)
    assert before.min() >= 0 and before.max() <= 1
    # save_pretrained writes checksums.json; load_pipeline verifies it and names a damaged file
    weights = tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.as_posix().endswith("unet/diffusion_pytorch_model.safetensors")
    listed = json.loads((tmp_path / "saved" / "checksums.json").read_text())["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in listed and "model_index.json" in listed
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors' is corrupt: sha256"):
        load_pipeline(tmp_path / "saved")


def test_generator_list_makes_each_image_independent_of_the_batch(pipe):
    lq = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    batch = pipe(lq, num_inference_steps=4, sampler="sde", generator=gens(10, 11, 12), output_type="pt",
                 progress=False).images
    alone = pipe(lq[1:2], num_inference_steps=4, sampler="sde", generator=gens(11), output_type="pt",
                 progress=False).images
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-5, atol=1e-5)
    raw_batch = sde_sample(pipe.unet, IRSDEScheduler(sampler="sde"), lq, num_inference_steps=4,
                           generator=gens(10, 11, 12))
    raw_alone = sde_sample(pipe.unet, IRSDEScheduler(sampler="sde"), lq[1:2], num_inference_steps=4,
                           generator=gens(11))
    torch.testing.assert_close(raw_alone[0], raw_batch[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one per image"):
        pipe(lq, num_inference_steps=2, generator=gens(1, 2), output_type="pt", progress=False)


def test_sampler_override_does_not_change_the_pipeline_scheduler(pipe):
    pipe(torch.rand(1, 3, 16, 16), num_inference_steps=2, sampler="ode", output_type="pt", progress=False)
    assert pipe.scheduler.config.sampler == "posterior"


def test_output_types(pipe):
    lq = torch.rand(1, 3, 16, 16)
    assert isinstance(pipe(lq, num_inference_steps=2, output_type="pil", progress=False).images[0], Image.Image)
    arr = pipe(lq, num_inference_steps=2, output_type="np", progress=False).images
    assert arr.shape == (1, 16, 16, 3) and arr.dtype == np.float32
    with pytest.raises(ValueError, match="output_type"):
        pipe(lq, num_inference_steps=2, output_type="jpg", progress=False)


@pytest.mark.parametrize("kind", ["chw", "bchw", "uint8", "uint16", "float", "pil"])
def test_sample_returns_the_kind_and_shape_it_was_given(pipe, kind):
    rng = np.random.default_rng(0)
    base = rng.random((20, 16, 3)).astype(np.float32)
    lq = {
        "chw": torch.from_numpy(base).permute(2, 0, 1).contiguous(),
        "bchw": torch.from_numpy(base).permute(2, 0, 1)[None].double(),
        "uint8": (base * 255).astype(np.uint8),
        "uint16": (base * 65535).astype(np.uint16),
        "float": base,
        "pil": Image.fromarray((base * 255).astype(np.uint8)),
    }[kind]
    out = sample(lq, steps=3, model=pipe, generator=torch.Generator().manual_seed(0), progress=False)
    assert type(out) is type(lq)
    if isinstance(lq, Image.Image):
        assert out.size == lq.size and out.mode == "RGB"
    else:
        assert out.shape == lq.shape and out.dtype == lq.dtype


def test_sample_without_a_model_says_what_to_pass():
    with pytest.raises(ValueError, match=r"needs a model: pass model='runs/shadow'.*Example: refusion.sample"):
        refusion.sample(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="refusion.restore needs a model"):
        refusion.restore(torch.rand(3, 8, 8))


def test_inputs_out_of_range_are_clamped_with_a_warning_and_nan_refused(pipe):
    lq = torch.rand(1, 3, 16, 16) * 1.2 - 0.1
    with pytest.warns(UserWarning, match="outside \\[0, 1\\]; clamping"):
        pipe(lq, num_inference_steps=2, output_type="pt", progress=False)
    lq[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        pipe(lq, num_inference_steps=2, output_type="pt", progress=False)


class LocalNoiseNet(nn.Module):
    """A noise network whose receptive-field radius (2) fits in overlap // 4."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x_t, mu, t):
        return self.body(torch.cat([x_t - mu, mu], 1)) * (1 + t.float().view(-1, 1, 1, 1) / 50)


@pytest.mark.parametrize("sampler", ["sde", "posterior"])
def test_tiled_sde_with_shared_noise_equals_whole_image(sampler):
    net = LocalNoiseNet().eval()
    lq = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(5))
    kwargs = dict(steps=6, model=net, sampler=sampler, progress=False)
    whole = sample(lq, generator=gens(1, 2), **kwargs)
    tiled = sample(lq, generator=gens(1, 2), tile_size=32, tile_overlap=16, **kwargs)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole, lq, atol=1e-2)        # the network and noise did something


def test_latent_path_mechanics(monkeypatch):
    torch.manual_seed(0)
    ae = LatentUNet(ch=4, ch_mult=[1, 2, 2, 2], embed_dim=4).eval()
    pipe = RefusionPipeline(unet=tiny_noise_net(channels=4), scheduler=IRSDEScheduler(), autoencoder=ae)
    lq = torch.rand(1, 3, 384, 512, generator=torch.Generator().manual_seed(0))
    whole = pipe(lq, num_inference_steps=2, generator=gens(0), output_type="pt", progress=False).images
    assert whole.shape == lq.shape and 0 <= whole.min() and whole.max() <= 1
    # large-image mode: tiled encode without full-size skips, decode_from_lq; same result
    monkeypatch.setattr(pipeline_module, "LATENT_AUTO_PIXELS", 100 * 100)
    monkeypatch.setattr(pipeline_module, "LATENT_TILE_DEFAULT", 128)
    calls = []
    monkeypatch.setattr(ae, "decode", lambda *a: calls.append("decode"))   # must not be used
    tiled = pipe(lq, num_inference_steps=2, generator=gens(0), output_type="pt", progress=False).images
    assert calls == []
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="latent=False"):
        pipe(lq, num_inference_steps=2, latent=False, output_type="pt", progress=False)


def test_latent_true_without_autoencoder_is_refused(pipe):
    with pytest.raises(ValueError, match="needs a pipeline with an autoencoder"):
        pipe(torch.rand(1, 3, 16, 16), num_inference_steps=2, latent=True, progress=False)


def write_run(root, task, net, scheduler=None, gt_size=64):
    root.mkdir(parents=True)
    (root / "recipe.yml").write_text(yaml.safe_dump({"task": task, "data": {"train": {"gt_size": gt_size}}}))
    net.save_pretrained(root / "model")
    if scheduler is not None:
        scheduler.save_pretrained(root / "scheduler")
    return root


def test_load_pipeline_from_a_run_directory(tmp_path, pipe):
    run = write_run(tmp_path / "run sde é", "sde", pipe.unet, IRSDEScheduler(sampler="posterior"))
    assert json.loads((run / "model" / "config.json").read_text())["_class_name"] == "ConditionalNAFNet"
    lq = torch.rand(1, 3, 16, 16)
    a = sample(lq, steps=3, model=str(run), generator=gens(7), progress=False)
    b = sample(lq, steps=3, model=pipe, generator=gens(7), progress=False)
    assert_close_outputs(a, b)                            # the run's network is another instance
    other = tiny_noise_net(seed=1)
    other.save_pretrained(run / "best")
    c = sample(lq, steps=3, model=load_pipeline(run, weights="best"), generator=gens(7), progress=False)
    d = sample(lq, steps=3, model=other, scheduler=IRSDEScheduler(sampler="posterior"), generator=gens(7),
               progress=False)
    assert_close_outputs(c, d)
    assert (a - c).abs().max() > 100 * INSTANCE_ATOL        # the best/ weights, not the model/ ones
    with pytest.raises(ValueError, match="Use refusion.restore"):
        load_pipeline(write_run(tmp_path / "reg", "regressor", NAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1])))
    with pytest.raises(FileNotFoundError, match="recipe.yml"):
        load_pipeline(tmp_path)


def test_restore_with_a_regressor(tmp_path):
    torch.manual_seed(0)
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).eval()
    lq = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = net(lq).clamp(0, 1)
    torch.testing.assert_close(restore(lq, model=net, progress=False), expected)
    run = write_run(tmp_path / "nafnet", "regressor", net, gt_size=32)
    img = (lq[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = restore(img, model=run, tile_size=32, tile_overlap=8, tlc=True, progress=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="use refusion.sample"):
        restore(lq, model=RefusionPipeline(unet=tiny_noise_net(), scheduler=IRSDEScheduler()))
    with pytest.raises(ValueError, match="use refusion.restore"):
        sample(lq, model=net)


def test_half_precision_and_conditioning_channels():
    torch.manual_seed(0)
    net = ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1],
                            cond_channels=1).eval()
    pipe = RefusionPipeline(unet=net, scheduler=IRSDEScheduler(sampler="ode"))
    lq, cond = torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    full = pipe(lq, num_inference_steps=3, cond=cond, generator=gens(0), output_type="pt", progress=False).images
    half = pipe(lq, num_inference_steps=3, cond=cond, generator=gens(0), output_type="pt", progress=False,
                half=True).images
    assert half.dtype == torch.float32 and half.shape == full.shape
    other = pipe(lq, num_inference_steps=3, cond=1 - cond, generator=gens(0), output_type="pt", progress=False).images
    assert not torch.equal(full, other)                   # the conditioning reaches the network
    tiled = pipe(lq, num_inference_steps=3, cond=cond, generator=gens(0), output_type="pt", progress=False,
                 tile_size=16, tile_overlap=4).images
    assert tiled.shape == full.shape
    with pytest.raises(ValueError, match="cond must be"):
        pipe(lq, num_inference_steps=2, cond=torch.rand(1, 1, 16, 16), progress=False)


class _Recorder:
    """Forward pre-hook: the dtype and layout of a conv's weight and input as the network runs."""

    def __init__(self, conv):
        self.seen = []
        conv.register_forward_pre_hook(lambda module, args: self.seen.append(
            (module.weight.dtype, args[0].dtype, module.weight.is_contiguous(memory_format=torch.channels_last),
             args[0].is_contiguous(memory_format=torch.channels_last))))


def _snapshot(net):
    return {k: (v.clone(), v.dtype, v.is_contiguous()) for k, v in net.state_dict().items()}


def _assert_unchanged(net, snapshot):
    after = net.state_dict()
    assert after.keys() == snapshot.keys()
    for key, (value, dtype, contiguous) in snapshot.items():
        assert after[key].dtype == dtype and after[key].is_contiguous() == contiguous, key
        assert torch.equal(after[key], value), key


@pytest.fixture()
def bf16_forced(monkeypatch):
    """The half path taken also where the CPU would emulate bf16 (where it is not native, half=True falls
    back to float32: tests/test_capability.py); what these tests pin is the half path itself."""
    import refusion.inference.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)


def test_half_sampling_runs_bf16_channels_last_weights_close_to_float32_and_leaves_the_network_alone(bf16_forced):
    net = tiny_noise_net()
    recorder = _Recorder(net.intro)
    snapshot = _snapshot(net)
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    kwargs = dict(steps=5, model=net, sampler="mr_sde", progress=False)
    full = sample(lq, generator=gens(0), **kwargs)
    half = sample(lq, generator=gens(0), half=True, **kwargs)
    # the float32 run: the caller's float32 weights, the inputs in channels_last, at each of the 5 steps
    assert recorder.seen[:5] == [(torch.float32, torch.float32, False, True)] * 5
    # the half run: bf16 weights and inputs, both channels_last, at every one of the 5 steps
    assert recorder.seen[5:] == [(torch.bfloat16, torch.bfloat16, True, True)] * 5
    assert half.dtype == torch.float32 and half.is_contiguous()
    err = (half - full).abs()
    psnr = 10 * torch.log10(1 / err.square().mean())
    # measured: 45.8 dB PSNR, mean abs 0.00038 (bf16 keeps 8 mantissa bits; a few pixels of this
    # random network near a decision point move by up to 0.16, the rest stay within 1e-3)
    assert err.max() > 0 and psnr > 40 and err.mean() < 0.001
    _assert_unchanged(net, snapshot)


def test_half_restore_is_close_to_float32_and_leaves_the_network_alone(bf16_forced):
    torch.manual_seed(0)
    net = activate_skip_gains(NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 0.5).eval()
    lq = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        direct = net(lq).clamp(0, 1)
    recorder = _Recorder(net.intro)
    snapshot = _snapshot(net)
    full = restore(lq, model=net, progress=False)
    half = restore(lq, model=net, progress=False, half=True)
    tiled = restore(lq, model=net, progress=False, half=True, tile_size=32, tile_overlap=8)
    # float32: channels_last input, same values as the network called on the NCHW image
    assert recorder.seen[0] == (torch.float32, torch.float32, False, True)
    assert full.is_contiguous() and (full - direct).abs().max() < 1e-5
    assert recorder.seen[1:] == [(torch.bfloat16, torch.bfloat16, True, True)] * len(recorder.seen[1:])
    assert half.dtype == torch.float32
    err = (half - full).abs()
    # measured: max 0.0082, mean 0.0011; tiled max 0.0156
    assert 0 < err.max() < 0.02 and err.mean() < 0.002
    assert (tiled - full).abs().max() < 0.03
    _assert_unchanged(net, snapshot)


def test_sample_with_a_bare_network_keeps_the_given_scheduler_class():
    """refusion.sample(net, scheduler=DenoisingSDEScheduler(...)) samples the DenoisingSDE, as the pipeline does."""
    from refusion.models import UnconditionalNAFNet
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    torch.manual_seed(0)
    net = activate_skip_gains(UnconditionalNAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]),
                              0.5).eval()
    sched = DenoisingSDEScheduler(max_sigma=50, num_train_timesteps=20, noise_level=25)
    noisy = torch.rand(1, 3, 16, 16)
    got = sample(noisy, steps=4, model=net, scheduler=sched, progress=False)
    expected = RefusionPipeline(unet=net, scheduler=sched)(noisy, num_inference_steps=4, output_type="pt",
                                                           progress=False).images
    torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------ what a user relies on: half, tiled with cond
class LocalCondNoiseNet(nn.Module):
    """A noise network with a conditioning input and a receptive-field radius of 2 pixels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(7, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x_t, mu, t, cond=None):
        assert cond is not None and cond.shape[-2:] == x_t.shape[-2:]
        return self.body(torch.cat([x_t - mu, mu, cond], 1)) * (1 + t.float().view(-1, 1, 1, 1) / 50)


@pytest.mark.parametrize("sampler", ["sde", "mr_sde"])
def test_tiled_sampling_with_conditioning_equals_the_whole_image(sampler):
    """tile_overlap // 4 = 4 >= the network's radius, so tiles must reproduce the whole-image run
    to float32 rounding (1e-5), with the conditioning cut at the same place as the image."""
    net = LocalCondNoiseNet().eval()
    g = torch.Generator().manual_seed(6)
    lq, cond = torch.rand(2, 3, 64, 48, generator=g), torch.rand(2, 1, 64, 48, generator=g)
    kwargs = dict(steps=5, model=net, sampler=sampler, cond=cond, progress=False)
    whole = sample(lq, generator=gens(1, 2), **kwargs)
    tiled = sample(lq, generator=gens(1, 2), tile_size=32, tile_overlap=16, **kwargs)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
    # the conditioning matters here: flipping it moves the result by far more than the tolerance
    flipped = sample(lq, generator=gens(1, 2), tile_size=32, tile_overlap=16, **{**kwargs, "cond": cond.flip(-1)})
    assert (flipped - whole).abs().max() > 1e-2


def test_half_sampling_with_conditioning_is_within_35_db_of_float32(bf16_forced):
    """half=True (bfloat16 weights and inputs, forced here also where the CPU would emulate bf16):
    bfloat16 keeps 8 significant bits (relative rounding 2^-9), so a few steps of a small network
    must stay within 35 dB PSNR of the float32 result on [0, 1] images, tiled or not; the
    conditioning reaches the half-precision network (changing it moves the result far more)."""
    net = activate_skip_gains(ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1],
                                                dec_blk_nums=[1], cond_channels=1), 0.5).eval()
    pipe = RefusionPipeline(unet=net, scheduler=IRSDEScheduler(sampler="ode"))
    g = torch.Generator().manual_seed(8)
    lq, cond = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 1, 32, 32, generator=g)

    def run(**kw):
        return pipe(lq, num_inference_steps=4, generator=gens(0), output_type="pt", progress=False, **kw).images

    def psnr(a, b):
        return float(10 * torch.log10(1 / (a - b).square().mean()))

    full, half = run(cond=cond), run(cond=cond, half=True)
    assert half.dtype == torch.float32 and (half - full).abs().max() > 0          # bf16 really ran
    assert psnr(half, full) > 35, psnr(half, full)
    other = run(cond=1 - cond, half=True)
    assert psnr(other, half) < psnr(half, full) - 10                               # cond reaches it
    tiled_full = run(cond=cond, tile_size=16, tile_overlap=4)
    tiled_half = run(cond=cond, tile_size=16, tile_overlap=4, half=True)
    assert (tiled_half - tiled_full).abs().max() > 0 and psnr(tiled_half, tiled_full) > 35


def test_sample_with_another_scheduler_keeps_the_pipelines_sr_upscaling():
    """refusion.sample(model=pipeline, scheduler=...) drives the same networks with the given scheduler; an SR
    pipeline still upscales its LQ first (lq_upscale), as the pipeline itself and sample_posterior do."""
    pipe = RefusionPipeline(unet=tiny_noise_net(), scheduler=IRSDEScheduler(), lq_upscale=2)
    lq = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    other = IRSDEScheduler(sampler="posterior", max_sigma=20)
    got = sample(lq, steps=3, model=pipe, scheduler=other, generator=torch.Generator().manual_seed(1), progress=False)
    assert got.shape == (1, 3, 16, 24)
    direct = pipe.with_scheduler(other)(lq, num_inference_steps=3, generator=torch.Generator().manual_seed(1),
                                        output_type="pt", progress=False).images
    torch.testing.assert_close(got, direct, rtol=0, atol=0)
    assert pipe.scheduler.config.sampler != "posterior"            # the caller's pipeline is left as it is
