"""train.channels_last and train.compile: what they change (the layout the network sees, a compiled forward)
and what they keep (checkpoint keys, model/, exact resume)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refusion.config import recipe_from_dict
from refusion.models import ConditionalNAFNet
from refusion.schedulers.ir_sde import IRSDEScheduler
from refusion.training.engine import _to_device, train
from refusion.training.objectives import sde_objective
from same_results import assert_same_state
from test_distill import make_pairs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_channels_last_moves_images_only_and_keeps_the_loss():
    batch = {"gt": torch.rand(2, 3, 16, 16), "lq": torch.rand(2, 3, 16, 16), "lens_info": torch.rand(2, 3)}
    moved = _to_device(batch, torch.device("cpu"), channels_last=True)
    assert moved["gt"].is_contiguous(memory_format=torch.channels_last) and not moved["gt"].is_contiguous()
    assert moved["lens_info"].is_contiguous()                   # not an image: as it was
    assert _to_device(batch, torch.device("cpu"), channels_last=False)["gt"].is_contiguous()
    del batch["lens_info"]                                          # a bokeh key: not for this network
    torch.manual_seed(0)
    net = ConditionalNAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1], middle_blk_num=1)
    cfg = type("T", (), {"loss": "l1"})
    losses = []
    for layout in (False, True):
        torch.manual_seed(1)                                        # the same t and noise
        loss, _ = sde_objective(net, _to_device(batch, torch.device("cpu"), layout), IRSDEScheduler(), cfg)
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)          # other kernels, the same objective


def recipe(root: Path, data: tuple[Path, Path], name: str, **train) -> object:
    gt, lq = data
    return recipe_from_dict({
        "task": "sde", "name": name, "output_dir": str(root / name),
        "model": {"name": "ConditionalNAFNet", "args": {"width": 4, "enc_blk_nums": [1], "dec_blk_nums": [1],
                                                        "middle_blk_num": 1}},
        "scheduler": {"num_train_timesteps": 10, "prediction_type": "sample"},
        "data": {"train": {"gt": str(gt), "lq": str(lq), "gt_size": 16}, "num_workers": 0},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "train": {"total_iters": 2, "batch_size": 2, "checkpoint_every": 1, "log_every": 1, **train},
        "validation": {"num_inference_steps": 2}, "logging": {"trackers": []}})


@pytest.mark.parametrize("layout", [{"compile": True}, {"channels_last": True}], ids=["compile", "channels_last"])
def test_the_keys_stay_and_resume_stays_exact(tmp_path, layout):
    data = make_pairs(tmp_path / "data", 4)
    whole = train(recipe(tmp_path, data, "whole", **layout))            # checkpoints at steps 1 and 2
    keys = set(ConditionalNAFNet(width=4, enc_blk_nums=[1], dec_blk_nums=[1], middle_blk_num=1).state_dict())
    assert set(load_file(whole / "model" / "diffusion_pytorch_model.safetensors")) == keys   # no _orig_mod.
    steps = sorted((whole / "checkpoints").glob("step_*"))
    assert set(load_file(next(steps[-1].glob("model*.safetensors")))) == keys
    # the run as a kill after step 1 leaves it, resumed: the weights of the uninterrupted run. Bit for bit, as
    # the other resume tests: one process, the network built afresh and the checkpoint copied in by
    # load_state_dict, the same kernels (for compile, inductor's code for the same shapes) on the same bits
    split = Path(shutil.copytree(whole, tmp_path / "split"))
    shutil.rmtree(split / "checkpoints" / steps[-1].name)
    (split / "model").rename(split / "model-of-step-2")
    resumed = recipe(tmp_path, data, "split", **layout)
    train(resumed, resume=True)
    assert_same_state(load_file(split / "model" / "diffusion_pytorch_model.safetensors"),
                      load_file(whole / "model" / "diffusion_pytorch_model.safetensors"))
