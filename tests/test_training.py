"""The training engine end to end on tiny networks and a tiny paired dataset made here."""
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from refusion.config import recipe_from_dict  # noqa: E402
from refusion.data.paired import PairedImageDataset  # noqa: E402
from refusion.data.image_io import write_image
from refusion.training import CheckpointError, NonFiniteLossError, RunDirError, train  # noqa: E402
from refusion.training import objectives  # noqa: E402
from refusion.training.data_stream import StreamDataset, stream_loader  # noqa: E402
from refusion.training.optim import learning_rate  # noqa: E402
from refusion.training.run_dir import list_checkpoints, load_model_dir, verify_checkpoint  # noqa: E402

TINY_MODELS = {
    "sde": {"name": "ConditionalNAFNet",
            "args": {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}},
    "regressor": {"name": "NAFNet",
                  "args": {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}},
    "latent_autoencoder": {"name": "LatentUNet", "args": {"ch": 4, "ch_mult": [1, 2], "embed_dim": 3}},
}
DEFAULT_LOSS = {"sde": "l1", "regressor": "psnr", "latent_autoencoder": "l1"}


def make_pairs(root: Path, n_train: int = 4, n_val: int = 2, size: int = 40, seed: int = 0) -> Path:
    """Smooth colour images (GT) and a shadowed copy (LQ: a soft-edged darkening with a colour cast)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            f = rng.uniform(2, 7, size=3)
            phase = rng.uniform(0, 6, size=3)
            gt = np.stack([0.5 + 0.4 * np.sin(f[c] * (xx + (c - 1) * yy) + phase[c]) for c in range(3)], -1)
            edge = 1 / (1 + np.exp(-(xx - rng.uniform(0.3, 0.7)) * 30))
            lq = gt * (1 - 0.55 * edge[..., None] * np.array([1.0, 0.9, 0.75]))
            for kind, image in (("gt", gt), ("lq", lq)):
                folder = root / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                write_image(folder / f"img{i}.png", image.astype(np.float32))
    return root


def tiny_recipe_dict(task: str, data: Path, out: Path, **train) -> dict:
    recipe = {
        "task": task, "name": f"tiny_{task}", "output_dir": str(out), "seed": 3,
        "model": TINY_MODELS[task],
        "data": {"train": {"gt": str(data / "train/gt"), "lq": str(data / "train/lq"), "gt_size": 32,
                           "use_flip": True, "use_rot": True},
                 "val": None, "num_workers": 0},
        "optimizer": {"name": "adamw", "lr": 2e-3, "betas": [0.9, 0.99], "weight_decay": 0.0},
        "lr_schedule": {"name": "cosine", "warmup_iters": 0, "eta_min": 1e-6},
        "train": {"total_iters": 4, "batch_size": 2, "loss": DEFAULT_LOSS[task], "checkpoint_every": 2,
                  "keep_checkpoints": 3, "log_every": 1, **train},
        "validation": {"every": 0, "num_inference_steps": 4, "max_images": 2},
        "logging": {"trackers": [], "image_every": 0},
    }
    if task == "sde":
        recipe["scheduler"] = {"max_sigma": 50, "num_train_timesteps": 20, "schedule": "cosine", "eps": 0.005}
    return recipe


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machines running the tests are shared: one thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


def fixed_batch(data: Path) -> dict:
    dataset = PairedImageDataset(data / "train/gt", data / "train/lq")
    items = [dataset[i] for i in range(len(dataset))]
    return {k: torch.stack([it[k][:, 4:36, 4:36] for it in items]) for k in ("gt", "lq")}


def objective_value(task, model, batch, scheduler=None, autoencoder=None, repeats=4) -> float:
    """The training loss of a network on a fixed batch, with fixed timesteps / noise draws."""
    cfg = SimpleNamespace(loss=DEFAULT_LOSS[task], fft_loss_weight=0.05)
    module = objectives.training_module(task, model)
    torch.manual_seed(1234)
    with torch.no_grad():
        return float(np.mean([objectives.OBJECTIVES[task](module, batch, scheduler, cfg, autoencoder=autoencoder)[0]
                              .item() for _ in range(repeats)]))


def initial_model(recipe):
    from accelerate.utils import set_seed

    from refusion.models import build_model

    set_seed(recipe.seed)
    return build_model(recipe.model.name, **recipe.model.args)


# --- pieces -----------------------------------------------------------------------------------


def test_learning_rate_schedule():
    kw = dict(base_lr=1e-3, total_steps=100, eta_min=1e-7)
    assert learning_rate(0, **kw) == pytest.approx(1e-3)
    assert learning_rate(50, **kw) == pytest.approx(1e-7 + (1e-3 - 1e-7) * 0.5)
    assert learning_rate(100, **kw) == pytest.approx(1e-7)
    assert learning_rate(25, **kw) == pytest.approx(1e-7 + (1e-3 - 1e-7) * (1 + math.cos(math.pi / 4)) / 2)
    warm = dict(kw, warmup_steps=10)
    assert learning_rate(0, **warm) == pytest.approx(1e-4)
    assert learning_rate(9, **warm) == pytest.approx(1e-3)
    assert learning_rate(55, **warm) == pytest.approx(1e-7 + (1e-3 - 1e-7) * 0.5)
    assert learning_rate(70, **dict(warm, schedule="constant")) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule.name='step'; allowed: cosine, constant"):
        learning_rate(0, **dict(kw, schedule="step"))


def test_data_stream_is_sharded_and_resumable(data):
    dataset = PairedImageDataset(data / "train/gt", data / "train/lq", gt_size=16, use_flip=True, use_rot=True)
    stream = StreamDataset(dataset, seed=5)
    # two processes, batch 1: each epoch is a permutation split between the processes
    loaders = [iter(stream_loader(dataset, seed=5, start=0, batch_size=1, rank=r, world_size=2, num_workers=0))
               for r in range(2)]
    seen = [[next(loader)["name"][0] for _ in range(4)] for loader in loaders]
    epoch0, epoch1 = seen[0][:2] + seen[1][:2], seen[0][2:] + seen[1][2:]
    assert sorted(epoch0) == sorted(epoch1) == [f"img{i}" for i in range(4)]
    assert epoch0 == [dataset.pairs[stream.index_at(p)][0] for p in (0, 2, 1, 3)]
    # resuming at position 4 gives the same items and crops as reading through
    whole = iter(stream_loader(dataset, seed=5, start=0, batch_size=2, rank=0, world_size=1, num_workers=0))
    batches = [next(whole) for _ in range(3)]
    resumed = next(iter(stream_loader(dataset, seed=5, start=4, batch_size=2, rank=0, world_size=1,
                                      num_workers=0)))
    assert resumed["name"] == batches[2]["name"]
    assert torch.equal(resumed["lq"], batches[2]["lq"])
    assert not torch.equal(batches[0]["gt"], batches[2]["gt"])  # other epoch: other crops


# --- tiny runs reduce their training loss ------------------------------------------------------


def test_tiny_regressor_run(data, tmp_path):
    recipe = recipe_from_dict(tiny_recipe_dict(
        "regressor", data, tmp_path / "run", total_iters=12, checkpoint_every=6, ema_decay=0.5))
    recipe.data.val = recipe_from_dict(tiny_recipe_dict("regressor", data, tmp_path)).data.train
    recipe.data.val.gt, recipe.data.val.lq = str(data / "val/gt"), str(data / "val/lq")
    recipe.data.val.gt_size = None
    recipe.validation.every = 6
    recipe.logging.trackers, recipe.logging.image_every = ["tensorboard"], 6
    batch = fixed_batch(data)
    before = objective_value("regressor", initial_model(recipe), batch)
    run = train(recipe)
    after = objective_value("regressor", load_model_dir(run / "model"), batch)
    assert after < before - 1.0, (before, after)  # PSNR loss: at least 1 dB better
    assert [p.name for p in list_checkpoints(run)] == ["step_00000006", "step_00000012"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [6, 12] and all(r["images"] == 2 for r in lines)
    assert {"psnr", "ssim"} <= set(lines[0])
    assert (run / "best" / "config.json").is_file() and (run / "recipe.yml").is_file()
    assert list((run / "logs").rglob("events.out.tfevents*"))
    # model/ holds the EMA weights, which the checkpoint stores too
    ema = load_file(str(run / "checkpoints/step_00000012/ema.safetensors"))
    saved = load_file(str(run / "model/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ema[k], saved[k]) for k in saved)
    for folder in ("model", "best"):
        assert_checksums(run / folder)


def assert_checksums(folder: Path) -> None:
    """checksums.json lists the sha256 of every other file of a published weight folder."""
    import hashlib

    listed = json.loads((folder / "checksums.json").read_text())["files"]
    present = sorted(p.name for p in folder.iterdir() if p.name != "checksums.json")
    assert sorted(listed) == present and present, (folder, listed)
    assert all(listed[name] == hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in present)


def test_tiny_sde_run(data, tmp_path):
    from refusion.schedulers.ir_sde import IRSDEScheduler

    settings = tiny_recipe_dict("sde", data, tmp_path / "run", total_iters=30, checkpoint_every=30)
    settings["optimizer"]["lr"] = 1e-2
    recipe = recipe_from_dict(settings)
    batch = fixed_batch(data)
    sched = IRSDEScheduler(**recipe.scheduler.scheduler_kwargs())
    before = objective_value("sde", initial_model(recipe), batch, sched)
    run = train(recipe)
    after = objective_value("sde", load_model_dir(run / "model"), batch, sched)
    assert after < 0.8 * before, (before, after)
    saved = IRSDEScheduler.from_pretrained(str(run / "scheduler"))
    assert saved.config.num_train_timesteps == 20 and saved.config.max_sigma == 50
    assert_checksums(run / "scheduler")
    # an edited scheduler config (one digit of max_sigma) is caught before sampling with it
    from refusion.inference.pipeline import load_pipeline
    from refusion.errors import CorruptWeightsError

    config = run / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"max_sigma": 50', '"max_sigma": 51'))
    with pytest.raises(CorruptWeightsError, match=r"scheduler_config\.json' is corrupt: sha256 [0-9a-f]{64} found"):
        load_pipeline(run)


def test_tiny_latent_autoencoder_then_latent_sde(data, tmp_path):
    ae_recipe = recipe_from_dict(tiny_recipe_dict("latent_autoencoder", data, tmp_path / "ae", total_iters=12,
                                                  checkpoint_every=12))
    batch = fixed_batch(data)
    before = objective_value("latent_autoencoder", initial_model(ae_recipe), batch, repeats=1)
    ae_run = train(ae_recipe)
    autoencoder = load_model_dir(ae_run / "model")
    after = objective_value("latent_autoencoder", autoencoder, batch, repeats=1)
    assert after < 0.8 * before, (before, after)
    # the SDE then trains on latents of the frozen autoencoder (3 channels, 16x16)
    sde = tiny_recipe_dict("sde", data, tmp_path / "latent_sde", total_iters=2, checkpoint_every=2)
    sde["latent"] = {"autoencoder": str(ae_run)}
    sde["data"]["val"] = {"gt": str(data / "val/gt"), "lq": str(data / "val/lq"), "max_images": 1}
    run = train(recipe_from_dict(sde))
    frozen = load_model_dir(run / "autoencoder")
    assert_checksums(run / "autoencoder")
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), autoencoder.state_dict().values()))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["images"] == 1


# --- resume, faults, refusals ------------------------------------------------------------------


def test_resume_equals_uninterrupted(data, tmp_path):
    def recipe(out):
        return recipe_from_dict(tiny_recipe_dict("sde", data, tmp_path / out, total_iters=4, checkpoint_every=2,
                                                 ema_decay=0.7, grad_accum=2))

    whole = train(recipe("whole"))
    split = train(recipe("split"), stop_at_step=2)
    assert [p.name for p in list_checkpoints(split)] == ["step_00000002"]
    train(recipe("split"), resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(whole / "checkpoints/step_00000004" / name))
        b = load_file(str(split / "checkpoints/step_00000004" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    meta = verify_checkpoint(split / "checkpoints/step_00000004")
    assert meta["step"] == 4 and meta["samples_seen"] == 4 * 2 * 2
    # a flipped byte in a checkpoint is found before anything is loaded
    target = split / "checkpoints/step_00000004/optimizer.bin"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"optimizer\.bin' is corrupt: sha256"):
        train(recipe("split"), resume=True)
    # a checkpoint of another architecture is refused by name
    other = tiny_recipe_dict("sde", data, tmp_path / "whole", total_iters=6)
    other["model"] = {"name": "ConditionalNAFNet", "args": dict(TINY_MODELS["sde"]["args"], width=4)}
    with pytest.raises(CheckpointError, match="recipe key 'model' differs"):
        train(recipe_from_dict(other), resume=True)


def test_non_finite_loss_stops_with_step_and_files(data, tmp_path, monkeypatch):
    real = objectives.OBJECTIVES["regressor"]
    calls = []

    def poisoned(model, batch, *args, **kwargs):
        loss, logs = real(model, batch, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), logs

    monkeypatch.setitem(objectives.OBJECTIVES, "regressor", poisoned)
    recipe = recipe_from_dict(tiny_recipe_dict("regressor", data, tmp_path / "run", total_iters=6,
                                               checkpoint_every=2))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3; batch files: img\d, img\d") as info:
        train(recipe)
    assert "step_00000002" in str(info.value) and "intact" in str(info.value)
    assert [p.name for p in list_checkpoints(recipe.output_dir)] == ["step_00000002"]
    assert verify_checkpoint(Path(recipe.output_dir) / "checkpoints/step_00000002")["step"] == 2


def test_existing_run_dir_is_refused(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run")
    recipe = recipe_from_dict(tiny_recipe_dict("regressor", data, out))
    with pytest.raises(RunDirError, match=f"run directory '{out}' already exists and is not empty; pass "
                                          "--resume to continue it or --overwrite"):
        train(recipe)
    with pytest.raises(RunDirError, match="--resume: no checkpoint in"):
        train(recipe, resume=True)
    with pytest.raises(RunDirError, match="does not exist or is empty"):
        train(recipe_from_dict(tiny_recipe_dict("regressor", data, tmp_path / "absent")), resume=True)
    assert (out / "notes.txt").read_text() == "an earlier run"


def test_cli_refuses_a_recipe_of_another_task(data, tmp_path, capsys):
    import yaml

    from refusion.cli.train import main

    path = tmp_path / "nafnet.yml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict("regressor", data, tmp_path / "run")))
    assert main([str(path), "--set", "train.total_iters=2"], task="sde") == 2
    assert "is a 'regressor' recipe; tools/train_sde.py trains 'sde' recipes: use tools/train_regressor.py" \
        in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    assert main([str(path)], task="regressor") == 1
    assert "already exists and is not empty" in capsys.readouterr().err


def test_model_is_published_before_each_checkpoint(data, tmp_path, monkeypatch):
    """A kill between the two publishes must not leave checkpoints without model/."""
    from refusion.training import run_dir as rd

    published = []
    real_publish = rd.publish_dir

    def recording_publish(tmp, final):
        published.append(Path(final).name)
        real_publish(tmp, final)

    monkeypatch.setattr(rd, "publish_dir", recording_publish)
    run = train(recipe_from_dict(tiny_recipe_dict(
        "regressor", data, tmp_path / "run", total_iters=4, checkpoint_every=2, keep_checkpoints=1)))
    order = [name for name in published if name == "model" or name.startswith("step_")]
    assert order == ["model", "step_00000002", "model", "step_00000004"], published
    assert (run / "model" / "config.json").is_file()


def test_restart_cleans_up_after_a_kill(tmp_path):
    from refusion.training.run_dir import prepare_run_dir, prune_checkpoints, write_meta

    run = tmp_path / "run"
    for name in ("checkpoints/step_00000002", "checkpoints/step_00000004", "checkpoints/.tmp-step_00000006",
                 ".tmp-old-model", ".tmp-model", ".tmp-best"):
        (run / name).mkdir(parents=True)
        (run / name / "weights.bin").write_bytes(name.encode())
    (run / ".tmp-recipe.yml").write_text("task: sd")
    for step in (2, 4):
        write_meta(run / f"checkpoints/step_{step:08d}", {"step": step, "samples_seen": 0})
    prepare_run_dir(run, overwrite=False)
    # a kill between the two renames of model/: the previous complete version comes back
    assert (run / "model/weights.bin").read_bytes() == b".tmp-old-model"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "model"]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    prune_checkpoints(run, keep=1)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000004"]
    (run / "checkpoints/step_00000004/meta.json").unlink()
    with pytest.raises(CheckpointError, match="has no meta.json: it is incomplete"):
        verify_checkpoint(run / "checkpoints/step_00000004")
