"""Numerical faults: NaN/Inf in training data, a diverging or poisoned loss, NaN or out-of-range
images and NaN weights at inference.

Policy (docs/reliability.md): training stops before the bad update with the step and the batch's
files named and the last good checkpoint intact, and resumes from it; inference refuses NaN/Inf
inputs, clamps float values outside [0, 1] with a warning, and a NaN/Inf network output raises
FloatingPointError (naming the sampling step) instead of becoming a clamped garbage image.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file

from refusion.config import recipe_from_dict
from refusion.data.image_io import ImageReadError, read_image, write_image
from refusion.training import NonFiniteLossError, objectives, train
from refusion.training.run_dir import list_checkpoints, verify_checkpoint
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]


def recipe(data: Path, out: Path, *, lr: float = 2e-3, **train_settings):
    settings = tiny_recipe_dict("regressor", data, out, total_iters=6, checkpoint_every=2, **train_settings)
    settings["optimizer"]["lr"] = lr
    return recipe_from_dict(settings)


@pytest.fixture
def data(tmp_path) -> Path:
    return make_pairs(tmp_path / "pairs", n_train=4, n_val=0, size=32)


def test_nan_in_a_training_image_is_refused_by_name_and_the_checkpoint_kept(data, tmp_path):
    run = train(recipe(data, tmp_path / "run"), stop_at_step=2)
    poisoned = data / "train/lq/img1.tif"
    image = read_image(data / "train/lq/img1.png")
    image[3, 5, 1] = np.nan
    (data / "train/lq/img1.png").unlink()
    tifffile.imwrite(poisoned, image.astype(np.float32), photometric="rgb")
    with pytest.raises(ImageReadError, match="img1.tif': floating-point image contains NaN or Inf"):
        train(recipe(data, run), resume=True)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]
    assert verify_checkpoint(run / "checkpoints/step_00000002")["step"] == 2


def test_a_diverging_run_stops_before_the_bad_update_and_resumes_with_a_sane_lr(data, tmp_path):
    whole = train(recipe(data, tmp_path / "whole"))
    run = train(recipe(data, tmp_path / "run"), stop_at_step=2)
    saved = load_file(str(run / "checkpoints/step_00000002/model.safetensors"))
    # no injection: a learning rate of 1e30 blows the weights up and the loss becomes NaN/Inf
    with pytest.raises(NonFiniteLossError) as info:
        train(recipe(data, run, lr=1e30), resume=True)
    message = str(info.value)
    assert "non-finite loss" in message and "at step 4" in message, message
    assert "batch files: img" in message and "step_00000002' is intact" in message
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]
    kept = load_file(str(run / "checkpoints/step_00000002/model.safetensors"))
    assert all(torch.equal(saved[k], kept[k]) for k in saved)
    # the documented way out: resume with a sane learning rate; the result is the uninterrupted run's
    train(recipe(data, run), resume=True)
    a = load_file(str(whole / "checkpoints/step_00000006/model.safetensors"))
    b = load_file(str(run / "checkpoints/step_00000006/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_inf_loss_in_the_second_micro_step_stops_before_the_update(data, tmp_path, monkeypatch):
    real = objectives.OBJECTIVES["regressor"]
    calls = []

    def poisoned(model, batch, *args, **kwargs):
        loss, logs = real(model, batch, *args, **kwargs)
        calls.append(1)
        return (loss + float("inf") if len(calls) == 6 else loss), logs

    monkeypatch.setitem(objectives.OBJECTIVES, "regressor", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(inf\) at step 3; batch files: img\d, img\d"):
        train(recipe(data, out, grad_accum=2))    # micro-steps 5-6 make step 3
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    monkeypatch.setitem(objectives.OBJECTIVES, "regressor", real)
    whole = train(recipe(data, tmp_path / "whole", grad_accum=2))
    train(recipe(data, out, grad_accum=2), resume=True)
    a = load_file(str(whole / "checkpoints/step_00000006/model.safetensors"))
    b = load_file(str(out / "checkpoints/step_00000006/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ inference


def _restore_tool():
    from refusion.cli import restore
    return restore


def _regressor_dir(path: Path, *, nan_weights: bool = False) -> Path:
    from refusion.models.nafnet import NAFNet

    torch.manual_seed(0)
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    if nan_weights:
        with torch.no_grad():
            net.ending.bias.fill_(float("nan"))
    net.save_pretrained(path)
    return path


def test_restore_command_on_nan_and_out_of_range_float_images(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = rng.random((16, 16, 3)).astype(np.float32)
    cases = {
        "nan.tif": np.where(rng.random((16, 16, 3)) < 0.01, np.nan, good).astype(np.float32),
        "inf.tif": np.where(rng.random((16, 16, 3)) < 0.01, np.inf, good).astype(np.float32),
        "far out of range.tif": good * 3 - 1,
        "rounding noise.tif": np.clip(good, 0, 1) + np.float32(5e-4),
    }
    for name, array in cases.items():
        tifffile.imwrite(folder / name, array.astype(np.float32), photometric="rgb")
    out = tmp_path / "out"
    code = _restore_tool().main([str(folder), "-o", str(out), "--model", str(_regressor_dir(tmp_path / "net")),
                                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "1 of 4 images restored" in captured.out
    assert captured.err.count("floating-point image contains NaN or Inf") >= 2
    assert "values span [-0.99" in captured.err and "expected [0, 1]" in captured.err
    assert [p.name for p in out.iterdir()] == ["rounding noise.tif"]


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path, capsys):
    image = tmp_path / "in" / "photo.png"
    write_image(image, np.random.default_rng(1).random((16, 16, 3)))
    out = tmp_path / "out"
    net = _regressor_dir(tmp_path / "net", nan_weights=True)
    code = _restore_tool().main([str(image), "-o", str(out), "--model", str(net), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "diffusion_pytorch_model.safetensors" in err and "'ending.bias' holds NaN or Inf" in err, err
    assert not out.exists() or not list(out.iterdir())      # no file, not even a temporary one


@pytest.fixture
def sde_pipe():
    from refusion.models.conditional_nafnet import ConditionalNAFNet
    from refusion.inference.pipeline import RefusionPipeline
    from refusion.schedulers.ir_sde import IRSDEScheduler

    torch.manual_seed(0)
    net = ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    return RefusionPipeline(unet=net.eval(), scheduler=IRSDEScheduler(num_train_timesteps=10, sampler="ode"))


def test_sampling_refuses_nan_and_clamps_out_of_range_inputs(sde_pipe):
    x = np.random.default_rng(2).random((16, 16, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"values in \[-0\.1\d*, 1\.\d*\], outside \[0, 1\]; clamping"):
        wild = sde_pipe(np.clip(x, 0, 1) * 1.5 - 0.2, num_inference_steps=3, output_type="np", progress=False,
                        generator=torch.Generator().manual_seed(0)).images
    clamped = sde_pipe(np.clip(x * 1.5 - 0.2, 0, 1), num_inference_steps=3, output_type="np", progress=False,
                       generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(wild, clamped, rtol=0, atol=1e-6)   # clamping is what happens
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = x.copy()
        poisoned[4, 4, 0] = bad
        with pytest.raises(ValueError, match="NaN or Inf values; refusing to restore it"):
            sde_pipe(poisoned, num_inference_steps=3, output_type="np", progress=False)


def test_sampling_with_nan_weights_raises_instead_of_returning_garbage(sde_pipe):
    with torch.no_grad():
        sde_pipe.unet.ending.bias.fill_(float("nan"))
    x = np.random.default_rng(3).random((16, 16, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError, match=r"returned NaN or Inf at sampling step 1 of 3 \(timestep "
                                                     r"\d+\); the weights are likely corrupt"):
            sde_pipe(x, num_inference_steps=3, output_type="pil", progress=False)


class NaNAtCall(torch.nn.Module):
    """A noise network whose output holds one NaN (or Inf) at its ``bad_call``-th call only."""

    def __init__(self, net, bad_call: int, value: float = float("nan")):
        super().__init__()
        self.net, self.bad_call, self.value, self.calls, self.timesteps = net, bad_call, value, 0, []

    def forward(self, x, mu, t, **kwargs):
        self.calls += 1
        self.timesteps.append(int(t[0]))
        out = self.net(x, mu, t, **kwargs)
        if self.calls == self.bad_call:
            out = out.clone()
            out[0, 1, 2, 3] = self.value
        return out


@pytest.mark.parametrize("bad_call, value, half", [(2, float("nan"), False), (4, float("inf"), True)])
def test_the_first_non_finite_step_is_named(sde_pipe, bad_call, value, half):
    from refusion.inference.sampling import sample
    from refusion.schedulers.ir_sde import IRSDEScheduler

    net = NaNAtCall(sde_pipe.unet, bad_call, value)
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with pytest.raises(FloatingPointError) as info:
        sample(lq, steps=5, model=net, scheduler=IRSDEScheduler(num_train_timesteps=10, sampler="ode"),
               progress=False, half=half)
    assert net.calls == 5       # no host sync per step: the loop runs to the end, then the one check
    message = str(info.value)
    assert f"at sampling step {bad_call} of 5 (timestep {net.timesteps[bad_call - 1]})" in message, message
    hint = "float16/bfloat16 overflow: run without half=True (--half)" if half else "weights are likely corrupt"
    assert hint in message, message


def test_a_regressor_returning_nan_raises():
    from refusion.inference.restoration import restore

    net = _NaNForBrightImages()
    with pytest.raises(FloatingPointError, match="the output of the _NaNForBrightImages network holds NaN or Inf"):
        restore(torch.full((1, 3, 16, 16), 0.9), model=net, progress=False)
    dark = restore(torch.full((1, 3, 16, 16), 0.1), model=net, progress=False)
    assert torch.isfinite(dark).all()


class _NaNForBrightImages(torch.nn.Module):
    """A regressor that overflows (NaN) on bright inputs only: a per-image numerical failure."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        from refusion.models.nafnet import NAFNet

        self.net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).eval()

    def forward(self, x):
        out = self.net(x)
        return torch.where(x.mean() > 0.5, torch.full_like(out, float("nan")), out)


def test_restore_command_reports_a_nan_result_as_failed_and_goes_on(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    write_image(folder / "bright.png", np.full((16, 16, 3), 0.9))
    write_image(folder / "dark.png", np.full((16, 16, 3), 0.1))
    tool = _restore_tool()
    from refusion.inference.model import load_model

    monkeypatch.setattr(tool, "load_model", lambda *args: load_model(_NaNForBrightImages()))
    out = tmp_path / "out"
    code = tool.main([str(folder), "-o", str(out), "--model", str(_regressor_dir(tmp_path / "net")),
                      "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "1 of 2 images restored" in captured.out, captured
    assert f"failed: {folder / 'bright.png'}: FloatingPointError: the output of the" in captured.err, captured.err
    assert [p.name for p in out.iterdir()] == ["dark.png"]
