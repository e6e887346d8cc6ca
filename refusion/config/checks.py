"""Checks across fields and sections of a built recipe: task and network, SDE type, stereo and lens data,
conditioning, the network's constructor arguments, data folders."""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Mapping

from refusion.config.building import Context, did_you_mean
from refusion.config.schema import (COMPILE_MODES, LOSSES, TRACKERS, TASK_MODELS, TASK_MODEL_KIND, DatasetConfig, ModelConfig, Recipe,
                                    SchedulerConfig)

# ---------------------------------------------------------------------------------------------
# cross-field checks

# noise networks of each SDE: the DenoisingSDE's see only the state, net(x_t, t)
SDE_TYPE_MODELS = {"ir_sde": ("ConditionalNAFNet", "ConditionalUNet", "StereoNAFNet", "BokehNAFNet"),
                   "denoising": ("UnconditionalNAFNet", "UnconditionalUNet")}


def _check_sde_type(recipe: Recipe, ctx: Context) -> None:
    sched = recipe.scheduler
    allowed = SDE_TYPE_MODELS[sched.type]
    if recipe.model.name in TASK_MODELS["sde"] and recipe.model.name not in allowed:
        ctx.fail("model.name", f"scheduler.type {sched.type!r} trains {', '.join(allowed)}; got "
                               f"{recipe.model.name!r} (the DenoisingSDE's networks are net(x_t, t), the "
                               f"IR-SDE's net(x_t, mu, t))")
    schedules = sched.scheduler_class().SCHEDULES    # what the scheduler implements, read from it
    if sched.schedule not in schedules:
        ctx.fail("scheduler.schedule", f"scheduler.schedule must be one of {', '.join(schedules)} for scheduler.type "
                                       f"{sched.type!r}; got {sched.schedule!r}{did_you_mean(sched.schedule, schedules)}")
    if sched.type == "ir_sde" and sched.noise_level is not None:
        ctx.fail("scheduler.noise_level", "scheduler.noise_level is only used by scheduler.type 'denoising'")
    if sched.type == "denoising":
        if sched.sampler not in (None, "ode", "sde", "posterior"):
            ctx.fail("scheduler.sampler", f"scheduler.sampler must be one of ode, sde, posterior for "
                                          f"scheduler.type 'denoising'; got {sched.sampler!r}")
        if recipe.latent is not None:
            ctx.fail("latent", "latent: the DenoisingSDE runs on pixels; remove latent or use scheduler.type ir_sde")


# AlexNet's pooling leaves no feature map below 31 pixels: LPIPS fails inside torch on smaller images
LPIPS_MIN_SIZE = 31


def _check_distill(recipe: Recipe, ctx: Context) -> None:
    """The distill section: present exactly for task distill; K a divisor of the teacher's steps."""
    cfg = recipe.distill
    if recipe.task != "distill":
        if cfg is not None:
            ctx.fail("distill", f"distill is only used by task 'distill', not {recipe.task!r}: remove it")
        return
    if cfg is None:
        ctx.fail("distill", "task 'distill' needs a distill section (teacher, student_steps, teacher_solver, "
                            "teacher_steps); `refusion distill TEACHER --out DIR --student-steps K` writes one")
    if cfg.student_steps > cfg.teacher_steps or cfg.teacher_steps % cfg.student_steps:
        ctx.fail("distill.student_steps", f"distill.student_steps ({cfg.student_steps}) must divide "
                                          f"distill.teacher_steps ({cfg.teacher_steps}) and be at most it")
    patch = recipe.data.train.gt_size
    if cfg.lpips_weight and patch is not None and patch < LPIPS_MIN_SIZE:
        ctx.fail("distill.lpips_weight", f"distill.lpips_weight: LPIPS (AlexNet) needs images of at least "
                                         f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels; data.train.gt_size is {patch}")
    if recipe.scheduler.type != "ir_sde":
        ctx.fail("scheduler.type", "task 'distill' distils IR-SDE teachers (x_T = mu + lambda z); the DenoisingSDE "
                                   "starts from the degraded image itself")


def _check_trackers(recipe: Recipe, ctx: Context) -> None:
    """Known trackers, each once, and installed: a missing package is named with its pip extra before step 1."""
    import importlib.util

    trackers = recipe.logging.trackers
    for name in trackers:
        if name not in TRACKERS:
            ctx.fail("logging.trackers", f"logging.trackers: {name!r} is not a tracker; choose from "
                                         f"{', '.join(TRACKERS)}{did_you_mean(str(name), tuple(TRACKERS))}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            ctx.fail("logging.trackers", f"logging.trackers: {name!r} needs the {module} package, which is not "
                                         f"installed: pip install \"{extra}\" (or remove {name!r})")
    if len(set(trackers)) != len(trackers):
        ctx.fail("logging.trackers", f"logging.trackers names a tracker twice: {trackers}")


def check_task(recipe: Recipe, raw: Mapping[str, Any], ctx: Context) -> None:
    task = recipe.task
    if task in ("sde", "distill"):
        if recipe.scheduler is None:
            recipe.scheduler = SchedulerConfig()
        _check_sde_type(recipe, ctx)
        steps, total = recipe.validation.num_inference_steps, recipe.scheduler.num_train_timesteps
        if steps > total:
            ctx.fail("validation.num_inference_steps",
                     f"validation.num_inference_steps ({steps}) must be <= "
                     f"scheduler.num_train_timesteps ({total})")
    else:
        if raw.get("scheduler") is not None:
            ctx.fail("scheduler", f"scheduler is only used by tasks 'sde' and 'distill', not {task!r}: remove it")
        if recipe.latent is not None:
            ctx.fail("latent", f"latent is only used by tasks 'sde' and 'distill', not {task!r}: remove it")
    if recipe.train.loss not in LOSSES[task]:
        ctx.fail("train.loss", f"train.loss must be one of {', '.join(LOSSES[task])} for task "
                               f"{task!r}; got {recipe.train.loss!r}")
    if recipe.lr_schedule.warmup_iters >= recipe.train.total_iters:
        ctx.fail("lr_schedule.warmup_iters",
                 f"lr_schedule.warmup_iters ({recipe.lr_schedule.warmup_iters}) must be < "
                 f"train.total_iters ({recipe.train.total_iters})")
    for i, beta in enumerate(recipe.optimizer.betas):
        if not 0 <= beta < 1:
            ctx.fail("optimizer.betas", f"optimizer.betas[{i}] must be in [0, 1), got {beta!r}")
    if recipe.model.name not in TASK_MODELS[task]:
        ctx.fail("model.name", f"task {task!r} needs {TASK_MODEL_KIND[task]}: model.name must "
                               f"be one of {', '.join(TASK_MODELS[task])}; got {recipe.model.name!r}")
    _check_distill(recipe, ctx)
    _check_trackers(recipe, ctx)
    compile_ = recipe.train.compile
    if not (isinstance(compile_, bool) or compile_ in COMPILE_MODES):
        ctx.fail("train.compile", f"train.compile must be false, true or a torch.compile mode ({', '.join(COMPILE_MODES)}); "
                                  f"got {compile_!r}{did_you_mean(str(compile_), COMPILE_MODES)}")


def _datasets(recipe: Recipe) -> list[tuple[str, DatasetConfig]]:
    """("data.train", section) and ("data.val", section) when there is one."""
    return [(f"data.{split}", section) for split in ("train", "val")
            if (section := getattr(recipe.data, split)) is not None]


def check_stereo(recipe: Recipe, ctx: Context) -> None:
    stereo_net = recipe.model.name == "StereoNAFNet"
    for key, section in _datasets(recipe):
        if section.stereo != stereo_net:
            ctx.fail(f"{key}.stereo", f"{key}.stereo is {section.stereo} but model.name is {recipe.model.name!r}: "
                                      f"stereo pairs (<id>_L / <id>_R) go with StereoNAFNet and only with it")
        if section.stereo and section.use_rot:
            ctx.fail(f"{key}.use_rot", f"{key}.use_rot with stereo pairs would turn the horizontal disparity "
                                       f"vertical; use flips only")


def check_lens(recipe: Recipe, ctx: Context) -> None:
    """Lens information goes with BokehNAFNet, the network that embeds it, and only with it."""
    bokeh_net = recipe.model.name == "BokehNAFNet"
    for key, section in _datasets(recipe):
        if bokeh_net and section.lens is None:
            ctx.fail(f"{key}.lens", f"{key}.lens is missing: model.name 'BokehNAFNet' embeds the lens information "
                                    f"of every image (a meta.txt with lines 'id, src_lens, tgt_lens, disparity')")
        if not bokeh_net and section.lens is not None:
            ctx.fail(f"{key}.lens", f"{key}.lens is set but model.name is {recipe.model.name!r}: lens information "
                                    f"is embedded by BokehNAFNet only (for another network give it as data cond)")
        if section.lens_swap and (section.lens is None or key != "data.train"):
            ctx.fail(f"{key}.lens_swap", f"{key}.lens_swap exchanges source and target of training pairs: it belongs "
                                         f"to data.train, next to data.train.lens")


def check_cond(recipe: Recipe, ctx: Context) -> None:
    cond_channels = recipe.model.args.get("cond_channels") or 0
    train_cond = recipe.data.train.cond
    if train_cond is not None and not cond_channels:
        ctx.fail("data.train.cond", "data.train.cond is set but model.args.cond_channels is not: "
                                    "the network would ignore the conditioning input")
    if cond_channels and train_cond is None:
        ctx.fail("model.args.cond_channels", f"model.args.cond_channels is {cond_channels} but "
                                             "data.train.cond is not set")
    val = recipe.data.val
    if val is not None and (val.cond is None) != (train_cond is None):
        ctx.fail("data.val.cond", "data.val.cond must be set exactly when data.train.cond is")


def _model_table() -> dict[str, type]:
    from refusion.models import MODELS  # lazily: the networks import torch

    return MODELS


def check_model_name(model: ModelConfig, ctx: Context) -> None:
    models = _model_table()
    if model.name not in models:
        ctx.fail("model.name", f"model.name: unknown model {model.name!r}"
                               f"{did_you_mean(model.name, models)}; allowed: "
                               f"{', '.join(sorted(models))}")


def check_model_args(model: ModelConfig, ctx: Context) -> None:
    params = list(inspect.signature(_model_table()[model.name].__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in model.args:
        if key not in names:
            ctx.fail(f"model.args.{key}",
                     f"unknown key 'model.args.{key}' for model {model.name}"
                     f"{did_you_mean(key, names)}; allowed arguments: {', '.join(names)}")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name in names and p.name not in model.args:
            ctx.fail("model.args", f"model.args is missing {p.name!r}, a required argument of "
                                   f"{model.name}")


def check_paths(recipe: Recipe, ctx: Context) -> None:
    checks = []
    for key, dataset in _datasets(recipe):
        checks += [(f"{key}.gt", dataset.gt, True), (f"{key}.lq", dataset.lq, True)]
        checks += [(f"{key}.{name}", getattr(dataset, name), False) for name in ("cond", "lens")
                   if getattr(dataset, name) is not None]
    if recipe.latent is not None:
        checks.append(("latent.autoencoder", recipe.latent.autoencoder, True))
    for key, value, must_be_dir in checks:
        path = Path(value).expanduser()
        where = f"{value!r}" if path.is_absolute() else \
            f"{value!r} (relative paths are resolved against the current directory {os.getcwd()})"
        if not path.exists():
            ctx.fail(key, f"{key}: path not found: {where}")
        if must_be_dir and not path.is_dir():
            ctx.fail(key, f"{key}: not a folder: {where}")


