"""refusion export --format official: the official checkpoint layout of every family, exactly the keys
of the official code's files (tests/data/net_*.pt), and round trips through `refusion import` that
give the original network's outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import refusion
from refusion.cli import export as export_cli
from refusion.cli import import_official as import_cli
from refusion.inference.model import load_model
from refusion.models import MODELS
from refusion.official import detect_architecture, read_options, check_against
from refusion.official.export import ExportRefusal, export_official, official_form, option_sections

DATA = Path(__file__).parent / "data"
OPTS = DATA / "official_import"
SMALL = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
ATOL = 1e-5          # float32: two instances of one network may differ by ~1e-7 on other CPUs


def perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights: every float tensor moved off its initial value (the skip gains start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return net.eval()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def saved(tmp_path: Path, net: torch.nn.Module, name: str = "model") -> Path:
    net.save_pretrained(tmp_path / name)
    return tmp_path / name


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


OFFICIAL_FILES = sorted([*DATA.glob("net_*.pt"), *(DATA / "variants").glob("net_*.pt")])


@pytest.mark.parametrize("official", OFFICIAL_FILES, ids=lambda p: p.stem)
def test_exported_keys_and_shapes_are_those_of_the_official_file(official, tmp_path):
    reference = torch.load(official, weights_only=True)
    found = detect_architecture(reference)
    net = perturbed(MODELS[found.name](**found.build_kwargs))
    done = export_official(net, tmp_path / "out.pth")
    obj = torch.load(done.path, weights_only=True)
    basicsr = found.name in ("NAFNet", "Baseline", "HINet")
    assert (list(obj) == ["params"]) if basicsr else all(isinstance(v, torch.Tensor) for v in obj.values())
    sd = obj["params"] if basicsr else obj
    assert set(sd) == set(reference) and set(done.keys) == set(reference)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert all(v.dtype == torch.float32 and v.is_contiguous() and v.device.type == "cpu" for v in sd.values())
    # every tensor in a storage of its own: the file holds the weights and nothing more
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size() for v in sd.values())


REGRESSORS = {
    "NAFNet": lambda: MODELS["NAFNet"](**SMALL),
    "Baseline": lambda: MODELS["Baseline"](**SMALL),
    "HINet": lambda: MODELS["HINet"](wf=8, depth=3, hin_position_left=1, hin_position_right=2),
    "NAFFTNet": lambda: MODELS["NAFFTNet"](**SMALL),
}


@pytest.mark.parametrize("name", list(REGRESSORS))
def test_regressor_round_trip_through_refusion_import(name, tmp_path, capsys):
    net = perturbed(REGRESSORS[name]())
    weights = tmp_path / f"{name}.pth"
    assert export_cli.main([str(saved(tmp_path, net)), "-o", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "read back with torch.load(weights_only=True)" in out
    obj = torch.load(weights, weights_only=True)
    assert list(obj) == ["params"]
    assert import_cli.main([str(tmp_path / "imported"), "--weights", str(weights)]) == 0
    back = load_model(tmp_path / "imported").network
    assert type(back).__name__ == name
    x = rand(1, 3, 37, 45)
    with torch.no_grad():
        a, b = net(x), back(x)
    a, b = (a[-1], b[-1]) if isinstance(a, list) else (a, b)
    assert max_diff(a, b) < ATOL


def test_conditional_nafnet_round_trip_with_the_official_option_file(tmp_path):
    net = perturbed(MODELS["ConditionalNAFNet"](width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]))
    weights = export_official(net, tmp_path / "refusion.pth").path
    assert all(isinstance(v, torch.Tensor) for v in torch.load(weights, weights_only=True).values())  # bare
    assert import_cli.main([str(tmp_path / "imported"), "--weights", str(weights),
                            "--options", str(OPTS / "refusion_small.yml")]) == 0
    pipe = refusion.load_pipeline(tmp_path / "imported")
    x_t, mu, t = rand(2, 3, 20, 28, seed=1), rand(2, 3, 20, 28, seed=2), torch.tensor([3, 70])
    with torch.no_grad():
        assert max_diff(net(x_t, mu, t), pipe.unet(x_t, mu, t)) < ATOL


def test_conditional_unet_round_trip(tmp_path):
    net = perturbed(MODELS["ConditionalUNet"](in_nc=3, out_nc=3, nf=8, depth=3))
    weights = export_official(net, tmp_path / "ir-sde.pth").path
    assert import_cli.main([str(tmp_path / "imported"), "--weights", str(weights), "--sde", "max_sigma=10",
                            "T=100", "schedule=cosine", "eps=0.005"]) == 0
    pipe = refusion.load_pipeline(tmp_path / "imported")
    x_t, mu, t = rand(1, 3, 24, 32, seed=1), rand(1, 3, 24, 32, seed=2), torch.tensor([40])
    with torch.no_grad():
        assert max_diff(net(x_t, mu, t), pipe.unet(x_t, mu, t)) < ATOL


def test_latent_unet_and_its_noise_network_round_trip(tmp_path):
    # the latent-dehazing pair of tests/data/official_import/latent_small.yml: two files, two exports
    ae = perturbed(MODELS["LatentUNet"](in_ch=3, out_ch=3, ch=4, ch_mult=[1, 2, 4], embed_dim=3))
    noise = perturbed(MODELS["ConditionalNAFNet"](img_channel=3, add_intro_skip=True, **SMALL), seed=1)
    ae_path = export_official(ae, tmp_path / "latent-dehazing.pth").path
    noise_path = export_official(noise, tmp_path / "latent-reffusion-dehazing.pth").path
    assert import_cli.main([str(tmp_path / "imported"), "--weights", str(noise_path), "--latent-weights",
                            str(ae_path), "--options", str(OPTS / "latent_small.yml")]) == 0
    pipe = refusion.load_pipeline(tmp_path / "imported")
    assert pipe.unet.config.add_intro_skip is True
    x = rand(1, 3, 32, 32)
    with torch.no_grad():
        (latent, skips), (latent2, skips2) = ae.encode(x), pipe.autoencoder.encode(x)
        assert max_diff(latent, latent2) < ATOL
        assert max_diff(ae.decode(latent, skips), pipe.autoencoder.decode(latent, skips)) < ATOL
        z, mu, t = rand(1, 3, 8, 8, seed=3), latent, torch.tensor([10])
        assert max_diff(noise(z, mu, t), pipe.unet(z, mu, t)) < ATOL


# option files of the official code (fixtures with the real files' keys) and the networks they are set for
OPTION_CASES = {
    "NAFNet": (DATA / "official_options" / "NAFNet-SIDD-width32.yml", lambda: MODELS["NAFNet"](**SMALL), None),
    "NAFNetLocal": (DATA / "official_options" / "NAFNet-GoPro-width32.yml", lambda: MODELS["NAFNet"](**SMALL), (48, 64)),
    "Baseline": (DATA / "official_options" / "Baseline-SIDD-width64.yml", lambda: MODELS["Baseline"](**SMALL), None),
    "HINet": (DATA / "official_options" / "HINet-GoPro.yml", REGRESSORS["HINet"], None),
    "ConditionalNAFNet": (OPTS / "refusion_small.yml", lambda: MODELS["ConditionalNAFNet"](**SMALL), None),
    "UnconditionalUNet": (DATA / "official_options" / "denoising-sde_ir-sde_test.yml",
                          lambda: MODELS["UnconditionalUNet"](nf=8, depth=2), None),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_printed_option_sections_make_an_official_file_that_fits_the_network(case, tmp_path):
    source, build, tlc = OPTION_CASES[case]
    net = build()
    form = official_form(net, tlc=tlc)
    options = yaml.safe_load(source.read_text())
    for section, values in option_sections(form, "weights.pth").items():
        options[section] = {**options.get(section, {}), **values} if section == "path" else values
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(options, sort_keys=False))
    opts = read_options(path)
    assert opts.network.name == type(net).__name__
    assert check_against(opts, type(net).__name__, dict(net.config)) == []
    for key, value in opts.network.kwargs.items():
        if key in net.config:
            assert json.dumps(value) == json.dumps(net.config[key]), key
    assert (opts.network.tlc is not None) == (tlc is not None)
    if tlc is not None:
        assert tuple(opts.network.tlc.train_size[-2:]) == tlc


@pytest.mark.parametrize("official, options", [("net_nafnet_small", None),
                                               ("net_cnafnet_refusion_small", OPTS / "refusion_small.yml")])
def test_import_then_export_gives_back_the_official_file(official, options, tmp_path, capsys):
    reference = torch.load(DATA / f"{official}.pt", weights_only=True)
    basicsr = official == "net_nafnet_small"
    source = tmp_path / "official.pth"
    torch.save({"params": reference} if basicsr else reference, source)
    args = ["--options", str(options)] if options else []
    assert import_cli.main([str(tmp_path / "imported"), "--weights", str(source), *args]) == 0
    # a regressor folder, or a saved pipeline whose unet/ and scheduler/ the export reads
    assert export_cli.main([str(tmp_path / "imported"), "-o", str(tmp_path / "back.pth")]) == 0
    out = capsys.readouterr().out
    obj = torch.load(tmp_path / "back.pth", weights_only=True)
    back = obj["params"] if basicsr else obj
    assert (list(obj) == ["params"]) if basicsr else (set(obj) == set(reference))
    assert set(back) == set(reference) and all(torch.equal(back[k], reference[k]) for k in reference)
    if options:     # the SDE of the option file comes back in the printed settings
        assert "max_sigma: 50" in out and "T: 100" in out and "schedule: cosine" in out


def test_run_export_prints_the_sde_and_names_the_autoencoder(tmp_path, capsys):
    from refusion.schedulers.ir_sde import IRSDEScheduler

    run = tmp_path / "run"
    MODELS["ConditionalNAFNet"](img_channel=3, add_intro_skip=True, **SMALL).save_pretrained(run / "model")
    IRSDEScheduler(max_sigma=30, num_train_timesteps=80).save_pretrained(run / "scheduler")
    MODELS["LatentUNet"](ch=4, ch_mult=[1, 2, 4], embed_dim=3).save_pretrained(run / "autoencoder")
    assert export_cli.main([str(run), "--format", "official", "-o", str(tmp_path / "g.pth")]) == 0
    out = capsys.readouterr().out
    assert "which_model: ConditionalNAFNet" in out and "latent-dehazing" in out
    assert "max_sigma: 30" in out and "T: 80" in out and "pretrain_model_G:" in out
    assert f"refusion export {run / 'autoencoder'}" in out
    assert export_cli.main([str(run / "autoencoder"), "-o", str(tmp_path / "l.pth")]) == 0
    assert "network_L:" in capsys.readouterr().out


def test_refusals_name_the_file_and_the_reason(tmp_path, capsys):
    folder = saved(tmp_path, MODELS["ConditionalNAFNet"](cond_channels=2, **SMALL), "cond")
    out = tmp_path / "cond.pth"
    assert export_cli.main([str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cond_channels=2" in err and "no official form" in err and not out.exists()
    with pytest.raises(ExportRefusal, match="dw_expand=1"):
        export_official(MODELS["NAFNet"](dw_expand=1, **SMALL), out)
    out.write_bytes(b"mine")
    nafnet = saved(tmp_path, MODELS["NAFNet"](**SMALL), "nafnet")
    assert export_cli.main([str(nafnet), "-o", str(out)]) == 2
    assert f"{out} exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"
    with pytest.raises(ExportRefusal, match="exists"):
        export_official(MODELS["NAFNet"](**SMALL), out)
    assert export_cli.main([str(nafnet), "-o", str(out), "--overwrite"]) == 0
    assert list(torch.load(out, weights_only=True)) == ["params"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary file left
    with pytest.raises(ExportRefusal, match="does not exist"):
        export_official(MODELS["NAFNet"](**SMALL), tmp_path / "nowhere" / "x.pth")


def test_the_format_comes_from_the_option_or_the_suffix(tmp_path, capsys):
    nafnet = str(saved(tmp_path, perturbed(MODELS["NAFNet"](**SMALL)), "nafnet"))
    assert export_cli.main([nafnet, str(tmp_path / "a.weights")]) == 2
    err = capsys.readouterr().err
    assert "a.weights" in err and "--format onnx or --format official" in err
    assert export_cli.main([nafnet, "--format", "onnx", str(tmp_path / "b.pth")]) == 2
    assert "b.pth" in capsys.readouterr().err and not (tmp_path / "b.pth").exists()
    assert export_cli.main([nafnet, "--format", "official", str(tmp_path / "c.weights")]) == 0
    assert export_cli.main([nafnet, str(tmp_path / "d.pt")]) == 0
    assert list(torch.load(tmp_path / "d.pt", weights_only=True)) == ["params"]
    with pytest.raises(SystemExit):
        export_cli.main([nafnet, str(tmp_path / "e.pth"), "-o", str(tmp_path / "f.pth")])
    assert "two output files" in capsys.readouterr().err
