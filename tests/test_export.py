"""ONNX export: every network family exports with dynamic batch/height/width and ONNX Runtime
reproduces the PyTorch outputs; the CLI writes, refuses to overwrite and names bad inputs."""
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from refusion.cli import export as export_cli
from refusion.inference.export import check_onnx, export_onnx, input_names
from refusion.models import ConditionalNAFNet, HINet, LatentUNet, NAFFTNet, NAFNet
from refusion.benchmarks.perf import activate_skip_gains

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def with_nonzero_skips(net):
    torch.manual_seed(0)
    return activate_skip_gains(net, 0.1).eval()


# one of each code path: NAFBlock, noise-network inputs with cond, two outputs and reflect padding,
# FFTs, the U-Net blocks (Baseline and ConditionalUNet add nothing the exporter sees differently)
NETWORKS = {
    "NAFNet": lambda: NAFNet(**SMALL),
    "ConditionalNAFNet-cond": lambda: ConditionalNAFNet(img_channel=1, cond_channels=2, **SMALL),
    "HINet": lambda: HINet(wf=8, depth=3),
    "NAFFTNet": lambda: NAFFTNet(**SMALL),
    "LatentUNet": lambda: LatentUNet(ch=4, ch_mult=[1, 2, 2], embed_dim=4),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_export_matches_pytorch_at_other_sizes(name, tmp_path):
    net = with_nonzero_skips(NETWORKS[name]())
    result = export_onnx(net, tmp_path / "net.onnx", example_size=32)
    assert (tmp_path / "net.onnx").is_file() and not list(tmp_path.glob(".tmp-*"))
    assert result["inputs"] == input_names(net)
    # check_onnx ran on 1x45x70 and 3x64x64 (the export saw 2x32x32) and found float32 agreement
    assert result["max_abs_error"] < 2e-5, result
    if name == "ConditionalNAFNet-cond":
        assert result["inputs"] == ["x_t", "mu", "t", "cond"]


def test_check_finds_a_different_network(tmp_path):
    net = with_nonzero_skips(NAFNet(**SMALL))
    export_onnx(net, tmp_path / "net.onnx", example_size=32, check=False)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.ending.bias.add_(0.01)
    with pytest.raises(RuntimeError, match="differs from PyTorch by 0.01"):
        check_onnx(other, tmp_path / "net.onnx")


def run_cli(*args, capsys):
    code = export_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_cli_writes_refuses_overwrite_and_names_bad_inputs(tmp_path, capsys):
    with_nonzero_skips(NAFNet(**SMALL)).save_pretrained(tmp_path / "model")
    out = tmp_path / "nafnet.onnx"
    done = run_cli(tmp_path / "model", out, capsys=capsys)
    assert done.returncode == 0, done.stderr
    assert "NAFNet from" in done.stdout and "max abs difference" in done.stdout and out.is_file()
    before = out.read_bytes()
    again = run_cli(tmp_path / "model", out, capsys=capsys)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    assert out.read_bytes() == before
    missing = run_cli(tmp_path / "nowhere", tmp_path / "x.onnx", capsys=capsys)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("name", ["UnconditionalNAFNet", "BokehNAFNet"])
def test_official_task_variants_export_and_match(tmp_path, name):
    from refusion.models import MODELS

    torch.manual_seed(0)
    net = MODELS[name](width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]).eval()
    info = export_onnx(net, tmp_path / "net.onnx")
    assert info["inputs"] == input_names(net) and info["max_abs_error"] < 1e-4
    assert {"UnconditionalNAFNet": ["x_t", "t"], "BokehNAFNet": ["x_t", "mu", "t", "lens_info"]}[name] == info["inputs"]


def test_stereo_export_is_refused_and_writes_nothing(tmp_path):
    from refusion.models import StereoNAFNet

    net = StereoNAFNet(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])
    with pytest.raises(ValueError, match="ONNX export of StereoNAFNet is not supported"):
        export_onnx(net, tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []
