"""Recipes: loading, validation messages, overrides, dump/load round trip, the shipped recipes."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path

import pytest
import yaml

from refusion import config
from refusion.config import (
    TASK_MODELS, Recipe, RecipeError, apply_overrides, dump_recipe, load_recipe, recipe_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yml"))
DATA = Path(__file__).parent / "data"

TOP_KEYS = ("data, distill, latent, logging, lr_schedule, model, name, optimizer, output_dir, scheduler, seed, "
            "task, train, validation")


def minimal(task: str = "sde", model: str = "ConditionalNAFNet", **sections) -> dict:
    d = {"task": task, "name": "tiny", "model": {"name": model, "args": {"width": 16}},
         "data": {"train": {"gt": "data/gt", "lq": "data/lq"}}, "train": {"total_iters": 10}}
    d.update(sections)
    return d


def schema_only(d: dict, overrides=()) -> Recipe:
    return recipe_from_dict(d, "r.yml", overrides, check_paths=False, check_model=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yml"
    path.write_text(text)
    return path


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- the shipped recipes ---------------------------------------------------------------------

def test_recipe_folder_holds_every_recipe():
    names = {p.stem for p in RECIPES}
    assert {"shadow", "latent_unet", "dehaze_latent", "bokeh", "derain", "deblur", "denoise",
            "stereo_sr", "nafnet_deblur", "nafnet_denoise", "baseline_deblur", "hinet_deblur",
            "nafft_deblur", "quickstart_sde", "quickstart_nafnet", "quickstart_latent"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_validates(path):
    from refusion.models import MODELS

    recipe = load_recipe(path, check_paths=False, check_model=False)
    assert recipe.model.name in TASK_MODELS[recipe.task]
    assert recipe.name == path.stem and recipe.output_dir == f"runs/{path.stem}"
    assert (recipe.scheduler is not None) == (recipe.task == "sde")
    if recipe.model.name in MODELS:  # the constructor-signature check of model.args as well
        assert load_recipe(path, check_paths=False) == recipe


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_round_trips_through_dump(path, tmp_path):
    recipe = load_recipe(path, check_paths=False, check_model=False)
    dump_recipe(recipe, tmp_path / "run" / "recipe.yml")
    again = load_recipe(tmp_path / "run" / "recipe.yml", check_paths=False, check_model=False)
    assert again == recipe
    assert yaml.safe_load((tmp_path / "run" / "recipe.yml").read_text()) == recipe.to_dict()


def test_recipes_carry_the_official_network_settings():
    official = json.loads((DATA / "recipe_official_kwargs.json").read_text())["recipes"]
    for name, entry in official.items():
        args = load_recipe(ROOT / "recipes" / name, check_paths=False, check_model=False).model.args
        extra = {"add_intro_skip"} if name == "dehaze_latent.yml" else set()
        assert {k: v for k, v in args.items() if k not in extra} == entry["kwargs"], name


def test_paper_training_settings():
    shadow = load_recipe(ROOT / "recipes/shadow.yml", check_paths=False, check_model=False)
    assert (shadow.optimizer.name, shadow.optimizer.lr, shadow.optimizer.betas) == ("lion", 3e-5, (0.9, 0.99))
    assert (shadow.lr_schedule.name, shadow.lr_schedule.eta_min) == ("cosine", 1e-7)
    assert dataclasses.astuple(shadow.scheduler)[:5] == ("ir_sde", 50.0, 100, "cosine", 0.005)
    assert (shadow.train.batch_size, shadow.data.train.gt_size, shadow.train.total_iters) == (8, 256, 700000)
    assert shadow.data.train.use_flip and shadow.data.train.use_rot
    assert shadow.train.ema_decay == pytest.approx(0.995 ** 0.1, abs=1e-6)
    nafnet = load_recipe(ROOT / "recipes/nafnet_deblur.yml", check_paths=False, check_model=False)
    assert (nafnet.optimizer.name, nafnet.optimizer.lr, nafnet.optimizer.betas) == ("adamw", 1e-3, (0.9, 0.9))
    assert (nafnet.train.loss, nafnet.train.total_iters, nafnet.lr_schedule.eta_min) == ("psnr", 200000, 1e-7)
    latent = load_recipe(ROOT / "recipes/dehaze_latent.yml", check_paths=False, check_model=False)
    assert latent.latent.autoencoder == "runs/latent_unet"
    assert (latent.train.batch_size, latent.data.train.gt_size, latent.train.total_iters) == (8, 1024, 400000)
    nafft = load_recipe(ROOT / "recipes/nafft_deblur.yml", check_paths=False, check_model=False)
    assert (nafft.train.loss, nafft.train.fft_loss_weight) == ("l1_fft", 0.05)


def test_readme_documents_every_key():
    readme = (ROOT / "recipes/README.md").read_text()
    classes = [Recipe, config.ModelConfig, config.SchedulerConfig, config.LatentConfig, config.DataConfig,
               config.DatasetConfig, config.OptimizerConfig, config.LRScheduleConfig, config.TrainConfig,
               config.ValidationConfig, config.LoggingConfig]
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name != "source":
                assert f"| `{f.name}` |" in readme, f"{cls.__name__}.{f.name} is not documented"


# --- building and defaults -------------------------------------------------------------------

def test_defaults_follow_the_schema():
    r = schema_only(minimal())
    assert r.output_dir == "runs/tiny" and r.seed == 0 and r.latent is None and r.data.val is None
    assert r.scheduler == config.SchedulerConfig(type="ir_sde", max_sigma=50.0, num_train_timesteps=100,
                                                 schedule="cosine", eps=None)
    assert r.scheduler.scheduler_kwargs() == {"max_sigma": 50.0, "num_train_timesteps": 100, "schedule": "cosine",
                                              "prediction_type": "epsilon", "eta": 1.0, "solver_order": 2}
    assert r.scheduler.build().config.eps == 0.005               # the IR-SDE's own eps
    denoising = schema_only(minimal("sde", "UnconditionalNAFNet", scheduler={"type": "denoising"})).scheduler
    assert type(denoising.build()).__name__ == "DenoisingSDEScheduler" and denoising.build().config.eps == 0.04
    assert "solver_order" not in denoising.scheduler_kwargs()
    assert (r.optimizer.name, r.optimizer.lr, r.optimizer.betas, r.optimizer.weight_decay) == \
        ("lion", 3e-5, (0.9, 0.99), 0.0)
    assert (r.train.batch_size, r.train.grad_accum, r.train.clip_grad_norm, r.train.ema_decay,
            r.train.mixed_precision, r.train.loss, r.train.checkpoint_every) == (8, 1, None, 0.0, "no", "l1", 5000)
    assert (r.validation.every, r.validation.max_images, r.logging.trackers) == (5000, 4, ["tensorboard"])
    assert schema_only(minimal("regressor", "NAFNet")).scheduler is None


def test_numbers_and_yaml_quirks(tmp_path):
    path = write(tmp_path, "task: sde\nname: x\nmodel: {name: ConditionalNAFNet}\n"
                           "data: {train: {gt: a, lq: b}}\noptimizer: {lr: 3e-5}\n"
                           "scheduler: {max_sigma: 30}\ntrain: {total_iters: 5, mixed_precision: no}\n")
    r = load_recipe(path, check_paths=False, check_model=False)
    assert r.optimizer.lr == 3e-5 and isinstance(r.scheduler.max_sigma, float)
    assert r.train.mixed_precision == "no"


def test_programmatic_recipe_round_trip(tmp_path):
    r = schema_only(minimal(optimizer={"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.9)},
                            data={"train": {"gt": "g", "lq": "l", "gt_size": 64}, "val": {"gt": "g", "lq": "l"}}))
    assert schema_only(r.to_dict()) == r
    dump_recipe(r, tmp_path / "r.yml")
    assert load_recipe(tmp_path / "r.yml", check_paths=False, check_model=False) == r


# --- error messages --------------------------------------------------------------------------

def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, yaml.safe_dump({**minimal(), "optimiser": {"lr": 1e-4}}))
    assert error(load_recipe, path, check_paths=False, check_model=False) == (
        f"{path}: unknown key 'optimiser' at the top level (did you mean 'optimizer'?); allowed keys: {TOP_KEYS}")


def test_unknown_nested_key():
    d = minimal(data={"train": {"gt": "a", "lq": "b", "use_flips": True}})
    assert error(schema_only, d) == (
        "r.yml: unknown key 'use_flips' in section 'data.train' (did you mean 'use_flip'?); "
        "allowed keys: cond, gt, gt_size, lens, lens_swap, lq, max_images, stereo, use_flip, use_rot")


def test_wrong_types():
    assert error(schema_only, minimal(train={"total_iters": "200k"})) == \
        "r.yml: train.total_iters must be an integer, got '200k' (str)"
    assert error(schema_only, minimal(train={"total_iters": True})) == \
        "r.yml: train.total_iters must be an integer, got True (bool)"
    assert error(schema_only, minimal(train={"total_iters": 5, "clip_grad_norm": "big"})) == \
        "r.yml: train.clip_grad_norm must be a number or null, got 'big' (str)"
    assert error(schema_only, minimal(optimizer={"betas": [0.9]})) == \
        "r.yml: optimizer.betas must be a list of 2 numbers, got [0.9] (list)"
    assert error(schema_only, minimal(logging={"trackers": "tensorboard"})) == \
        "r.yml: logging.trackers must be a list, got 'tensorboard' (str)"
    assert error(schema_only, minimal(logging={"trackers": ["tensorbord"]})) == \
        ("r.yml: logging.trackers: 'tensorbord' is not a tracker; choose from tensorboard, wandb, mlflow "
         "(did you mean 'tensorboard'?)")
    assert error(schema_only, minimal(data=["a"])) == \
        "r.yml: section 'data' must be a mapping of keys, got ['a'] (list)"


def test_missing_required_key():
    d = minimal()
    del d["data"]["train"]["lq"]
    assert error(schema_only, d) == "r.yml: missing required key 'data.train.lq'"


def test_invalid_choices():
    assert error(schema_only, minimal(optimizer={"name": "sgd"})) == \
        "r.yml: optimizer.name must be one of lion, adamw, adam; got 'sgd'"
    assert error(schema_only, minimal(task="sdee")) == \
        "r.yml: task must be one of sde, regressor, latent_autoencoder, distill; got 'sdee' (did you mean 'sde'?)"
    assert error(schema_only, minimal(lr_schedule={"name": "step"})) == \
        "r.yml: lr_schedule.name must be one of cosine, constant; got 'step'"
    assert error(schema_only, minimal(train={"total_iters": 5, "mixed_precision": "fp8"})) == \
        "r.yml: train.mixed_precision must be one of no, bf16, fp16; got 'fp8'"
    assert error(schema_only, minimal(train={"total_iters": 5, "loss": "psnr"})) == \
        "r.yml: train.loss must be one of l1, l2 for task 'sde'; got 'psnr'"
    assert error(schema_only, minimal("regressor", "NAFNet", train={"total_iters": 5, "loss": "l2"})) == \
        "r.yml: train.loss must be one of psnr, l1, charbonnier, l1_fft for task 'regressor'; got 'l2'"


def test_noise_schedules_are_those_the_scheduler_of_the_type_implements():
    from refusion.schedulers import DenoisingSDEScheduler, IRSDEScheduler

    for schedule in IRSDEScheduler.SCHEDULES:          # constant included, as in the official code
        built = schema_only(minimal(scheduler={"schedule": schedule})).scheduler.build()
        assert built.config.schedule == schedule
    assert error(schema_only, minimal(scheduler={"schedule": "cosin"})) == (
        f"r.yml: scheduler.schedule must be one of {', '.join(IRSDEScheduler.SCHEDULES)} for scheduler.type "
        "'ir_sde'; got 'cosin' (did you mean 'cosine'?)")
    assert "constant" not in DenoisingSDEScheduler.SCHEDULES   # the official DenoisingSDE has no constant
    assert error(schema_only, minimal("sde", "UnconditionalNAFNet",
                                      scheduler={"type": "denoising", "schedule": "constant"})) == (
        f"r.yml: scheduler.schedule must be one of {', '.join(DenoisingSDEScheduler.SCHEDULES)} for "
        "scheduler.type 'denoising'; got 'constant'")


def test_value_ranges_and_cross_checks():
    assert error(schema_only, minimal(train={"total_iters": 0})) == "r.yml: train.total_iters must be >= 1, got 0"
    assert error(schema_only, minimal(train={"total_iters": 5, "ema_decay": 1.0})) == \
        "r.yml: train.ema_decay must be in [0, 1), got 1.0"
    assert error(schema_only, minimal(optimizer={"betas": [0.9, 1.5]})) == \
        "r.yml: optimizer.betas[1] must be in [0, 1), got 1.5"
    assert error(schema_only, minimal(lr_schedule={"warmup_iters": 10})) == \
        "r.yml: lr_schedule.warmup_iters (10) must be < train.total_iters (10)"
    assert error(schema_only, minimal(validation={"num_inference_steps": 200})) == \
        "r.yml: validation.num_inference_steps (200) must be <= scheduler.num_train_timesteps (100)"
    assert error(schema_only, minimal("regressor", "NAFNet", scheduler={"max_sigma": 10})) == \
        "r.yml: scheduler is only used by tasks 'sde' and 'distill', not 'regressor': remove it"


def test_task_and_model_must_fit():
    assert error(schema_only, minimal("sde", "NAFNet")) == (
        "r.yml: task 'sde' needs a noise network: model.name must be one of ConditionalNAFNet, "
        "ConditionalUNet, UnconditionalNAFNet, UnconditionalUNet, StereoNAFNet, BokehNAFNet; got 'NAFNet'")
    assert error(schema_only, minimal("regressor", "ConditionalNAFNet")) == (
        "r.yml: task 'regressor' needs a regressor: model.name must be one of NAFNet, Baseline, HINet, "
        "NAFFTNet; got 'ConditionalNAFNet'")
    assert error(schema_only, minimal("latent_autoencoder", "NAFNet")) == (
        "r.yml: task 'latent_autoencoder' needs an autoencoder: model.name must be one of LatentUNet; got 'NAFNet'")


def test_conditioning_needs_cond_channels():
    d = minimal(data={"train": {"gt": "a", "lq": "b", "cond": "c"}})
    assert error(schema_only, d) == ("r.yml: data.train.cond is set but model.args.cond_channels is not: "
                                     "the network would ignore the conditioning input")
    d["model"]["args"]["cond_channels"] = 3
    assert schema_only(d).data.train.cond == "c"
    d["data"]["val"] = {"gt": "a", "lq": "b"}
    assert error(schema_only, d) == "r.yml: data.val.cond must be set exactly when data.train.cond is"


def test_unknown_model_name_lists_the_table():
    from refusion.models import MODELS

    allowed = ", ".join(sorted(MODELS))
    assert "Xq" not in MODELS
    message = error(recipe_from_dict, minimal("sde", "Xq"), "r.yml", check_paths=False)
    assert message == f"r.yml: model.name: unknown model 'Xq'; allowed: {allowed}"
    if "NAFNet" in MODELS:
        message = error(recipe_from_dict, minimal("regressor", "NAFnet"), "r.yml", check_paths=False)
        assert message == f"r.yml: model.name: unknown model 'NAFnet' (did you mean 'NAFNet'?); allowed: {allowed}"


def test_every_network_is_trained_by_exactly_one_task():
    from refusion.models import MODELS

    # distill trains students of sde networks: the networks themselves come from the other tasks
    trainable = [name for task, names in TASK_MODELS.items() if task != "distill" for name in names]
    assert sorted(trainable) == sorted(MODELS)
    assert set(TASK_MODELS["distill"]) <= set(TASK_MODELS["sde"])


def test_lens_information_goes_with_the_bokeh_network_only():
    bokeh = minimal("sde", "BokehNAFNet")
    assert error(schema_only, bokeh) == (
        "r.yml: data.train.lens is missing: model.name 'BokehNAFNet' embeds the lens information of every "
        "image (a meta.txt with lines 'id, src_lens, tgt_lens, disparity')")
    bokeh["data"]["train"]["lens"] = "meta.txt"
    assert schema_only(bokeh).data.train.lens == "meta.txt"
    plain = minimal("sde")
    plain["data"]["train"]["lens"] = "meta.txt"
    assert error(schema_only, plain) == (
        "r.yml: data.train.lens is set but model.name is 'ConditionalNAFNet': lens information is embedded by "
        "BokehNAFNet only (for another network give it as data cond)")


def test_the_sde_type_and_the_network_must_fit():
    assert error(schema_only, minimal("sde", "UnconditionalNAFNet")) == (
        "r.yml: scheduler.type 'ir_sde' trains ConditionalNAFNet, ConditionalUNet, StereoNAFNet, BokehNAFNet; got "
        "'UnconditionalNAFNet' "
        "(the DenoisingSDE's networks are net(x_t, t), the IR-SDE's net(x_t, mu, t))")
    assert "scheduler.type 'denoising' trains UnconditionalNAFNet, UnconditionalUNet" in error(
        schema_only, minimal("sde", "ConditionalNAFNet", scheduler={"type": "denoising"}))
    assert "scheduler.noise_level is only used by scheduler.type 'denoising'" in error(
        schema_only, minimal("sde", scheduler={"noise_level": 25}))
    assert "scheduler.sampler must be one of ode, sde, posterior" in error(
        schema_only, minimal("sde", "UnconditionalNAFNet", scheduler={"type": "denoising", "sampler": "mr_sde"}))
    assert "scheduler.type must be one of ir_sde, denoising" in error(
        schema_only, minimal("sde", scheduler={"type": "denoise"}))


def test_unknown_model_argument(monkeypatch):
    from refusion.models import MODELS
    from refusion.models.nafnet import NAFNet

    monkeypatch.setitem(MODELS, "NAFNet", MODELS.get("NAFNet", NAFNet))
    names = list(inspect.signature(MODELS["NAFNet"].__init__).parameters)[1:]
    assert "width" in names and "widht" not in names
    d = minimal("regressor", "NAFNet", train={"total_iters": 5, "loss": "psnr"})
    assert recipe_from_dict(d, "r.yml", check_paths=False).model.args == {"width": 16}
    d["model"]["args"]["widht"] = 32
    assert error(recipe_from_dict, d, "r.yml", check_paths=False) == (
        "r.yml: unknown key 'model.args.widht' for model NAFNet (did you mean 'width'?); "
        f"allowed arguments: {', '.join(names)}")


def test_required_model_argument(monkeypatch):
    from refusion.models import MODELS

    class NeedsDepth:
        def __init__(self, depth, width=8):
            pass

    monkeypatch.setitem(MODELS, "HINet", NeedsDepth)
    d = minimal("regressor", "HINet", train={"total_iters": 5, "loss": "psnr"})
    assert error(recipe_from_dict, d, "r.yml", check_paths=False) == \
        "r.yml: model.args is missing 'depth', a required argument of HINet"


def test_missing_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/gt").mkdir(parents=True)
    assert error(recipe_from_dict, minimal(), "r.yml", check_model=False) == (
        "r.yml: data.train.lq: path not found: 'data/lq' (relative paths are resolved against the current "
        f"directory {os.getcwd()})")
    (tmp_path / "data/lq").write_text("not a folder")
    assert error(recipe_from_dict, minimal(), "r.yml", check_model=False).startswith(
        "r.yml: data.train.lq: not a folder: 'data/lq'")
    (tmp_path / "data/lq").unlink()
    (tmp_path / "data/lq").mkdir()
    assert recipe_from_dict(minimal(), "r.yml", check_model=False).data.train.lq == "data/lq"
    absent = str(tmp_path / "runs/ae")
    assert error(recipe_from_dict, minimal(latent={"autoencoder": absent}), "r.yml", check_model=False) == \
        f"r.yml: latent.autoencoder: path not found: {absent!r}"


def test_unsafe_yaml_tag_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = write(tmp_path, f"task: !!python/object/apply:os.system ['touch {marker}']\nname: x\n")
    message = error(load_recipe, path, check_paths=False, check_model=False)
    assert message.startswith(f"{path}: refusing unsafe or unknown YAML tag (")
    assert "tag:yaml.org,2002:python/object/apply:os.system" in message
    assert "python object tags are not allowed" in message
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    assert error(load_recipe, tmp_path / "nope.yml") == f"recipe file not found: {str(tmp_path / 'nope.yml')!r}"
    assert error(load_recipe, write(tmp_path, "")) == f"{tmp_path / 'recipe.yml'}: the recipe is empty"
    assert error(load_recipe, write(tmp_path, "- a\n- b\n")) == \
        f"{tmp_path / 'recipe.yml'}: a recipe must be a mapping of keys, got list"
    assert error(load_recipe, write(tmp_path, "task: [sde\n")).startswith(f"{tmp_path / 'recipe.yml'}: invalid YAML:")


# --- overrides -------------------------------------------------------------------------------

def test_overrides_nested_lists_and_null():
    d = minimal(data={"train": {"gt": "a", "lq": "b"}, "val": {"gt": "a", "lq": "b"}})
    r = schema_only(d, ["train.total_iters=200", "model.args.enc_blk_nums=[1, 1, 2]", "optimizer.betas=[0.9,0.9]",
                        "scheduler.max_sigma=30", "train.clip_grad_norm=0.5", "data.val=null",
                        "latent.autoencoder=runs/ae", "train.mixed_precision=bf16"])
    assert r.train.total_iters == 200 and r.model.args == {"width": 16, "enc_blk_nums": [1, 1, 2]}
    assert r.optimizer.betas == (0.9, 0.9) and r.scheduler.max_sigma == 30.0 and r.train.clip_grad_norm == 0.5
    assert r.data.val is None and r.latent.autoencoder == "runs/ae" and r.train.mixed_precision == "bf16"
    assert d["train"] == {"total_iters": 10}  # the input mapping is left alone


def test_override_from_load_recipe(tmp_path):
    path = write(tmp_path, yaml.safe_dump(minimal()))
    r = load_recipe(path, ["train.batch_size=2", "data.train.gt_size=64"], check_paths=False, check_model=False)
    assert (r.train.batch_size, r.data.train.gt_size) == (2, 64)


def test_override_errors():
    assert error(schema_only, minimal(), ["train.total_itres=5"]) == (
        "r.yml: override 'train.total_itres=5': unknown key 'total_itres' in section 'train' (did you mean "
        "'total_iters'?); allowed keys: batch_size, channels_last, checkpoint_every, clip_grad_norm, compile, "
        "ema_decay, fft_loss_weight, grad_accum, keep_checkpoints, log_every, loss, mixed_precision, total_iters")
    assert error(schema_only, minimal(), ["trian.total_iters=5"]) == (
        f"r.yml: override 'trian.total_iters=5': unknown key 'trian' at the top level (did you mean 'train'?); "
        f"allowed keys: {TOP_KEYS}")
    assert error(schema_only, minimal(), ["train.total_iters.x=5"]) == \
        "r.yml: override 'train.total_iters.x=5': train.total_iters is a value, not a section"
    assert error(schema_only, minimal(), ["train.total_iters"]) == \
        "r.yml: override 'train.total_iters' must look like section.key=value (e.g. train.total_iters=200)"
    assert error(schema_only, minimal(), ["train.batch_size=four"]) == \
        "r.yml: train.batch_size must be an integer, got 'four' (str) (set by override 'train.batch_size=four')"


def test_apply_overrides_reports_what_it_set():
    raw, applied = apply_overrides({"train": {"total_iters": 1}}, ["train.total_iters=7", "data.val.gt=x"])
    assert raw == {"train": {"total_iters": 7}, "data": {"val": {"gt": "x"}}}
    assert applied == {"train.total_iters": "train.total_iters=7", "data.val.gt": "data.val.gt=x"}


@pytest.mark.parametrize("tracker, extra", [("wandb", "refusion[wandb]"), ("mlflow", "refusion[mlflow]")])
def test_a_tracker_whose_package_is_missing_is_named_with_its_extra(tracker, extra, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    assert error(schema_only, minimal(logging={"trackers": ["tensorboard", tracker]})) == (
        f"r.yml: logging.trackers: {tracker!r} needs the {tracker} package, which is not installed: "
        f"pip install \"{extra}\" (or remove {tracker!r})")
