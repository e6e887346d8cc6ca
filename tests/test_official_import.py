"""refusion import / import_official: official checkpoints + option files -> ready folders, checked
against the outputs of the official code (tests/data/net_*.npz) and the official scheduler vectors."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import refusion
from refusion.cli import import_official as import_cli
from refusion.cli import restore as restore_cli
from refusion.data.image_io import read_image, write_image
from refusion.inference.model import load_model
from refusion.models import ConditionalNAFNet
from refusion.official.importer import ImportRefusal, import_official

DATA = Path(__file__).parent / "data"
OPTS = DATA / "official_import"


def official(tmp_path: Path, name: str, wrap: str | None = None, prefix: str = "") -> Path:
    """A reference state dict saved the way the official code saves it (optionally wrapped / prefixed)."""
    sd = {prefix + k: v for k, v in torch.load(DATA / f"{name}.pt", weights_only=True).items()}
    path = tmp_path / f"{name}{'_' + wrap if wrap else ''}.pth"
    torch.save({wrap: sd} if wrap else sd, path)
    return path


def ref(name: str) -> dict:
    return dict(np.load(DATA / f"{name}.npz"))


def folder_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_nafnet_from_weights_alone_matches_the_official_output(tmp_path):
    out = tmp_path / "nafnet"
    result = import_official(out, weights=official(tmp_path, "net_nafnet_small", wrap="params"))
    assert result.kind == "regressor" and result.network == "NAFNet"
    assert result.detected["width"] == 16 and list(result.detected["enc_blk_nums"]) == [1, 1]
    net = load_model(out).network
    r = ref("net_nafnet_small")
    with torch.no_grad():
        got = net(torch.from_numpy(r["input"])).numpy()
    np.testing.assert_allclose(got, r["output"], atol=2e-5, rtol=0)
    restored = refusion.restore(torch.from_numpy(r["input"]), model=out, progress=False)
    np.testing.assert_allclose(restored.numpy(), np.clip(r["output"], 0, 1), atol=2e-5, rtol=0)
    card = (out / "README.md").read_text()
    assert result.sources[str(next(iter(result.sources)))] in card          # the sha256 of the source file
    assert "73,331 parameters" in card and "refusion restore" in card and "MIT License" in card


def test_nafnet_local_options_switch_tlc_on_and_match_the_official_local_output(tmp_path):
    out = tmp_path / "nafnet_local"
    result = import_official(out, weights=official(tmp_path, "net_nafnet_local_small", wrap="params_ema",
                                                   prefix="module."),
                             options=OPTS / "nafnet_local_small.yml")
    assert json.loads((out / "inference.json").read_text())["tlc"] == [32, 32]
    assert "tlc" in result.given
    r = ref("net_nafnet_local_small")
    lq = torch.from_numpy(r["input"])
    with_tlc = refusion.restore(lq, model=out, progress=False).numpy()
    np.testing.assert_allclose(with_tlc, np.clip(r["output"], 0, 1), atol=2e-5, rtol=0)
    without = refusion.restore(lq, model=out, tlc=False, progress=False).numpy()
    # without TLC the output leaves the official (local) one by 10x the tolerance matched above
    assert np.abs(without - np.clip(r["output"], 0, 1)).max() > 2e-4


def test_hinet_and_baseline_are_detected_and_match(tmp_path):
    for name, key in (("net_hinet_small", "output_stage2"), ("net_baseline_small", "output")):
        out = tmp_path / name
        import_official(out, weights=official(tmp_path, name, wrap="params"))
        r = ref(name)
        with torch.no_grad():
            y = load_model(out).network(torch.from_numpy(r["input"]))
        got = (y[-1] if isinstance(y, (list, tuple)) else y).numpy()
        np.testing.assert_allclose(got, r[key], atol=2e-5, rtol=0)


def test_refusion_noise_network_with_options_is_a_pipeline_equal_to_the_official_code(tmp_path):
    out = tmp_path / "shadow"
    result = import_official(out, weights=official(tmp_path, "net_cnafnet_refusion_small"),
                             options=OPTS / "refusion_small.yml")
    assert result.kind == "pipeline" and result.sde == {**result.sde, "max_sigma": 50.0, "T": 100, "eps": 0.005}
    pipe = refusion.load_pipeline(out)
    r = ref("net_cnafnet_refusion_small")
    with torch.no_grad():
        got = pipe.unet(torch.from_numpy(r["x_t"]), torch.from_numpy(r["cond"]), torch.from_numpy(r["t_vec"]))
    np.testing.assert_allclose(got.numpy(), r["output_t_vec"], atol=2e-5, rtol=0)
    sched = ref("ir_sde_cosine_s50_T100_eps0.005")
    np.testing.assert_allclose(pipe.scheduler.sigma_bars.numpy(), sched["sigma_bars"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pipe.scheduler.thetas.numpy(), sched["thetas"], rtol=1e-10, atol=1e-12)
    assert pipe.config.lq_upscale == 1          # `degradation.scale: 4` of a deshadow file is not SR
    lq = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    a = refusion.sample(lq, steps=3, model=out, progress=False, generator=torch.Generator().manual_seed(1))
    b = pipe(lq, num_inference_steps=3, output_type="pt", progress=False,
             generator=torch.Generator().manual_seed(1)).images
    torch.testing.assert_close(a, b)


def official_thetas(schedule: str, steps: int) -> np.ndarray:
    """The official theta schedules (../shared/reference/README.md), written out here in float64."""
    if schedule == "cosine":
        return ref("ir_sde_cosine_s50_T100_eps0.005")["thetas"]
    if schedule == "linear":
        scale = 1000 / (steps + 1)
        return np.linspace(scale * 1e-4, scale * 0.02, steps + 1)
    assert schedule == "constant"
    return np.ones(steps + 1)


@pytest.mark.parametrize("schedule", refusion.IRSDEScheduler.SCHEDULES)
def test_every_schedule_the_scheduler_has_imports_with_the_official_arrays(tmp_path, schedule):
    options = yaml.safe_load((OPTS / "refusion_small.yml").read_text())
    options["sde"].update(schedule=schedule, eps=0.01)
    path = tmp_path / f"{schedule}.yml"
    path.write_text(yaml.safe_dump(options))
    out = tmp_path / schedule
    result = import_official(out, weights=official(tmp_path, "net_cnafnet_refusion_small"), options=path)
    assert result.kind == "pipeline"
    scheduler = refusion.load_pipeline(out).scheduler
    assert scheduler.config.schedule == schedule and scheduler.config.eps == 0.01
    # the marginal's std from the schedule by the papers' formulas: Theta_t = cumsum(theta)_t - theta_0,
    # dt = -ln(eps) / Theta_T, sigma_bar_t = lambda sqrt(1 - exp(-2 Theta_t dt))
    thetas = official_thetas(schedule, 100)
    big_theta = np.cumsum(thetas) - thetas[0]
    dt = -np.log(0.01) / big_theta[-1]
    np.testing.assert_allclose(scheduler.thetas.numpy(), thetas, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scheduler.sigma_bars.numpy(), 50 / 255 * np.sqrt(1 - np.exp(-2 * big_theta * dt)),
                               rtol=1e-10, atol=1e-12)
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    restored = refusion.sample(lq, steps=3, model=out, progress=False, generator=torch.Generator().manual_seed(1))
    assert restored.shape == lq.shape and torch.isfinite(restored).all()


def test_noise_network_without_options_is_refused_naming_the_sde_settings(tmp_path, capsys):
    weights = official(tmp_path, "net_cnafnet_refusion_small")
    out = tmp_path / "out"
    assert import_cli.main([str(out), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    for key in ("max_sigma", "T", "schedule", "eps", "--options", "--sde max_sigma=50 T=100 schedule=cosine eps=0.005"):
        assert key in err
    assert "Traceback" not in err and not out.exists()
    assert import_cli.main([str(out), "--weights", str(weights), "--sde", "max_sigma=30", "T=100",
                            "schedule=cosine", "eps=0.005"]) == 0
    assert refusion.load_pipeline(out).scheduler.config.max_sigma == 30


def test_options_that_contradict_the_weights_are_refused_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = import_cli.main([str(out), "--weights", str(official(tmp_path, "net_cnafnet_refusion_small")),
                            "--options", str(OPTS / "refusion_small_wrong_width.yml")])
    err = capsys.readouterr().err
    assert code == 2 and "width" in err and "32" in err and "16" in err and "refusion_small_wrong_width.yml" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_latent_model_needs_both_files_and_matching_channels(tmp_path, capsys):
    torch.manual_seed(0)
    noise = ConditionalNAFNet(img_channel=3, width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    noise_path = tmp_path / "latent_G.pth"
    torch.save(noise.state_dict(), noise_path)
    ae_path = official(tmp_path, "net_unet_ae_small")
    out = tmp_path / "dehaze"
    assert import_cli.main([str(out), "--weights", str(noise_path), "--options", str(OPTS / "latent_small.yml")]) == 2
    err = capsys.readouterr().err
    assert "--latent-weights" in err and "both" in err and not out.exists()
    assert import_cli.main([str(out), "--weights", str(noise_path), "--latent-weights", str(ae_path),
                            "--options", str(OPTS / "latent_small.yml")]) == 0
    pipe = refusion.load_pipeline(out)
    assert pipe.autoencoder is not None and pipe.autoencoder.config.embed_dim == 3
    r = ref("net_unet_ae_small")
    with torch.no_grad():
        latent, _ = pipe.autoencoder.encode(torch.from_numpy(r["input_lq"]))
    np.testing.assert_allclose(latent.numpy(), r["latent_lq"], atol=2e-5, rtol=0)
    # a 4-channel latent noise network with a 3-channel autoencoder: refused, naming both values
    code = import_cli.main([str(tmp_path / "bad"), "--weights", str(official(tmp_path, "net_cnafnet_latent_small")),
                            "--latent-weights", str(ae_path), "--sde", "max_sigma=50", "T=100", "schedule=cosine",
                            "eps=0.005"])
    err = capsys.readouterr().err
    assert code == 2 and "4-channel" in err and "embed_dim 3" in err and not (tmp_path / "bad").exists()


def test_files_that_are_not_checkpoints_are_refused(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert import_cli.main([str(tmp_path / "a"), "--weights", str(text)]) == 2
    assert "notes.pth" in capsys.readouterr().err

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned.txt"),))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"params": Payload()}, f)
    assert import_cli.main([str(tmp_path / "b"), "--weights", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "evil.pth" in err and "could run code" in err
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "b").exists()
    assert import_cli.main([str(tmp_path / "c"), "--weights", str(tmp_path / "missing.pth")]) == 2


def test_existing_output_folder_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    weights = official(tmp_path, "net_nafnet_small")
    with pytest.raises(ImportRefusal, match="already exists"):
        import_official(out, weights=weights)
    assert folder_files(out) == ["mine.txt"]
    import_official(out, weights=weights, overwrite=True)
    assert (out / "README.md").is_file() and not (out / "mine.txt").exists()


def test_restore_takes_an_official_checkpoint_file_directly(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSION_CACHE_DIR", str(tmp_path / "cache"))
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    write_image(image, np.random.default_rng(0).random((24, 32, 3)).astype(np.float32))
    weights = official(tmp_path, "net_nafnet_small", wrap="params")
    assert restore_cli.main([str(image), "-o", str(tmp_path / "out"), "--model", str(weights), "--no-progress"]) == 0
    imported = list((tmp_path / "cache" / "imported").iterdir())
    assert len(imported) == 1 and (imported[0] / "README.md").is_file()
    expected = refusion.restore(read_image(image), model=imported[0], progress=False)
    np.testing.assert_allclose(read_image(tmp_path / "out" / "a.png"), expected, atol=1 / 255 + 1e-6)
    # a noise network checkpoint needs its options (or --sde): usage error, exit 2
    noise = official(tmp_path, "net_cnafnet_refusion_small")
    assert restore_cli.main([str(image), "-o", str(tmp_path / "o2"), "--model", str(noise), "--no-progress"]) == 2
    assert restore_cli.main([str(image), "-o", str(tmp_path / "o2"), "--model", str(noise), "--options",
                             str(OPTS / "refusion_small.yml"), "--steps", "2", "--no-progress"]) == 0
    assert read_image(tmp_path / "o2" / "a.png").shape == (24, 32, 3)


def test_denoising_sde_model_imports_with_its_own_sde_and_unconditional_network(tmp_path):
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    out = tmp_path / "denoise"
    weights = tmp_path / "denoise.pth"
    torch.save(torch.load(DATA / "variants" / "net_cnafnet_denoise_small.pt", weights_only=True), weights)
    result = import_official(out, weights=weights, options=OPTS / "denoising_small.yml")
    assert result.network == "UnconditionalNAFNet" and result.given["noise_level"] == 15.0
    pipe = refusion.load_pipeline(out)
    assert isinstance(pipe.scheduler, DenoisingSDEScheduler)
    r = dict(np.load(DATA / "variants" / "net_cnafnet_denoise_small.npz"))
    with torch.no_grad():
        got = pipe.unet(torch.from_numpy(r["x_t"]), torch.from_numpy(r["t_vec"]))
    np.testing.assert_allclose(got.numpy(), r["output_t_vec"], atol=2e-5, rtol=0)
    sched = dict(np.load(DATA / "variants" / "dsde_cosine_s50_T100.npz"))
    np.testing.assert_allclose(pipe.scheduler.sigma_bars.numpy(), sched["sigma_bars"], rtol=2e-4, atol=1e-7)
    # restoring runs the reverse ODE from the step that fits sigma 15 with net(x, t); the noise goes down
    clean = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    noisy = clean + 15 / 255 * torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    steps = pipe.scheduler.start_timestep
    assert 0 < steps < 100
    calls = []
    unet_forward = pipe.unet.forward
    pipe.unet.forward = lambda *args, **kw: calls.append(len(args)) or unet_forward(*args, **kw)
    pipe(noisy.clamp(0, 1), output_type="pt", progress=False)
    assert calls and set(calls) == {2}          # net(x_t, t): no degraded-image input
    assert len(calls) == steps


def test_undetermined_arguments_take_the_value_that_fits_the_weights(tmp_path):
    # HINet at depth 6 with HIN down to the deepest level: the class default hin_position_right=4 does
    # not fit, detection's chosen value does; the import must build with it
    from refusion.models import HINet

    torch.manual_seed(0)
    net = HINet(wf=4, depth=6, hin_position_left=0, hin_position_right=6)
    weights = tmp_path / "hinet.pth"
    torch.save({"params": net.state_dict()}, weights)
    result = import_official(tmp_path / "out", weights=weights)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = net(x)[-1], load_model(tmp_path / "out").network(x)[-1]
    torch.testing.assert_close(got, expected)
    assert "relu_slope" in result.defaulted


def test_ir_sde_conditional_unet_imports_and_matches_the_official_output(tmp_path):
    out = tmp_path / "cunet"
    result = import_official(out, weights=official(tmp_path, "net_cunet_small"),
                             sde={"max_sigma": 10, "T": 100, "schedule": "cosine", "eps": 0.005})
    assert result.network == "ConditionalUNet" and result.kwargs["nf"] == 8 and result.kwargs["depth"] == 3
    pipe = refusion.load_pipeline(out)
    assert pipe.scheduler.config.max_sigma == 10
    r = ref("net_cunet_small")
    with torch.no_grad():
        got = pipe.unet(torch.from_numpy(r["x_t"]), torch.from_numpy(r["cond"]), torch.from_numpy(r["t_vec"]))
    np.testing.assert_allclose(got.numpy(), r["output_t_vec"], atol=2e-5, rtol=0)


def sisr_options_for_the_small_network(tmp_path: Path) -> Path:
    """The official sisr test options (distortion sr, degradation.scale 4) with the network of
    net_cnafnet_refusion_small.pt, as refusion_small.yml adapts the deshadow file."""
    options = yaml.safe_load((DATA / "official_options" / "sisr_refusion_test.yml").read_text())
    options["network_G"]["setting"] = yaml.safe_load((OPTS / "refusion_small.yml").read_text())["network_G"]["setting"]
    path = tmp_path / "sisr_small.yml"
    path.write_text(yaml.safe_dump(options))
    return path


def test_sisr_import_upsamples_a_quarter_size_lq_bicubically_to_the_gt_size(tmp_path):
    out = tmp_path / "sr"
    result = import_official(out, weights=official(tmp_path, "net_cnafnet_refusion_small"),
                             options=sisr_options_for_the_small_network(tmp_path))
    pipe = refusion.load_pipeline(out)
    assert result.kind == "pipeline" and pipe.config.lq_upscale == 4
    # the official sisr test feeds the SDE mu = F.interpolate(LQ, scale_factor=4, mode='bicubic')
    # (align_corners False, nothing clamped): every network call must get that mu. A checkerboard makes
    # bicubic overshoot [0, 1], so a clamped or otherwise interpolated mu shows.
    lq = (torch.arange(10)[None, :] + torch.arange(8)[:, None]).remainder(2).float().expand(1, 3, 8, 10).clone()
    lq[:, 1] *= 0.7
    upsampled = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    assert upsampled.shape[-2:] == (32, 40) and (upsampled.min() < 0 and upsampled.max() > 1)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda _module, args: seen.append(args[1].detach().clone()))
    try:
        restored = pipe(lq, num_inference_steps=3, output_type="pt", progress=False,
                        generator=torch.Generator().manual_seed(2)).images
    finally:
        hook.remove()
    assert restored.shape == (1, 3, 32, 40) and len(seen) == 3
    for mu in seen:
        torch.testing.assert_close(mu, upsampled, rtol=0, atol=1e-6)
