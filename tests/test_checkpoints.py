"""Official checkpoint import: wrapper formats, safe loading, all-or-nothing errors, conversion tool."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from refusion.official.checkpoints import (
    CheckpointMismatchError,
    OfficialCheckpointError,
    extract_state_dict,
    load_official,
    load_safetensors,
)
from refusion.models import ConditionalNAFNet, NAFNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).parent / "data"
SMALL = dict(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


@pytest.fixture(scope="module")
def official_sd():
    return torch.load(DATA / "net_nafnet_small.pt", weights_only=True)


def assert_loaded(model, sd):
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"params": sd},
        lambda sd: {"params_ema": sd},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"params": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "params", "params_ema", "state_dict", "module_prefix", "ddp_and_compile_prefix"],
)
def test_official_wrappers_load(official_sd, wrap, tmp_path):
    model = NAFNet(**SMALL)
    load_official(model, wrap(official_sd))
    assert_loaded(model, official_sd)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(official_sd), path)
    other = NAFNet(**SMALL)
    load_official(other, path)
    assert_loaded(other, official_sd)


def test_param_key_picks_the_wrapper(official_sd):
    ema = {k: v + 1 for k, v in official_sd.items()}
    model = NAFNet(**SMALL)
    load_official(model, {"params": official_sd, "params_ema": ema}, param_key="params_ema")
    assert_loaded(model, ema)
    load_official(model, {"params": official_sd, "params_ema": ema})  # default: BasicSR's 'params'
    assert_loaded(model, official_sd)
    with pytest.raises(OfficialCheckpointError, match="param_key 'ema' not found"):
        load_official(model, {"params": official_sd}, param_key="ema")


def test_pickle_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"params": {"intro.weight": Payload()}}, path)
    with pytest.raises(OfficialCheckpointError, match="refusing to load .*evil.pth"):
        load_official(NAFNet(**SMALL), path)
    assert not marker.exists()


def test_mismatch_lists_every_problem_and_loads_nothing(official_sd):
    bad = dict(official_sd)
    del bad["intro.bias"]
    bad["extra.weight"] = torch.zeros(2)
    bad["ending.weight"] = torch.zeros(3, 8, 3, 3)
    bad["downs.0.bias"] = official_sd["downs.0.bias"] + 5  # a valid entry: must not be copied either
    model = NAFNet(**SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_official(model, bad)
    err = info.value
    assert err.missing == ["intro.bias"] and err.unexpected == ["extra.weight"]
    assert err.shape_mismatches == ["ending.weight: checkpoint (3, 8, 3, 3) vs model (3, 16, 3, 3)"]
    text = str(err)
    assert "missing keys (1): intro.bias" in text and "unexpected keys (1): extra.weight" in text
    assert "nothing was loaded" in text
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_wrong_architecture_is_a_mismatch():
    sd = torch.load(DATA / "net_cnafnet_refusion_small.pt", weights_only=True)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*norm1\.weight"):
        load_official(NAFNet(**SMALL), sd)
    load_official(ConditionalNAFNet(**SMALL), sd)  # and the right one loads


def test_not_a_state_dict_is_explained(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="no state dict found"):
        extract_state_dict({"optimizer": {"lr": 1e-3}})
    with pytest.raises(OfficialCheckpointError, match="does not exist"):
        load_official(NAFNet(**SMALL), tmp_path / "missing.pth")


def test_safetensors_round_trip_and_strict_errors(official_sd, tmp_path):
    model = NAFNet(**SMALL)
    load_official(model, official_sd)
    model.save_pretrained(tmp_path / "run")
    fresh = load_safetensors(NAFNet(**SMALL), tmp_path / "run")
    assert_loaded(fresh, official_sd)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_safetensors(NAFNet(**{**SMALL, "width": 8}), tmp_path / "run")


def test_convert_checkpoint_tool(tmp_path):
    from refusion.cli import convert as convert_checkpoint

    src = tmp_path / "official.pth"
    torch.save({"params": torch.load(DATA / "net_nafnet_small.pt", weights_only=True)}, src)
    out = tmp_path / "converted"
    assert convert_checkpoint.main([str(src), str(out), "--arch", "NAFNet", "--args", json.dumps(SMALL)]) == 0
    ref = np.load(DATA / "net_nafnet_small.npz")
    model = NAFNet.from_pretrained(out).eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ref["input"])).numpy()
    assert np.abs(got - ref["output"]).max() / np.abs(ref["output"]).max() < 1e-5
    # a checkpoint of another architecture fails and writes nothing
    assert convert_checkpoint.main([str(src), str(tmp_path / "bad"), "--arch", "Baseline", "--args", json.dumps(SMALL)]) == 1
    assert not (tmp_path / "bad").exists()
