"""The CUDA paths, against the CPU: sampling, the half path, tiled and latent restores, training precisions.

Marked ``cuda`` and skipped (with the reason) where torch sees no GPU; ``refusion gpu-check``
(tools/gpu_check.py) runs them on one GPU. CPU and CUDA float32 results are compared within float32
tolerance, with TF32 off (cuDNN convolutions would otherwise round inputs to 10 mantissa bits).

The noise of a run comes from its generator on the generator's device (randn_like_batch), so:
- a CPU generator gives a CUDA run the very noise of the CPU run: every sampler must then agree;
- a CUDA generator draws other numbers than a CPU one of the same seed; a deterministic sampler
  (mr_ode) depends only on the initial noise, so the CPU run is given the initial state the CUDA
  generator drew, and the two must agree.
"""
from __future__ import annotations

import pytest
import torch
import yaml

import refusion
from refusion.benchmarks.perf import activate_skip_gains
from refusion.inference.capability import native_bf16
from refusion.inference.pipeline import RefusionPipeline
from refusion.models import ConditionalNAFNet, LatentUNet, NAFNet
from refusion.schedulers.ir_sde import IRSDEScheduler

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (refusion gpu-check runs "
                                                                       "these tests on one)")]
CUDA = torch.device("cuda")
TOLERANCE = dict(rtol=1e-4, atol=1e-4)   # float32 CPU vs CUDA over a few network calls


@pytest.fixture(autouse=True)
def exact_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def noise_net(channels: int = 3, seed: int = 0) -> ConditionalNAFNet:
    torch.manual_seed(seed)
    net = ConditionalNAFNet(img_channel=channels, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    return activate_skip_gains(net, 0.5).eval()


def image(height: int = 64, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def run(lq, net, device, sampler, generator, **kwargs) -> torch.Tensor:
    pipe = RefusionPipeline(unet=net, scheduler=IRSDEScheduler(sampler=sampler)).to(device)
    out = pipe(lq.to(device), num_inference_steps=6, generator=generator, output_type="pt", progress=False, **kwargs)
    return out.images.float().cpu()


@pytest.mark.parametrize("sampler", ["mr_sde", "posterior", "sde"])
def test_cpu_generator_gives_cuda_the_cpu_noise(sampler):
    lq = image()
    on_cpu = run(lq, noise_net(), "cpu", sampler, torch.Generator().manual_seed(3))
    on_cuda = run(lq, noise_net(), CUDA, sampler, torch.Generator().manual_seed(3))
    torch.testing.assert_close(on_cuda, on_cpu, **TOLERANCE)
    assert not torch.allclose(on_cpu, lq, atol=1e-2)   # the network and the noise did something


def test_cuda_generator_with_the_same_initial_noise_matches_the_cpu(monkeypatch):
    lq = image()
    on_cuda = run(lq, noise_net(), CUDA, "mr_ode", torch.Generator(CUDA).manual_seed(3))
    real = IRSDEScheduler.initial_sample

    def given_noise(self, mu, *, generator=None):
        """x_T = mu + lambda z with the z the CUDA run drew first: a CUDA generator of the same seed."""
        z = torch.randn(mu.shape, generator=torch.Generator(CUDA).manual_seed(3), device=CUDA)
        return mu + z.to(mu.device, mu.dtype) * self.stationary_std

    monkeypatch.setattr(IRSDEScheduler, "initial_sample", given_noise)
    on_cpu = run(lq, noise_net(), "cpu", "mr_ode", torch.Generator().manual_seed(3))
    torch.testing.assert_close(on_cuda, on_cpu, **TOLERANCE)
    monkeypatch.setattr(IRSDEScheduler, "initial_sample", real)
    cpu_noise = run(lq, noise_net(), "cpu", "mr_ode", torch.Generator().manual_seed(3))
    assert not torch.allclose(cpu_noise, on_cpu, atol=1e-3)   # the two generators really draw different noise


def test_cuda_generator_is_reproducible():
    lq = image()
    first = run(lq, noise_net(), CUDA, "mr_sde", torch.Generator(CUDA).manual_seed(7))
    again = run(lq, noise_net(), CUDA, "mr_sde", torch.Generator(CUDA).manual_seed(7))
    assert torch.equal(first, again)


def test_half_path_on_cuda_is_float16_and_close_to_float32():
    lq = image()
    full = run(lq, noise_net(), CUDA, "mr_sde", torch.Generator().manual_seed(1))
    half = run(lq, noise_net(), CUDA, "mr_sde", torch.Generator().manual_seed(1), half=True)
    assert torch.isfinite(half).all() and not torch.equal(half, full)   # half precision really ran
    mse = (half - full).square().mean().item()
    assert 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item() > 35
    torch.manual_seed(0)
    regressor = activate_skip_gains(NAFNet(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]),
                                    0.5).eval().to(CUDA)
    plain = refusion.restore(lq.to(CUDA), model=regressor, progress=False)
    halved = refusion.restore(lq.to(CUDA), model=regressor, progress=False, half=True)
    assert halved.dtype == plain.dtype == torch.float32 and not torch.equal(halved, plain)
    assert (halved - plain).abs().max().item() < 2e-2


def test_tiled_restore_on_cuda_matches_the_cpu():
    lq = image(96, 80)
    kwargs = dict(tile_size=48, tile_overlap=16)
    on_cpu = run(lq, noise_net(), "cpu", "mr_sde", torch.Generator().manual_seed(2), **kwargs)
    on_cuda = run(lq, noise_net(), CUDA, "mr_sde", torch.Generator().manual_seed(2), **kwargs)
    torch.testing.assert_close(on_cuda, on_cpu, **TOLERANCE)


def test_latent_restore_on_cuda_matches_the_cpu():
    lq = image(128, 128)

    def latent_run(device):
        torch.manual_seed(0)
        autoencoder = LatentUNet(ch=4, ch_mult=[1, 2, 2, 2], embed_dim=4).eval()
        pipe = RefusionPipeline(unet=noise_net(channels=4), scheduler=IRSDEScheduler(), autoencoder=autoencoder)
        out = pipe.to(device)(lq.to(device), num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                              output_type="pt", progress=False, latent=True)
        return out.images.float().cpu()

    torch.testing.assert_close(latent_run(CUDA), latent_run("cpu"), **TOLERANCE)


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_training_steps_in_each_precision(precision, tmp_path):
    from test_training import make_pairs, tiny_recipe_dict

    from refusion.training import train
    from refusion.training.run_dir import verify_checkpoint

    if precision == "bf16" and not native_bf16("cuda"):
        pytest.skip("this GPU does not compute bfloat16 natively")
    data = make_pairs(tmp_path / "pairs")
    recipe = tiny_recipe_dict("sde", data, tmp_path / "run", total_iters=4, checkpoint_every=4,
                              mixed_precision=precision)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = train(str(path))
    meta = verify_checkpoint(run_dir / "checkpoints" / "step_00000004")
    # fp16 trains with a gradient scaler, whose state accelerate saves with the checkpoint
    assert ("scaler.pt" in meta["files"]) == (precision == "fp16")
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    torch.manual_seed(recipe["seed"])
    initial = refusion.models.build_model(recipe["model"]["name"], **recipe["model"]["args"]).state_dict()
    assert any(not torch.equal(initial[k], weights[k]) for k in weights)   # the steps changed the weights
