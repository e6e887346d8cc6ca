"""refusion restore --samples K / --save-std / --save-samples on tiny saved runs."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from matplotlib import colormaps
from PIL import Image

import refusion
from refusion.cli import restore as restore_tool
from test_restore_cli import write_run
from refusion.data.image_io import image_bit_depth, read_image, write_image
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.models.nafnet import NAFNet
from refusion.inference.pipeline import RefusionPipeline
from refusion.models.unconditional_nafnet import UnconditionalNAFNet
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_run(root: Path, task: str) -> Path:
    torch.manual_seed(0)
    if task == "regressor":
        return write_run(root, task, NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]))
    net = ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    with torch.no_grad():   # a small noise prediction
        net.ending.weight.mul_(0.02)
        net.ending.bias.zero_()
    # a mild SDE (lambda = 10/255, half the signal left at T): the untrained network's samples stay
    # inside [0, 1] with a std of a few hundredths, across the --std-max colour scale
    return write_run(root, task, net, IRSDEScheduler(sampler="ode", max_sigma=10, eps=0.5))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    denoising = RefusionPipeline(unet=UnconditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1],
                                                          dec_blk_nums=[1]),
                                 scheduler=DenoisingSDEScheduler(sampler="ode", noise_level=25))
    denoising.save_pretrained(base / "denoising")
    return {"regressor": make_run(base / "nafnet", "regressor"), "sde": make_run(base / "sde", "sde"),
            "denoising": base / "denoising"}


@pytest.fixture()
def image16(tmp_path):
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    write_image(path, 0.3 + 0.4 * np.random.default_rng(0).random((24, 32, 3)), bit_depth=16)
    return path


def run_restore(image, out, model, *extra):
    return restore_tool.main([str(image), "-o", str(out), "--model", str(model), "--steps", "3", "--seed", "4",
                              "--no-progress", *extra])


def test_samples_write_the_mean_the_std_maps_and_every_sample(tmp_path, runs, image16):
    out = tmp_path / "out"
    code = run_restore(image16, out, runs["sde"], "--sampler", "mr_sde", "--samples", "3", "--save-std",
                       "--save-samples")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "photo_sample0.png", "photo_sample1.png",
                                                      "photo_sample2.png", "photo_std.png", "photo_std.tiff"]
    assert all(image_bit_depth(out / f"photo_sample{k}.png") == 16 for k in range(3))
    # the same as the API with the same seed
    lq = read_image(image16)
    pipe = refusion.load_pipeline(runs["sde"])
    post = refusion.sample_posterior(lq, model=pipe, num_samples=3, steps=3, sampler="mr_sde", progress=False,
                                     generator=torch.Generator().manual_seed(4))
    hwc = lambda t: t.permute(1, 2, 0).numpy()      # noqa: E731
    samples = [read_image(out / f"photo_sample{k}.png") for k in range(3)]
    for k in range(3):
        np.testing.assert_allclose(samples[k], hwc(post.samples[k, 0]), atol=1 / 65535)
    assert np.abs(samples[0] - samples[1]).max() > 1e-3
    assert np.mean((np.stack(samples) > 0) & (np.stack(samples) < 1)) > 0.9     # not saturated
    np.testing.assert_allclose(read_image(out / "photo.png"), hwc(post.mean[0]), atol=1 / 65535)
    std = tifffile.imread(out / "photo_std.tiff")
    assert std.dtype == np.float32 and std.shape == (24, 32, 3)
    np.testing.assert_allclose(std, np.std(np.stack(samples), axis=0), atol=2e-4)
    assert 0.01 < float(np.median(std)) < 0.1                   # inside the default colour scale
    colour = np.asarray(Image.open(out / "photo_std.png").convert("RGB"), dtype=np.float64) / 255
    # the documented scale: the channel mean of the std, 0 -> bottom and 0.1 -> top of matplotlib's magma
    expected = colormaps["magma"](np.clip(std.mean(axis=2) / 0.1, 0, 1))[..., :3]
    np.testing.assert_allclose(colour, expected, atol=1 / 255 + 1e-6)


def test_std_colour_scale_is_fixed_by_std_max(tmp_path, runs, image16):
    maps = {}
    for std_max in ("0.1", "0.01"):
        out = tmp_path / std_max
        assert run_restore(image16, out, runs["sde"], "--sampler", "sde", "--samples", "2", "--save-std",
                           "--std-max", std_max) == 0
        maps[std_max] = np.asarray(Image.open(out / "photo_std.png").convert("L"), dtype=np.float64)
        assert not (out / "photo_sample0.png").exists()
    assert maps["0.01"].mean() > maps["0.1"].mean() + 5        # a lower top: the same std looks brighter


def test_samples_alone_write_only_the_mean(tmp_path, runs, image16):
    out = tmp_path / "out"
    assert run_restore(image16, out, runs["sde"], "--sampler", "posterior", "--samples", "2", "--chunk-size", "1") == 0
    assert [p.name for p in out.iterdir()] == ["photo.png"]


@pytest.mark.parametrize("flags, message", [
    (["--samples", "2"], "--samples: posterior samples need an SDE model"),
    (["--save-std"], "--save-std: posterior samples need an SDE model"),
    (["--save-samples", "--samples", "2"], "--samples, --save-samples: posterior samples need an SDE model"),
])
def test_posterior_flags_on_a_regressor_are_usage_errors(tmp_path, runs, image16, capsys, flags, message):
    assert run_restore(image16, tmp_path / "out", runs["regressor"], *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "mr_sde", "--save-std"], "--save-std need --samples K"),
    (["--sampler", "mr_sde", "--samples", "0"], "--samples must be >= 1"),
    (["--sampler", "mr_sde", "--samples", "1", "--save-std"], "--save-std needs --samples >= 2"),
    (["--sampler", "mr_sde", "--samples", "2", "--std-max", "0"], "--std-max must be > 0"),
])
def test_bad_posterior_flags_are_usage_errors(tmp_path, runs, image16, capsys, flags, message):
    assert run_restore(image16, tmp_path / "out", runs["sde"], *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("flags, sampler", [([], "'ode'"), (["--sampler", "posterior", "--eta", "0"], "'posterior' with eta=0.0")])
def test_samples_that_would_all_be_equal_are_usage_errors(tmp_path, runs, image16, capsys, flags, sampler):
    """A DenoisingSDE model starts from the noisy image itself: a sampler that draws no noise gives K equal samples."""
    assert run_restore(image16, tmp_path / "out", runs["denoising"], *flags, "--samples", "2") == 2
    assert f"the deterministic sampler={sampler}: it starts from the degraded image itself" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_ir_sde_ode_samples_through_its_random_start(tmp_path, runs, image16):
    """x_T = mu + lambda z is drawn, so the IR-SDE's ode sampler gives K different samples: the std is not zero."""
    out = tmp_path / "out"
    assert run_restore(image16, out, runs["sde"], "--sampler", "ode", "--samples", "2", "--save-std") == 0
    assert float(tifffile.imread(out / "photo_std.tiff").max()) > 1e-3


def test_an_extra_file_that_is_another_output_is_refused(tmp_path, runs, capsys):
    folder = tmp_path / "in"
    for name in ("a.png", "a_std.png"):
        write_image(folder / name, np.full((16, 16, 3), 0.5))
    assert run_restore(folder, tmp_path / "out", runs["sde"], "--sampler", "sde", "--samples", "2",
                       "--save-std") == 2
    assert "'a_std.png'" in capsys.readouterr().err
