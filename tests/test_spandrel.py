"""refusion weights in spandrel (what chaiNNer and ComfyUI load models with): a NAFNet saved by refusion
(safetensors) and its official export (.pth) load as spandrel's NAFNet and give refusion's output;
the families spandrel has no architecture for are refused by it, as docs/interop.md says."""
from __future__ import annotations

import pytest
import torch

import refusion
from refusion.models import MODELS
from refusion.official.export import export_official

spandrel = pytest.importorskip("spandrel")

SMALL = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def trained_nafnet() -> torch.nn.Module:
    """A NAFNet with non-trivial weights whose output mostly stays in [0, 1] (spandrel clamps to it)."""
    net = MODELS["NAFNet"](**SMALL)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in net.state_dict().values():
            t.add_(0.02 * torch.randn(t.shape, generator=g))
    return net.eval()


@pytest.fixture
def nafnet_files(tmp_path):
    net = trained_nafnet()
    net.save_pretrained(tmp_path / "model")
    export_official(net, tmp_path / "NAFNet-refusion.pth")
    return net, tmp_path / "model", {"safetensors": tmp_path / "model" / "diffusion_pytorch_model.safetensors",
                                     "official pth": tmp_path / "NAFNet-refusion.pth"}


def load(path, how: str):
    if how == "file":                   # chaiNNer, spandrel's own loader
        return spandrel.ModelLoader().load_from_file(path)
    # ComfyUI's upscale-model loader: the file read safely, the dict handed to spandrel as it is
    from safetensors.torch import load_file

    sd = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    return spandrel.ModelLoader().load_from_state_dict(sd)


@pytest.mark.parametrize("how", ["file", "state dict"])
@pytest.mark.parametrize("kind", ["safetensors", "official pth"])
def test_spandrel_loads_a_refusion_nafnet_and_gives_its_output(kind, how, nafnet_files):
    net, folder, files = nafnet_files
    model = load(files[kind], how)
    assert model.architecture.id == "NAFNet" and model.scale == 1
    assert model.input_channels == model.output_channels == 3
    x = torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(1))   # sides no multiple of 8: padded
    with torch.no_grad():
        raw, ours = model.model(x), net(x)
        assert float((raw - ours).abs().max()) < 1e-5
        # what chaiNNer / ComfyUI call: spandrel's descriptor, clamped to [0, 1] as refusion.restore is
        restored = refusion.restore(x, model=folder, progress=False)
        assert float((model(x) - restored).abs().max()) < 1e-5


@pytest.mark.parametrize("name, kwargs", [
    ("Baseline", SMALL),
    ("HINet", dict(wf=8, depth=3)),
    ("NAFFTNet", SMALL),
    ("ConditionalNAFNet", SMALL),
    ("ConditionalUNet", dict(nf=8, depth=2)),
])
def test_spandrel_has_no_architecture_for_the_other_families(name, kwargs):
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader().load_from_state_dict(MODELS[name](**kwargs).state_dict())
