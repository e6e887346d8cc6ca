"""refusion.sample_posterior and RefusionPipeline(num_samples=K): each sample equals a separate
refusion.sample call with its generator, whatever the chunking; mean/std; generators; errors."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import refusion
import refusion.inference.sample_chunks as chunks_module
from refusion.benchmarks.perf import activate_skip_gains
from refusion.inference.pipeline import RefusionPipeline
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.models.latent_unet import LatentUNet
from refusion.models.nafnet import NAFNet
from refusion.models.unconditional_nafnet import UnconditionalNAFNet
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import GeneratorGroups, IRSDEScheduler, randn_like_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEPS = 4


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# sigma_bar_t of the default schedule: the noise that takes mu to x_t when the clean image is mu
SIGMA_BARS = IRSDEScheduler().sigma_bars.float()


def calibrated_noise(x_t, mu, t):
    """The exact noise if the clean image were mu: keeps the toy samples near mu, inside [0, 1]."""
    return (x_t - mu) / SIGMA_BARS.to(x_t.device)[t].view(-1, 1, 1, 1)


class CalibratedNAFNet(ConditionalNAFNet):
    """A tiny ConditionalNAFNet on top of calibrated_noise: samples vary but are not saturated."""

    def forward(self, x_t, mu, t, cond=None):
        return calibrated_noise(x_t, mu, t) + 0.3 * super().forward(x_t, mu, t, cond)


def tiny_noise_net(channels=3):
    torch.manual_seed(0)
    net = CalibratedNAFNet(img_channel=channels, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    return activate_skip_gains(net, 0.5).eval()


class LocalNoiseNet(nn.Module):
    """A small noise network (receptive-field radius 2, fits tile_overlap // 4) that records the
    batch size of every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))
        self.batches = []

    def forward(self, x_t, mu, t):
        self.batches.append(x_t.shape[0])
        return calibrated_noise(x_t, mu, t) + 0.3 * self.body(torch.cat([x_t - mu, mu], 1))


def lq_batch(batch=2, height=24, width=20, seed=1):
    return 0.2 + 0.6 * torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_not_saturated(images):
    """Most pixels strictly inside (0, 1): a comparison of clamped images then means something."""
    assert ((images > 0) & (images < 1)).float().mean() > 0.5


@pytest.mark.parametrize("sampler", ["sde", "posterior", "mr_sde"])
@pytest.mark.parametrize("as_pipeline", [False, True], ids=["network", "pipeline"])
def test_each_sample_equals_a_separate_sample_call(sampler, as_pipeline):
    net = tiny_noise_net()
    model = RefusionPipeline(unet=net, scheduler=IRSDEScheduler()) if as_pipeline else net
    lq = lq_batch()
    kw = dict(model=model, steps=STEPS, sampler=sampler, progress=False)
    post = refusion.sample_posterior(lq, num_samples=3, generator=gens(1, 2, 3), chunk_size=2, **kw)
    assert post.samples.shape == (3, 2, 3, 24, 20)
    assert_not_saturated(post.samples)
    for k, seed in enumerate((1, 2, 3)):
        alone = refusion.sample(lq, generator=gens(seed)[0], **kw)
        torch.testing.assert_close(post.samples[k], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(post.samples[0], post.samples[1], atol=1e-3)    # the noise differs per sample


def test_samples_do_not_depend_on_the_chunking_and_run_as_one_batch():
    net = LocalNoiseNet().eval()
    lq = lq_batch()
    kw = dict(model=net, num_samples=4, steps=STEPS, progress=False)
    results = {}
    for chunk in (None, 1, 3):
        net.batches.clear()
        results[chunk] = refusion.sample_posterior(lq, generator=gens(5, 6, 7, 8), chunk_size=chunk, **kw)
        expected = {None: {8}, 1: {2}, 3: {6, 2}}[chunk]          # 4 samples x 2 images per chunk
        assert set(net.batches) == expected, (chunk, set(net.batches))
        torch.testing.assert_close(results[chunk].samples, results[None].samples, rtol=0, atol=1e-6)


def test_automatic_chunk_size_follows_the_image_size(monkeypatch):
    auto = chunks_module.auto_chunk_size
    assert auto(8, 1, 256, 256, None, "cuda") == 8          # 8 x 256^2 fits AUTO_CHUNK_PIXELS
    assert auto(8, 1, 256, 256, None, "cpu") == 1           # but not the CPU's cache-sized budget
    assert auto(8, 1, 64, 64, None, "cpu") == 8
    assert auto(8, 2, 128, 128, None, "cpu") == 2
    assert auto(8, 1, 4096, 4096, None, "cuda") == 1        # never below one sample
    assert auto(8, 2, 4096, 4096, 256, "cuda") == 8         # tiles: the tile's area counts
    net = LocalNoiseNet().eval()
    monkeypatch.setattr(chunks_module, "AUTO_CHUNK_PIXELS_CPU", 2 * 24 * 20 * 2)    # two samples of the batch
    refusion.sample_posterior(lq_batch(), model=net, num_samples=5, steps=2, progress=False)
    assert sorted(set(net.batches)) == [2, 4]


def test_tiled_samples_equal_tiled_sample_calls():
    net = LocalNoiseNet().eval()
    lq = lq_batch(height=64, width=48)
    kw = dict(model=net, steps=STEPS, sampler="sde", tile_size=32, tile_overlap=16, progress=False)
    post = refusion.sample_posterior(lq, num_samples=2, generator=gens(3, 4), **kw)
    assert_not_saturated(post.samples)
    for k, seed in enumerate((3, 4)):
        torch.testing.assert_close(post.samples[k], refusion.sample(lq, generator=gens(seed)[0], **kw),
                                   rtol=0, atol=1e-6)


def test_latent_path_samples_equal_latent_sample_calls():
    torch.manual_seed(0)
    ae = LatentUNet(ch=4, ch_mult=[1, 2], embed_dim=4).eval()
    with torch.no_grad():       # a random decoder barely looks at the latent: make the samples' latents count
        ae.post_latent_conv.weight.mul_(50)
    pipe = RefusionPipeline(unet=tiny_noise_net(channels=4), scheduler=IRSDEScheduler(), autoencoder=ae)
    lq = lq_batch(height=32, width=32)
    kw = dict(model=pipe, steps=3, latent=True, progress=False)
    post = refusion.sample_posterior(lq, num_samples=2, generator=gens(1, 2), chunk_size=1, **kw)
    assert post.samples.shape == (2, 2, 3, 32, 32)
    for k, seed in enumerate((1, 2)):
        torch.testing.assert_close(post.samples[k], refusion.sample(lq, generator=gens(seed)[0], **kw),
                                   rtol=0, atol=1e-5)
    assert not torch.allclose(post.samples[0], post.samples[1], atol=1e-3)


def test_per_image_generators_of_each_sample():
    net = tiny_noise_net()
    lq = lq_batch()
    kw = dict(model=net, steps=STEPS, progress=False)
    post = refusion.sample_posterior(lq, num_samples=2, generator=[gens(1, 2), gens(3, 4)], **kw)
    torch.testing.assert_close(post.samples[1], refusion.sample(lq, generator=gens(3, 4), **kw), rtol=0, atol=1e-6)
    # image 1 of sample 0 is what generator 2 gives that image alone
    alone = refusion.sample(lq[1:], generator=gens(2), **kw)
    torch.testing.assert_close(post.samples[0, 1:], alone, rtol=0, atol=1e-6)


def test_mean_and_std_are_the_statistics_of_the_samples_as_float32_tensors():
    post = refusion.sample_posterior(lq_batch(batch=1), model=tiny_noise_net(), num_samples=4, steps=STEPS,
                                     generator=gens(1, 2, 3, 4), progress=False)
    samples = post.samples.double()
    torch.testing.assert_close(post.mean.double(), samples.mean(0), rtol=0, atol=1e-6)
    expected_std = ((samples - samples.mean(0)) ** 2).mean(0).sqrt()        # ddof 0
    torch.testing.assert_close(post.std.double(), expected_std, rtol=0, atol=1e-6)
    assert post.std.max() > 1e-3 and post.num_samples == 4
    assert {t.dtype for t in (post.samples, post.mean, post.std)} == {torch.float32}


@pytest.mark.parametrize("kind", ["np", "pil"])
def test_numpy_and_pil_inputs_give_cpu_float32_tensors(kind):
    array = (lq_batch(batch=1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    image = array if kind == "np" else Image.fromarray(array)
    post = refusion.sample_posterior(image, model=tiny_noise_net(), num_samples=2, steps=2, progress=False)
    assert post.samples.shape == (2, 1, 3, 24, 20) and post.mean.shape == post.std.shape == (1, 3, 24, 20)
    assert post.samples.dtype == torch.float32 and post.samples.device.type == "cpu"


def test_generator_none_uses_the_global_rng_and_one_generator_seeds_all():
    net = tiny_noise_net()
    kw = dict(model=net, num_samples=3, steps=STEPS, progress=False)
    lq = lq_batch(batch=1)
    torch.manual_seed(11)
    first = refusion.sample_posterior(lq, **kw).samples
    torch.manual_seed(11)
    torch.testing.assert_close(refusion.sample_posterior(lq, **kw).samples, first, rtol=0, atol=0)
    assert not torch.allclose(first[0], first[1], atol=1e-3)
    one = refusion.sample_posterior(lq, generator=torch.Generator().manual_seed(4), **kw).samples
    again = refusion.sample_posterior(lq, generator=torch.Generator().manual_seed(4), **kw).samples
    torch.testing.assert_close(one, again, rtol=0, atol=0)
    assert not torch.allclose(one[0], one[2], atol=1e-3)


def test_pipeline_num_samples_gives_image_major_images():
    pipe = RefusionPipeline(unet=tiny_noise_net(), scheduler=IRSDEScheduler())
    lq = lq_batch()
    kw = dict(num_inference_steps=STEPS, output_type="pt", progress=False)
    images = pipe(lq, num_samples=3, generator=gens(1, 2, 3), **kw).images
    assert images.shape == (6, 3, 24, 20)
    for k, seed in enumerate((1, 2, 3)):
        alone = pipe(lq, generator=gens(seed)[0], **kw).images
        for b in range(2):
            torch.testing.assert_close(images[b * 3 + k], alone[b], rtol=0, atol=1e-6)
    pil = pipe(lq, num_samples=3, generator=gens(1, 2, 3), num_inference_steps=2, progress=False).images
    assert len(pil) == 6 and isinstance(pil[0], Image.Image)


@pytest.mark.parametrize("sampler, eta", [("ode", None), ("mr_ode", None), ("posterior", 0.0)])
def test_deterministic_ir_sde_samplers_still_sample_through_their_random_start(sampler, eta):
    """x_T = mu + lambda z is drawn: the ODE-type samplers carry each draw to its own x_0 (the probability-flow
    ODE has the reverse SDE's marginals), so K samples differ and each is refusion.sample with its generator."""
    net, lq = tiny_noise_net(), lq_batch()
    kw = dict(model=net, sampler=sampler, eta=eta, steps=3, progress=False)
    post = refusion.sample_posterior(lq, num_samples=3, generator=gens(1, 2, 3), **kw)
    for k, seed in enumerate((1, 2, 3)):
        torch.testing.assert_close(post.samples[k], refusion.sample(lq, generator=gens(seed)[0], **kw),
                                   rtol=0, atol=1e-6)
    assert float((post.samples[0] - post.samples[1]).abs().max()) > 1e-2 and float(post.std.mean()) > 1e-3


@pytest.mark.parametrize("sampler, eta", [("ode", 1.0), ("posterior", 0.0)])
def test_several_samples_that_would_all_be_equal_are_refused(sampler, eta):
    """The DenoisingSDE starts from the degraded image itself: with a sampler that draws no noise every
    sample is the same image, so K > 1 is refused rather than a zero std map returned."""
    torch.manual_seed(0)
    net = UnconditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    scheduler = DenoisingSDEScheduler(sampler=sampler, eta=eta, noise_level=25)
    with pytest.raises(ValueError, match="the same image and the std zero") as info:
        refusion.sample_posterior(lq_batch(), model=net, scheduler=scheduler, num_samples=2, steps=2, progress=False)
    assert f"DenoisingSDEScheduler and the deterministic sampler={sampler!r}" in str(info.value)
    pipe = RefusionPipeline(unet=net, scheduler=scheduler)
    with pytest.raises(ValueError, match="DenoisingSDEScheduler and the deterministic"):
        pipe(lq_batch(), num_samples=2, num_inference_steps=2, progress=False)
    one = refusion.sample_posterior(lq_batch(), model=net, scheduler=scheduler, num_samples=1, steps=2,
                                    progress=False)
    assert float(one.std.abs().max()) == 0.0
    stochastic = DenoisingSDEScheduler(sampler="sde", noise_level=25)
    two = refusion.sample_posterior(lq_batch(), model=net, scheduler=stochastic, num_samples=2, steps=2,
                                    generator=gens(1, 2), progress=False)
    assert float(two.std.max()) > 0


def test_bad_arguments_are_refused_with_the_counts():
    net, lq = tiny_noise_net(), lq_batch()
    kw = dict(model=net, steps=2, progress=False)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="num_samples"):
            refusion.sample_posterior(lq, num_samples=bad, **kw)
    with pytest.raises(ValueError, match=r"list of 2 entries but num_samples=3"):
        refusion.sample_posterior(lq, num_samples=3, generator=gens(1, 2), **kw)
    with pytest.raises(ValueError, match="one entry per sample, not one per image"):
        refusion.sample_posterior(lq_batch(batch=3), num_samples=2, generator=gens(1, 2, 3), **kw)
    with pytest.raises(ValueError, match="the same form for every sample"):
        refusion.sample_posterior(lq, num_samples=2, generator=[gens(1)[0], gens(2, 3)], **kw)
    with pytest.raises(ValueError, match="chunk_size"):
        refusion.sample_posterior(lq, num_samples=2, chunk_size=0, **kw)
    with pytest.raises(ValueError, match="regressor"):
        refusion.sample_posterior(lq, model=NAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1]), steps=2)


class AllocatingNet(LocalNoiseNet):
    """Fails like an allocator when the network batch holds more than ``limit`` images."""

    def __init__(self, limit, error):
        super().__init__()
        self.limit, self.error = limit, error

    def forward(self, x_t, mu, t):
        if x_t.shape[0] > self.limit:
            raise self.error
        return super().forward(x_t, mu, t)


@pytest.mark.parametrize("error", [MemoryError("no memory"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 123 bytes")])
def test_a_chunk_out_of_memory_is_reraised_with_advice(error):
    net = AllocatingNet(limit=2, error=error).eval()
    kw = dict(model=net, num_samples=4, steps=2, progress=False)
    with pytest.raises(type(error), match=r"smaller chunk_size \(e.g. chunk_size=2\)") as info:
        refusion.sample_posterior(lq_batch(), chunk_size=4, **kw)
    assert "tile_size" in str(info.value) and info.value.__cause__ is error
    post = refusion.sample_posterior(lq_batch(), chunk_size=1, **kw)        # one sample of 2 images fits
    assert post.samples.shape[0] == 4


def test_other_runtime_errors_pass_through_unchanged():
    error = RuntimeError("shape mismatch in layer 3")
    net = AllocatingNet(limit=0, error=error).eval()
    with pytest.raises(RuntimeError) as info:
        refusion.sample_posterior(lq_batch(), model=net, num_samples=2, steps=2, progress=False)
    assert info.value is error


def test_generator_groups_draw_each_group_in_one_call():
    x = torch.zeros(6, 3, 5, 7)
    noise = randn_like_batch(x, GeneratorGroups(tuple(gens(1, 2))))
    expected = torch.cat([torch.randn((3, 3, 5, 7), generator=g) for g in gens(1, 2)])
    assert torch.equal(noise, expected)
    with pytest.raises(ValueError, match="2 generator groups cannot split a batch of 5"):
        randn_like_batch(torch.zeros(5, 3), GeneratorGroups(tuple(gens(1, 2))))
