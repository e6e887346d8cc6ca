"""x8 self-ensemble (refusion.inference.ensemble) in refusion.restore and refusion.sample, and the colour fix
in both: exact call counts, a hand-written loop over the 8 transforms, tiling of non-square images, TLC,
the SDE's shared noise field, reproducibility, stereo refusal."""
from __future__ import annotations

import pytest
import torch

import refusion
from refusion.inference.color_fix import apply_color_fix
from refusion.inference.ensemble import ENSEMBLE_SIZE, dihedral, undo_dihedral
from refusion.inference.tiling import tile_layout
from refusion.schedulers.ir_sde import IRSDEScheduler

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# the 8 transforms written out by hand (forward, inverse), independent of refusion.inference.ensemble
HAND = [
    (lambda x: x, lambda y: y),
    (lambda x: torch.rot90(x, 1, (2, 3)), lambda y: torch.rot90(y, 3, (2, 3))),
    (lambda x: torch.rot90(x, 2, (2, 3)), lambda y: torch.rot90(y, 2, (2, 3))),
    (lambda x: torch.rot90(x, 3, (2, 3)), lambda y: torch.rot90(y, 1, (2, 3))),
    (lambda x: x.flip(2), lambda y: y.flip(2)),
    (lambda x: x.flip(3), lambda y: y.flip(3)),                                  # = rot180 of a flip
    (lambda x: x.transpose(2, 3), lambda y: y.transpose(2, 3)),
    (lambda x: x.flip(2).flip(3).transpose(2, 3), lambda y: y.transpose(2, 3).flip(3).flip(2)),
]


class CountingRegressor(torch.nn.Module):
    """A local (3x3), orientation-dependent toy regressor that counts its calls."""

    def __init__(self, channels: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + 0.3 * torch.tanh(self.conv(x))


class CountingNoise(torch.nn.Module):
    """A local, orientation-dependent toy noise network net(x_t, mu, t) that counts its calls."""

    def __init__(self, equivariant: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)
        if equivariant:       # a kernel with the symmetries of the square: the network commutes with all 8
            with torch.no_grad():
                w = self.conv.weight
                w.copy_(sum(dihedral(w, k) for k in range(ENSEMBLE_SIZE)) / ENSEMBLE_SIZE)
        self.calls = 0

    def forward(self, x_t, mu, t, cond=None):
        self.calls += 1
        return torch.tanh(self.conv(torch.cat([x_t, mu], 1))) + 0.01 * t.float()[:, None, None, None]


def _image(height=24, width=40, batch=1, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_dihedral_transforms_are_the_eight_and_undo_inverts_them():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    seen = [dihedral(x, k) for k in range(ENSEMBLE_SIZE)]
    assert len({tuple(t.flatten().tolist()) + tuple(t.shape) for t in seen}) == ENSEMBLE_SIZE
    assert {tuple(t.shape) for t in seen} == {(1, 2, 3, 4), (1, 2, 4, 3)}
    hand = {tuple(f(x).flatten().tolist()) + tuple(f(x).shape) for f, _ in HAND}
    assert hand == {tuple(t.flatten().tolist()) + tuple(t.shape) for t in seen}
    for k in range(ENSEMBLE_SIZE):
        assert torch.equal(undo_dihedral(dihedral(x, k), k), x)
    with pytest.raises(ValueError, match="transform index must be an int in 0..7"):
        dihedral(x, 8)


# ----------------------------------------------------------------------------------------------
# refusion.restore


def _hand_ensemble(net, x):
    with torch.no_grad():
        return sum(inv(net(f(x))) for f, inv in HAND) / len(HAND)


def test_restore_self_ensemble_is_eight_calls_of_the_hand_written_mean():
    net, x = CountingRegressor(), _image()
    expected = _hand_ensemble(net, x).clamp(0, 1)
    plain = refusion.restore(x, model=net, progress=False)
    net.calls = 0
    out = refusion.restore(x, model=net, progress=False, self_ensemble=True)
    assert net.calls == ENSEMBLE_SIZE
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert (out - plain).abs().max() > 1e-3         # the toy network depends on the orientation


def test_restore_self_ensemble_tiles_each_transformed_non_square_image():
    net, x = CountingRegressor(), _image(24, 40)
    # a 3x3 network is local: tiles with overlap 8 (zero weight on overlap // 4 = 2 >= its radius) equal the whole
    tiles = {shape: len(tile_layout(*shape, 16, 8, 8)) for shape in ((24, 40), (40, 24))}
    assert tiles[(24, 40)] != tiles[(40, 24)] or tiles[(24, 40)] > 1
    out = refusion.restore(x, model=net, progress=False, self_ensemble=True, tile_size=16, tile_overlap=8)
    assert net.calls == 4 * tiles[(24, 40)] + 4 * tiles[(40, 24)]
    torch.testing.assert_close(out, _hand_ensemble(net, x).clamp(0, 1), atol=1e-5, rtol=0)


def test_restore_self_ensemble_composes_with_tlc():
    from refusion.models.nafnet import NAFNet, local_pooling

    torch.manual_seed(0)
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    with torch.no_grad():
        for block in net.modules():
            if hasattr(block, "beta"):
                block.beta.fill_(0.3)
                block.gamma.fill_(0.3)
    x = _image(24, 40)
    with local_pooling(net, (8, 8)):
        expected = _hand_ensemble(net, x).clamp(0, 1)
    out = refusion.restore(x, model=net, progress=False, self_ensemble=True, tlc=8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert (out - refusion.restore(x, model=net, progress=False, self_ensemble=True)).abs().max() > 1e-5


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_restore_color_fix_is_the_fix_of_the_clamped_result_toward_the_input(method):
    net, x = CountingRegressor(), _image()
    plain = refusion.restore(x, model=net, progress=False)
    fixed = refusion.restore(x, model=net, progress=False, color_fix=method)
    torch.testing.assert_close(fixed, apply_color_fix(plain, x, method).clamp(0, 1), atol=1e-6, rtol=0)
    assert (fixed - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"color_fix \(--color-fix\): must be None"):
        refusion.restore(x, model=net, progress=False, color_fix="histogram")


def test_self_ensemble_refuses_stereo_networks():
    from refusion.models.stereo_nafnet import StereoNAFNet

    net = StereoNAFNet(img_channel=3, width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])
    with pytest.raises(ValueError, match="not available for the stereo network StereoNAFNet.*epipolar"):
        refusion.sample(torch.rand(1, 6, 16, 16), model=net, scheduler=IRSDEScheduler(num_train_timesteps=4),
                        steps=2, progress=False, self_ensemble=True)


# ----------------------------------------------------------------------------------------------
# The SDE: refusion.sample and the pipeline


def _hand_sde(net, mu, steps, seed, sampler):
    """8 trajectories written in their transformed frames, the noise of a plain run transformed with the image."""
    g = torch.Generator().manual_seed(seed)
    base = IRSDEScheduler(num_train_timesteps=20, sampler=sampler)
    x_T = base.initial_sample(mu, generator=g)                        # what a plain run draws first
    schedulers = [IRSDEScheduler.from_config(base.config) for _ in HAND]
    for s in schedulers:
        s.set_timesteps(steps)
    states = [f(x_T) for f, _ in HAND]
    with torch.no_grad():
        for t in [int(t) for t in schedulers[0].timesteps]:
            z = torch.randn(mu.shape, generator=g)                      # what a plain run draws at this step
            t_batch = torch.full((mu.shape[0],), t, dtype=torch.long)
            for k, (f, _) in enumerate(HAND):
                eps = net(states[k], f(mu), t_batch)
                states[k] = schedulers[k].step(eps, t, states[k], mu=f(mu), variance_noise=f(z)).prev_sample
    return sum(inv(x) for (_, inv), x in zip(HAND, states)) / len(HAND)


def _sample(net, mu, steps=3, seed=0, sampler="mr_sde", **kwargs):
    scheduler = IRSDEScheduler(num_train_timesteps=20, sampler=sampler)
    return refusion.sample(mu, steps=steps, model=net, scheduler=scheduler, generator=torch.Generator().manual_seed(seed),
                           progress=False, **kwargs)


@pytest.mark.parametrize("sampler", ["mr_sde", "sde", "mr_ode"])
def test_sde_self_ensemble_is_eight_trajectories_on_one_transformed_noise_field(sampler):
    net, mu = CountingNoise(), _image(24, 40)
    out = _sample(net, mu, steps=3, sampler=sampler, self_ensemble=True)
    assert net.calls == ENSEMBLE_SIZE * 3
    torch.testing.assert_close(out, _hand_sde(net, mu, 3, 0, sampler).clamp(0, 1), atol=1e-5, rtol=0)
    assert (out - _sample(net, mu, steps=3, sampler=sampler)).abs().max() > 1e-3


def test_sde_self_ensemble_is_reproducible_and_a_symmetric_network_gives_the_plain_run():
    net, mu = CountingNoise(), _image(24, 40, batch=2)
    first = _sample(net, mu, seed=5, self_ensemble=True)
    torch.testing.assert_close(_sample(net, mu, seed=5, self_ensemble=True), first, atol=0, rtol=0)
    assert (_sample(net, mu, seed=6, self_ensemble=True) - first).abs().max() > 1e-3
    symmetric = CountingNoise(equivariant=True)
    torch.testing.assert_close(_sample(symmetric, mu, seed=5, self_ensemble=True), _sample(symmetric, mu, seed=5),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["mr_sde", "mr_ode"])
def test_sde_self_ensemble_draws_from_the_generator_what_a_plain_run_draws(sampler):
    net, mu = CountingNoise(), _image(16, 24)
    states = []
    for ensemble in (False, True):
        g = torch.Generator().manual_seed(9)
        refusion.sample(mu, steps=3, model=net, scheduler=IRSDEScheduler(num_train_timesteps=20, sampler=sampler),
                        generator=g, progress=False, self_ensemble=ensemble)
        states.append(g.get_state())
    assert torch.equal(states[0], states[1])


def test_sde_self_ensemble_tiles_non_square_images():
    net, mu = CountingNoise(), _image(24, 40)
    whole = _sample(net, mu, sampler="sde", self_ensemble=True)
    tiled = _sample(net, mu, sampler="sde", self_ensemble=True, tile_size=16, tile_overlap=8)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def _pipeline(lq_upscale=1, stereo=False):
    from refusion.models.conditional_nafnet import ConditionalNAFNet
    from refusion.models.stereo_nafnet import StereoNAFNet

    torch.manual_seed(0)
    cls = StereoNAFNet if stereo else ConditionalNAFNet
    unet = cls(img_channel=3, width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])
    return refusion.RefusionPipeline(unet=unet.eval(), scheduler=IRSDEScheduler(num_train_timesteps=20),
                                     lq_upscale=lq_upscale)


def test_pipeline_self_ensemble_calls_the_network_eight_times_a_step():
    pipe = _pipeline()
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    lq = _image(16, 24)
    out = pipe(lq, num_inference_steps=2, output_type="pt", progress=False, self_ensemble=True,
               generator=torch.Generator().manual_seed(0)).images
    assert len(calls) == ENSEMBLE_SIZE * 2 and {tuple(s[-2:]) for s in calls} == {(16, 24), (24, 16)}
    assert out.shape == lq.shape


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_pipeline_color_fix_uses_the_input_as_the_pipeline_sees_it(method):
    from refusion.inference.pipeline import upscale_lq

    pipe, lq = _pipeline(lq_upscale=2), _image(12, 16)
    run = lambda **kw: pipe(lq, num_inference_steps=2, output_type="pt", progress=False,  # noqa: E731
                            generator=torch.Generator().manual_seed(0), **kw).images
    plain, fixed = run(), run(color_fix=method)
    assert fixed.shape == (1, 3, 24, 32)
    torch.testing.assert_close(fixed, apply_color_fix(plain, upscale_lq(lq, 2), method).clamp(0, 1), atol=1e-5, rtol=0)
    assert (fixed - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"color_fix \(--color-fix\): must be None"):
        run(color_fix="Wavelet")
    sampled = refusion.sample(lq, steps=2, model=pipe, generator=torch.Generator().manual_seed(0), progress=False,
                              color_fix=method)
    torch.testing.assert_close(sampled, fixed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_sample_with_a_bare_network_fixes_colours_toward_the_input(method):
    net, mu = CountingNoise(), _image(16, 24)
    plain, fixed = _sample(net, mu, sampler="sde"), _sample(net, mu, sampler="sde", color_fix=method)
    torch.testing.assert_close(fixed, apply_color_fix(plain, mu, method).clamp(0, 1), atol=1e-5, rtol=0)
    assert (fixed - plain).abs().max() > 1e-3


def test_sample_self_ensemble_refuses_a_stereo_model():
    pipe = _pipeline(stereo=True)
    with pytest.raises(ValueError, match="stereo network StereoNAFNet.*horizontal flip would have to swap the views"):
        refusion.sample(torch.rand(1, 6, 16, 16), steps=2, model=pipe, progress=False, self_ensemble=True)


def test_posterior_samples_are_ensembled_and_colour_fixed_one_by_one():
    from refusion.inference.posterior import sample_posterior

    pipe, lq = _pipeline(), _image(16, 24)
    options = dict(steps=2, sampler="mr_sde", progress=False, self_ensemble=True, color_fix="adain")
    post = sample_posterior(lq, model=pipe, num_samples=2, generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
                            **options)
    for k, seed in enumerate((3, 4)):
        alone = refusion.sample(lq, model=pipe, generator=torch.Generator().manual_seed(seed), **options)
        torch.testing.assert_close(post.samples[k], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(post.mean, post.samples.mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["regressor", "sde"])
def test_restore_command_self_ensemble_and_color_fix(tmp_path, kind, capsys):
    from refusion.cli import restore as restore_cli
    from refusion.data.image_io import read_image, write_image
    from refusion.models.nafnet import NAFNet

    torch.manual_seed(0)
    if kind == "regressor":
        model = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
        with torch.no_grad():
            model.ending.weight.normal_(0, 0.05)
    else:
        model = _pipeline()
    model.save_pretrained(tmp_path / "model")
    write_image(tmp_path / "in" / "a.png", _image(24, 40)[0].permute(1, 2, 0).numpy(), bit_depth=16)
    image = read_image(tmp_path / "in" / "a.png")
    argv = [str(tmp_path / "in"), "--model", str(tmp_path / "model"), "--steps", "2", "--seed", "1", "--no-progress"]
    assert restore_cli.main(argv + ["-o", str(tmp_path / "plain")]) == 0
    assert restore_cli.main(argv + ["-o", str(tmp_path / "out"), "--self-ensemble", "--color-fix", "wavelet"]) == 0
    options = dict(progress=False, self_ensemble=True, color_fix="wavelet")
    if kind == "regressor":
        expected = refusion.restore(image, model=model, **options)
    else:
        expected = refusion.sample(image, steps=2, model=model, generator=torch.Generator().manual_seed(1), **options)
    out = read_image(tmp_path / "out" / "a.png")
    assert abs(out - expected).max() < 1e-4
    assert abs(out - read_image(tmp_path / "plain" / "a.png")).max() > 1e-3
    with pytest.raises(SystemExit) as info:
        restore_cli.parse_args(argv + ["-o", str(tmp_path / "x"), "--color-fix", "sepia"])
    assert info.value.code == 2 and "invalid choice: 'sepia'" in capsys.readouterr().err


def test_latent_path_ensembles_the_sde_on_the_latent_and_codes_once():
    from refusion.models.conditional_nafnet import ConditionalNAFNet
    from refusion.models.latent_unet import LatentUNet

    torch.manual_seed(0)
    ae = LatentUNet(ch=4, ch_mult=[1, 2], embed_dim=4).eval()
    unet = ConditionalNAFNet(img_channel=4, width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]).eval()
    pipe = refusion.RefusionPipeline(unet=unet, scheduler=IRSDEScheduler(num_train_timesteps=20), autoencoder=ae)
    seen = {"unet": [], "encode": 0, "decode": 0}
    unet.register_forward_pre_hook(lambda module, args: seen["unet"].append(tuple(args[0].shape[-2:])))
    for name in ("encode", "decode"):
        original = getattr(ae, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            return _original(*args, **kwargs)

        setattr(ae, name, counted)
    lq = _image(16, 24)
    out = pipe(lq, num_inference_steps=2, output_type="pt", progress=False, self_ensemble=True,
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == lq.shape and seen["encode"] == 1 and seen["decode"] == 1
    h, w = 16 // ae.downscale, 24 // ae.downscale                 # the latent's size
    assert ae.downscale > 1 and len(seen["unet"]) == ENSEMBLE_SIZE * 2 and set(seen["unet"]) == {(h, w), (w, h)}
