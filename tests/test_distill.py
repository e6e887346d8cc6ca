"""Distilled students: the training target is the teacher's solver endpoint from the same x_T, a student is an
ordinary SDE model (K network evaluations by default, another seed another image), bad input refused before
any work."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import refusion
from refusion.cli import distill as distill_cli
from refusion.cli import restore as restore_cli
from refusion.cli.app_service import AppModel, AppService, Limits, Settings
from refusion.data.image_io import read_image, write_image
from refusion.evaluation.evaluate import evaluate_runs
from refusion.inference.model import load_model
from refusion.inference.pipeline import sde_sample
from refusion.inference.settings import RestoreSettings
from refusion.inference.restorer import restore_image
from refusion.models import ConditionalNAFNet, LatentUNet, NAFNet
from refusion.schedulers.ir_sde import IRSDEScheduler
from refusion.training.distillation import distill_objective, distillation_target, solve, weights_sha256
from same_results import INSTANCE_ATOL
from test_official_import import OPTS, official, sisr_options_for_the_small_network

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])


def teacher_net(seed: int = 0, img_channel: int = 3) -> ConditionalNAFNet:
    torch.manual_seed(seed)
    net = ConditionalNAFNet(**{**TINY, "img_channel": img_channel})
    with torch.no_grad():          # the blocks' skip gains start at zero: give the blocks a say
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.3)
    return net.eval()


class Cfg:
    teacher_solver, teacher_steps, student_steps, lpips_weight, gt_weight = "mr_ode", 4, 1, 0.0, 0.0


def test_the_target_is_the_teachers_solver_endpoint_from_the_same_terminal_state():
    net, scheduler = teacher_net(), IRSDEScheduler(num_train_timesteps=20, prediction_type="epsilon")
    mu = torch.rand(2, 3, 16, 16)
    x_T = scheduler.initial_sample(mu, generator=torch.Generator().manual_seed(3))
    target = distillation_target(net, scheduler, Cfg, mu, x_T)
    # what inference gives for the teacher's mr_ode at 4 steps with the generator that drew x_T
    inference = sde_sample(net, IRSDEScheduler.from_config(scheduler.config, sampler="mr_ode"), mu,
                           num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    # the same arithmetic; inference feeds the network channels_last (other kernels): float32 rounding only
    torch.testing.assert_close(target, inference, rtol=1e-5, atol=INSTANCE_ATOL)
    other = distillation_target(net, scheduler, Cfg, mu, scheduler.initial_sample(mu, generator=torch.Generator()
                                                                                  .manual_seed(4)))
    assert (other - target).abs().max() > 1e-2            # another z, another endpoint: the target keeps z


def test_a_student_that_is_its_teacher_at_the_teachers_steps_has_zero_loss():
    net, scheduler = teacher_net(), IRSDEScheduler(num_train_timesteps=20, sampler="mr_ode")
    teacher = load_model(net, scheduler=scheduler)
    batch = {"gt": torch.rand(2, 3, 16, 16), "lq": torch.rand(2, 3, 16, 16)}
    train_cfg = type("T", (), {"loss": "l1"})

    class Same(Cfg):
        student_steps = 4

    torch.manual_seed(0)
    loss, _ = distill_objective(teacher_net(), batch, scheduler, train_cfg, teacher=teacher, distill=Same)
    assert float(loss.detach()) < 1e-5                          # same x_T for both, same solver, same network
    torch.manual_seed(0)
    loss, logs = distill_objective(teacher_net(), batch, scheduler, train_cfg, teacher=teacher, distill=Cfg)
    assert float(loss.detach()) > 1e-3 and logs["teacher"] == pytest.approx(float(loss))
    loss.backward()                                    # the gradient reaches the student through its K steps


def make_pairs(folder: Path, count: int, size: int = 40) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for i in range(count):
        gt = rng.random((size, size, 3)).astype(np.float32)
        write_image(folder / "gt" / f"{i}.png", gt)
        write_image(folder / "lq" / f"{i}.png", np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1))
    return folder / "gt", folder / "lq"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    gt, lq = make_pairs(root / "data", 4)
    run = root / "teacher"
    run.mkdir()
    data = {"train": {"gt": str(gt), "lq": str(lq), "gt_size": 16}, "val": {"gt": str(gt), "lq": str(lq)},
            "num_workers": 0}
    (run / "recipe.yml").write_text(yaml.safe_dump({"task": "sde", "data": data}))
    teacher_net().save_pretrained(run / "model")
    IRSDEScheduler(num_train_timesteps=20).save_pretrained(run / "scheduler")
    return run


def distill(teacher: Path, out: Path, *extra: str) -> int:
    return distill_cli.main([str(teacher), "--out", str(out), *extra, "--threads", "1", "--device", "cpu",
                             "--set", "train.total_iters=2", "train.batch_size=2", "validation.every=0",
                             "logging.trackers=[]"])


def test_distill_trains_a_student_that_every_entry_point_runs_at_k_steps(teacher_run, tmp_path):
    out = tmp_path / "student"
    assert distill(teacher_run, out, "--student-steps", "1", "--teacher-steps", "4") == 0
    recipe = yaml.safe_load((out / "recipe.yml").read_text())
    assert recipe["task"] == "distill" and recipe["distill"]["student_steps"] == 1
    teacher = load_model(teacher_run)
    assert recipe["distill"]["teacher_sha256"] == weights_sha256(teacher.network)
    card = (out / "README.md").read_text()
    assert str(teacher_run) in card and weights_sha256(teacher.network) in card and "mr_ode" in card
    student = load_model(out)
    assert student.kind == "sde" and student.default_steps() == 1
    # started from the teacher, moved by training
    assert any((a - b).abs().max() > 0 for a, b in zip(student.network.state_dict().values(),
                                                        teacher.network.state_dict().values()))
    calls = []
    student.network.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    png = write_image(tmp_path / "in" / "lq.png", np.random.default_rng(1).random((24, 24, 3)), bit_depth=8)
    lq = torch.from_numpy(read_image(png)).permute(2, 0, 1)[None]
    one = restore_image(student, lq, RestoreSettings(seed=1)).image
    assert calls == [1]                                 # one network evaluation for the image
    # the command line and the app, each with its defaults (no steps, no sampler): the same 1-step sample
    assert restore_cli.main([str(png), "-o", str(tmp_path / "cli"), "--model", str(out), "--seed", "1",
                             "--no-progress", "--device", "cpu", "--threads", "1"]) == 0
    from_cli = torch.from_numpy(read_image(tmp_path / "cli" / "lq.png")).permute(2, 0, 1)[None]
    assert (from_cli - one).abs().max() <= 1 / 255 + 1e-6          # within one step of the 8-bit output
    app = AppService([AppModel("student", student)], Limits(), tmp_path / "app").restore("student", png, Settings(seed=1))
    torch.testing.assert_close(torch.from_numpy(app.restored).permute(2, 0, 1)[None], one, rtol=0, atol=INSTANCE_ATOL)
    assert calls == [1, 1]                              # the app too ran the network once (the CLI loads its own)
    two = restore_image(student, lq, RestoreSettings(seed=2)).image
    assert (one - two).abs().max() > 1e-3              # another x_T, another sample: still a sampler
    torch.testing.assert_close(refusion.sample(lq, model=out, generator=torch.Generator().manual_seed(1),
                                               progress=False), one, rtol=0, atol=INSTANCE_ATOL)
    # evaluation's 'default' spec runs each model at its own sampler and steps: the NFE column says 1
    gt_dir = Path(recipe["data"]["train"]["gt"])
    result = evaluate_runs([out, teacher_run], gt_dir, gt_dir.parent / "lq", tmp_path / "report", samplers=["default"],
                           progress=False, max_images=2, grid_images=1, workers=1)
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["student [mr_ode, 1]"]["nfe"] == 1 and rows["teacher [mr_sde, 10]"]["nfe"] == 10


@pytest.mark.parametrize("case, words", [
    ("regressor", "regressor: a teacher is an IR-SDE model"),
    ("steps", "--student-steps 3: must divide --teacher-steps (10)"),
    ("pipeline without data", "give the student's training pairs with --gt DIR --lq DIR"),
    ("lpips on small patches", "LPIPS (AlexNet) needs images of at least 31x31 pixels; data.train.gt_size is 16"),
])
def test_bad_teachers_and_step_counts_are_refused_before_any_work(teacher_run, tmp_path, capsys, case, words):
    teacher, extra = teacher_run, ["--student-steps", "1"]
    if case == "regressor":
        teacher = tmp_path / "nafnet"
        NAFNet(width=4, enc_blk_nums=[1], dec_blk_nums=[1], middle_blk_num=1).save_pretrained(teacher)
    elif case == "steps":
        extra = ["--student-steps", "3"]
    elif case == "lpips on small patches":
        extra += ["--set", "distill.lpips_weight=0.5"]
    else:
        teacher = tmp_path / "pipeline"
        refusion.RefusionPipeline(unet=teacher_net(), scheduler=IRSDEScheduler(num_train_timesteps=20)) \
            .save_pretrained(teacher)
    out = tmp_path / "student"
    assert distill(teacher, out, *extra) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()                             # nothing written


def test_student_steps_zero_is_a_usage_error(teacher_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        distill(teacher_run, tmp_path / "s", "--student-steps", "0")
    assert info.value.code == 2 and "--student-steps" in capsys.readouterr().err


def test_a_student_resumed_with_another_teacher_is_refused(teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    assert distill(teacher_run, out, "--student-steps", "2", "--teacher-steps", "4") == 0
    teacher_net(seed=5).save_pretrained(teacher_run / "model")      # the teacher's weights change
    try:
        code = distill(teacher_run, out, "--student-steps", "2", "--teacher-steps", "4", "--resume")
    finally:
        teacher_net().save_pretrained(teacher_run / "model")
    assert code != 0
    assert "a student continues with the teacher it started with" in capsys.readouterr().err


def latent_teacher(folder: Path, seed: int = 0) -> Path:
    """A latent IR-SDE pipeline: a 4-channel noise network on the latents of a small LatentUNet."""
    torch.manual_seed(seed)
    autoencoder = LatentUNet(in_ch=3, out_ch=3, ch=4, ch_mult=[1, 2], embed_dim=4).eval()
    refusion.RefusionPipeline(unet=teacher_net(seed, img_channel=4), scheduler=IRSDEScheduler(num_train_timesteps=20),
                              autoencoder=autoencoder).save_pretrained(folder)
    return folder


def test_a_latent_teachers_target_is_its_latent_solver_endpoint_and_a_copy_has_zero_loss(tmp_path):
    teacher = load_model(latent_teacher(tmp_path / "teacher"))
    ae, scheduler = teacher.autoencoder, teacher.scheduler
    batch = {"gt": torch.rand(2, 3, 16, 16), "lq": torch.rand(2, 3, 16, 16)}
    train_cfg = type("T", (), {"loss": "l1"})

    class Same(Cfg):
        student_steps = 4

    # the target: the teacher's mr_ode at 4 steps on the LQ latents, from x_T = mu_latent + lambda z
    mu = ae.encode(batch["lq"])[0]
    x_T = scheduler.initial_sample(mu, generator=torch.Generator().manual_seed(3))
    inference = sde_sample(teacher.network, IRSDEScheduler.from_config(scheduler.config, sampler="mr_ode"), mu,
                           num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(distillation_target(teacher.network, scheduler, Cfg, mu, x_T), inference,
                               rtol=1e-5, atol=INSTANCE_ATOL)
    student = copy.deepcopy(teacher.network)
    torch.manual_seed(0)
    loss, _ = distill_objective(student, batch, scheduler, train_cfg, autoencoder=ae, teacher=teacher, distill=Same)
    assert float(loss.detach()) < 1e-5                   # on latents: the same x_T, solver and network
    torch.manual_seed(0)
    loss, logs = distill_objective(student, batch, scheduler, train_cfg, autoencoder=ae, teacher=teacher,
                                   distill=Cfg)
    assert float(loss.detach()) > 1e-3
    loss.backward()
    assert all(p.grad is None for p in ae.parameters())           # the autoencoder stays frozen

    class GroundTruth(Cfg):
        gt_weight = 1.0

    torch.manual_seed(0)
    _, logs = distill_objective(student, batch, scheduler, train_cfg, autoencoder=ae, teacher=teacher,
                                distill=GroundTruth)
    # the ground-truth term compares the decoded image (3 channels, pixels) with the ground truth
    torch.manual_seed(0)
    with torch.no_grad():
        pred = ae.decode(solve_like_the_student(student, scheduler, ae, batch["lq"], 1), ae.encode(batch["lq"])[1])
    assert pred.shape == batch["gt"].shape
    assert logs["gt"] == pytest.approx(float((pred - batch["gt"]).abs().mean()), rel=1e-5)


def solve_like_the_student(net, scheduler, ae, lq, steps):
    mu = ae.encode(lq)[0]
    x_T = scheduler.initial_sample(mu)
    return solve(net, IRSDEScheduler.from_config(scheduler.config, sampler="mr_ode"), x_T, mu, steps)


def test_a_latent_teacher_gives_a_latent_student_with_its_autoencoder(teacher_run, tmp_path, capsys):
    teacher_dir = latent_teacher(tmp_path / "teacher")
    gt = Path(yaml.safe_load((teacher_run / "recipe.yml").read_text())["data"]["train"]["gt"])
    pairs = ["--gt", str(gt), "--lq", str(gt.parent / "lq"), "--set", "data.train.gt_size=16"]
    out = tmp_path / "student"
    assert distill(teacher_dir, out, "--student-steps", "1", "--teacher-steps", "4", *pairs) == 0
    recipe = yaml.safe_load((out / "recipe.yml").read_text())
    assert recipe["latent"] == {"autoencoder": str(teacher_dir / "autoencoder")}
    teacher, student = load_model(teacher_dir), load_model(out)
    assert student.autoencoder is not None and student.default_steps() == 1
    assert weights_sha256(student.autoencoder) == weights_sha256(teacher.autoencoder)
    assert f"latents of the teacher's autoencoder `{teacher_dir / 'autoencoder'}`" in (out / "README.md").read_text()
    calls = []
    student.network.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    lq = torch.rand(1, 3, 24, 24)
    one = restore_image(student, lq, RestoreSettings(seed=1, latent=True)).image
    assert calls == [(1, 4, 12, 12)] and one.shape == lq.shape     # one evaluation, on the latent grid
    two = restore_image(student, lq, RestoreSettings(seed=2, latent=True)).image
    assert (one - two).abs().max() > 1e-3

    # another autoencoder than the teacher's, or none, is refused before any work
    other = latent_teacher(tmp_path / "other", seed=1) / "autoencoder"
    for extra, words in ((["--set", f"latent.autoencoder={other}"], "are not those of the teacher's autoencoder"),
                         (["--set", "latent=null"], "is a latent model; the student needs its autoencoder")):
        assert distill(teacher_dir, tmp_path / "refused", "--student-steps", "1", *pairs, *extra) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "refused").exists()
    ae_dir = str(teacher_dir / "autoencoder")
    assert distill(teacher_run, tmp_path / "refused", "--student-steps", "1", "--set",
                   f"latent.autoencoder={ae_dir}") == 2
    assert "runs on pixels; remove the latent section" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["refusion", "latent"])
def test_an_imported_official_teacher_distils_into_a_student_of_its_sde(teacher_run, tmp_path, kind):
    from refusion.official.importer import import_official

    teacher = tmp_path / "imported"
    if kind == "refusion":      # the deshadow Refusion option file with a small network (epsilon prediction)
        import_official(teacher, weights=official(tmp_path, "net_cnafnet_refusion_small"),
                        options=OPTS / "refusion_small.yml")
    else:       # the latent dehazing option file: a noise network on the latents of the reference UNet autoencoder
        torch.manual_seed(0)
        noise = ConditionalNAFNet(img_channel=3, width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
        torch.save(noise.state_dict(), tmp_path / "latent_G.pth")
        import_official(teacher, weights=tmp_path / "latent_G.pth",
                        latent_weights=official(tmp_path, "net_unet_ae_small"),
                        options=OPTS / "latent_small.yml")
    gt = Path(yaml.safe_load((teacher_run / "recipe.yml").read_text())["data"]["train"]["gt"])
    out = tmp_path / "student"
    assert distill(teacher, out, "--student-steps", "1", "--teacher-steps", "4", "--gt", str(gt), "--lq",
                   str(gt.parent / "lq"), "--set", "data.train.gt_size=32") == 0
    scheduler = yaml.safe_load((out / "recipe.yml").read_text())["scheduler"]
    # the official SDE (max_sigma 50 on the 0-255 scale, T 100, cosine, eps 0.005), noise prediction
    assert {k: scheduler[k] for k in ("num_train_timesteps", "schedule", "eps", "prediction_type")} == \
        {"num_train_timesteps": 100, "schedule": "cosine", "eps": 0.005, "prediction_type": "epsilon"}
    student, imported = load_model(out), load_model(teacher)
    assert student.default_steps() == 1 and (student.autoencoder is not None) == (kind == "latent")
    assert student.scheduler.config["max_sigma"] == imported.scheduler.config["max_sigma"]
    image = restore_image(student, torch.rand(1, 3, 32, 32), RestoreSettings(seed=0)).image
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_an_official_sr_teacher_that_upsamples_its_input_is_refused(teacher_run, tmp_path, capsys):
    from refusion.official.importer import import_official

    teacher = tmp_path / "sr"
    import_official(teacher, weights=official(tmp_path, "net_cnafnet_refusion_small"),
                    options=sisr_options_for_the_small_network(tmp_path))
    gt = Path(yaml.safe_load((teacher_run / "recipe.yml").read_text())["data"]["train"]["gt"])
    out = tmp_path / "student"
    assert distill(teacher, out, "--student-steps", "1", "--gt", str(gt), "--lq", str(gt.parent / "lq")) == 2
    assert "upsamples its LQ input x4 before sampling" in capsys.readouterr().err and not out.exists()
