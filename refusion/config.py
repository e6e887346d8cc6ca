"""YAML recipes -> typed dataclasses, with loud validation and ``--set a.b=value`` overrides.

A recipe is one YAML file (see recipes/README.md for every key). ``load_recipe`` reads it with a
safe loader, applies command-line overrides to the raw mapping, then builds the dataclasses below
field by field: unknown keys, wrong types, invalid choices, missing data folders, unknown model
names and model arguments are errors that name the file, the key, the value and what is allowed.

Relative paths (data folders, ``latent.autoencoder``, ``output_dir``) are kept as written and
resolved against the current working directory, like every other path given on a command line:
run the tools from the project root.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import yaml

TASKS = ("sde", "regressor", "latent_autoencoder")
OPTIMIZERS = ("lion", "adamw", "adam")
LR_SCHEDULES = ("cosine", "constant")
NOISE_SCHEDULES = ("cosine", "linear")
SDE_TYPES = ("ir_sde", "denoising")   # IR-SDE (mean mu) | the denoising-sde DenoisingSDE (mean x0)
MIXED_PRECISION = ("no", "bf16", "fp16")
LOSSES = {
    "sde": ("l1", "l2"),
    "regressor": ("psnr", "l1", "charbonnier", "l1_fft"),
    "latent_autoencoder": ("l1",),
}
# which networks each task can train (the task decides the forward signature the objective calls)
TASK_MODELS = {
    "sde": ("ConditionalNAFNet", "ConditionalUNet", "UnconditionalNAFNet", "UnconditionalUNet", "StereoNAFNet",
            "BokehNAFNet"),
    "regressor": ("NAFNet", "Baseline", "HINet", "NAFFTNet"),
    "latent_autoencoder": ("LatentUNet",),
}
_TASK_MODEL_KIND = {"sde": "a noise network", "regressor": "a regressor",
                    "latent_autoencoder": "an autoencoder"}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the key and what is allowed."""


# ---------------------------------------------------------------------------------------------
# field constraints, kept in the dataclass field metadata so the schema lives in one place

_Check = tuple[str, Callable[[Any], bool]]
POSITIVE: _Check = ("> 0", lambda v: v > 0)
NON_NEGATIVE: _Check = (">= 0", lambda v: v >= 0)
AT_LEAST_ONE: _Check = (">= 1", lambda v: v >= 1)
DECAY: _Check = ("in [0, 1)", lambda v: 0 <= v < 1)
OPEN_UNIT: _Check = ("in (0, 1)", lambda v: 0 < v < 1)


def _field(default: Any = MISSING, *, choices: tuple | None = None, check: _Check | None = None):
    meta = {"choices": choices, "check": check}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class ModelConfig:
    name: str
    args: dict[str, Any] = _field({})


@dataclass(kw_only=True)
class SchedulerConfig:
    """The SDE: ``type`` picks IRSDEScheduler (ir_sde) or DenoisingSDEScheduler (denoising), the other
    keys are its keyword arguments (max_sigma on the 0-255 scale)."""
    type: str = _field("ir_sde", choices=SDE_TYPES)
    max_sigma: float = _field(50.0, check=POSITIVE)
    num_train_timesteps: int = _field(100, check=AT_LEAST_ONE)
    schedule: str = _field("cosine", choices=NOISE_SCHEDULES)
    eps: Optional[float] = _field(None, check=OPEN_UNIT)     # None: the SDE's own (0.005 ir_sde, 0.04 denoising)
    sampler: Optional[str] = _field(None)
    prediction_type: str = _field("epsilon")
    eta: float = _field(1.0, check=NON_NEGATIVE)
    solver_order: int = _field(2, check=AT_LEAST_ONE)
    noise_level: Optional[float] = _field(None, check=POSITIVE)   # denoising: test noise sigma (0-255)

    def scheduler_kwargs(self) -> dict[str, Any]:
        """The scheduler's (**kwargs); unset values leave the scheduler's defaults."""
        kwargs = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "type"}
        if self.type == "denoising":
            kwargs.pop("solver_order", None)     # the DenoisingSDE has no multistep solvers
        return kwargs

    def build(self):
        """The scheduler this section describes."""
        if self.type == "denoising":
            from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

            return DenoisingSDEScheduler(**self.scheduler_kwargs())
        from refusion.schedulers.ir_sde import IRSDEScheduler

        return IRSDEScheduler(**self.scheduler_kwargs())


@dataclass(kw_only=True)
class LatentConfig:
    autoencoder: str


@dataclass(kw_only=True)
class DatasetConfig:
    gt: str
    lq: str
    gt_size: Optional[int] = _field(None, check=AT_LEAST_ONE)
    use_flip: bool = False
    use_rot: bool = False
    cond: Optional[str] = None
    max_images: Optional[int] = _field(None, check=AT_LEAST_ONE)
    stereo: bool = False      # <id>_L / <id>_R pairs, stacked left-then-right on channels (StereoNAFNet)
    lens: Optional[str] = None   # bokeh: meta.txt of [src_lens, tgt_lens, disparity] per image (BokehNAFNet)
    lens_swap: bool = False      # bokeh training: the official use_swap augmentation (needs lens)


@dataclass(kw_only=True)
class DataConfig:
    train: DatasetConfig
    val: Optional[DatasetConfig] = None
    num_workers: int = _field(2, check=NON_NEGATIVE)


@dataclass(kw_only=True)
class OptimizerConfig:
    name: str = _field("lion", choices=OPTIMIZERS)
    lr: float = _field(3.0e-5, check=POSITIVE)
    betas: tuple[float, float] = _field((0.9, 0.99))
    weight_decay: float = _field(0.0, check=NON_NEGATIVE)


@dataclass(kw_only=True)
class LRScheduleConfig:
    name: str = _field("cosine", choices=LR_SCHEDULES)
    warmup_iters: int = _field(0, check=NON_NEGATIVE)
    eta_min: float = _field(1.0e-7, check=NON_NEGATIVE)


@dataclass(kw_only=True)
class TrainConfig:
    total_iters: int = _field(check=AT_LEAST_ONE)
    batch_size: int = _field(8, check=AT_LEAST_ONE)
    grad_accum: int = _field(1, check=AT_LEAST_ONE)
    clip_grad_norm: Optional[float] = _field(None, check=POSITIVE)
    ema_decay: float = _field(0.0, check=DECAY)
    mixed_precision: str = _field("no", choices=MIXED_PRECISION)
    loss: str = "l1"  # choices depend on the task: LOSSES
    fft_loss_weight: float = _field(0.05, check=NON_NEGATIVE)
    checkpoint_every: int = _field(5000, check=AT_LEAST_ONE)
    keep_checkpoints: int = _field(2, check=AT_LEAST_ONE)
    log_every: int = _field(100, check=AT_LEAST_ONE)


@dataclass(kw_only=True)
class ValidationConfig:
    every: int = _field(5000, check=NON_NEGATIVE)
    num_inference_steps: int = _field(100, check=AT_LEAST_ONE)
    sampler: Optional[str] = None
    max_images: Optional[int] = _field(4, check=AT_LEAST_ONE)


@dataclass(kw_only=True)
class LoggingConfig:
    tensorboard: bool = True
    image_every: int = _field(0, check=NON_NEGATIVE)


@dataclass(kw_only=True)
class Recipe:
    task: str = _field(choices=TASKS)
    name: str
    output_dir: Optional[str] = None  # filled with runs/<name> when absent
    seed: int = _field(0, check=NON_NEGATIVE)
    model: ModelConfig
    scheduler: Optional[SchedulerConfig] = None  # filled with the defaults for task sde
    latent: Optional[LatentConfig] = None
    data: DataConfig
    optimizer: OptimizerConfig = _field(OptimizerConfig())
    lr_schedule: LRScheduleConfig = _field(LRScheduleConfig())
    train: TrainConfig
    validation: ValidationConfig = _field(ValidationConfig())
    logging: LoggingConfig = _field(LoggingConfig())
    # where the recipe came from (file path or "<dict>"); not part of the recipe itself
    source: str = field(default="<dict>", compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain YAML-able data (lists, not tuples), in schema order."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# YAML

class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads ``3e-5`` as a float (YAML 1.2; YAML 1.1 needs ``3.0e-5``)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: no python object tags
    except yaml.constructor.ConstructorError as exc:
        tag = exc.problem or str(exc)
        raise RecipeError(
            f"{source}: refusing unsafe or unknown YAML tag ({tag.strip()}); recipes are plain "
            "YAML read with a safe loader, python object tags are not allowed") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: invalid YAML: {exc}") from None


# ---------------------------------------------------------------------------------------------
# building the dataclasses

class _Context:
    """The recipe's source and the overrides applied to it, for error messages."""

    def __init__(self, source: str, overrides: dict[str, str] | None = None):
        self.source = source
        self.overrides = overrides or {}

    def fail(self, path: str, message: str) -> typing.NoReturn:
        note = ""
        for key, text in self.overrides.items():
            if path == key or path.startswith(key + "."):
                note = f" (set by override {text!r})"
        raise RecipeError(f"{self.source}: {message}{note}")


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key_message(key: Any, section: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    where = f"in section {section!r}" if section else "at the top level"
    return (f"unknown key {key!r} {where}{_did_you_mean(key, allowed)}; "
            f"allowed keys: {', '.join(allowed)}")


def _schema_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _describe(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        text = "true or false"
    elif inner is int:
        text = "an integer"
    elif inner is float:
        text = "a number"
    elif inner is str:
        text = "a string"
    elif origin is tuple:
        text = f"a list of {len(typing.get_args(inner))} numbers"
    elif origin is list:
        text = "a list"
    elif origin is dict or dataclasses.is_dataclass(inner):
        text = "a mapping"
    else:
        text = str(inner)
    return f"{text} or null" if optional else text


def _convert(value: Any, tp: Any, path: str, ctx: _Context) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None and optional:
        return None
    if dataclasses.is_dataclass(inner):
        return _build(inner, value, path, ctx)
    origin = typing.get_origin(inner)
    ok = False
    if inner is bool:
        ok = isinstance(value, bool)
    elif inner is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif inner is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif inner is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        items = typing.get_args(inner)
        ok = isinstance(value, (list, tuple)) and len(value) == len(items)
        if ok:
            return tuple(_convert(v, t, f"{path}[{i}]", ctx) for i, (v, t) in
                         enumerate(zip(value, items)))
    elif origin is list:
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    elif origin is dict:
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        value = copy.deepcopy(dict(value)) if ok else value
    if not ok:
        ctx.fail(path, f"{path} must be {_describe(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _check_value(value: Any, f: dataclasses.Field, path: str, ctx: _Context) -> None:
    if value is None:
        return
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        ctx.fail(path, f"{path} must be one of {', '.join(choices)}; got {value!r}"
                       f"{_did_you_mean(value, choices)}")
    check = f.metadata.get("check")
    if check and not check[1](value):
        ctx.fail(path, f"{path} must be {check[0]}, got {value!r}")


def _build(cls: type, raw: Any, path: str, ctx: _Context) -> Any:
    if not isinstance(raw, Mapping):
        what = f"section {path!r}" if path else "a recipe"
        ctx.fail(path, f"{what} must be a mapping of keys, got {raw!r} ({type(raw).__name__})")
    fields = _schema_fields(cls)
    for key in raw:
        if key not in fields:
            ctx.fail(f"{path}.{key}" if path else str(key), _unknown_key_message(key, path, fields))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in raw:
            value = raw[name]
            if cls is TrainConfig and name == "mixed_precision" and value is False:
                value = "no"  # YAML 1.1 reads an unquoted `no` as false
            values[name] = _convert(value, hints[name], key_path, ctx)
            _check_value(values[name], f, key_path, ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            ctx.fail(key_path, f"missing required key {key_path!r}")
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# overrides

def _parse_override(text: str, source: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise RecipeError(f"{source}: override {text!r} must look like section.key=value "
                          "(e.g. train.total_iters=200)")
    return parts, _parse_yaml(value, f"{source}: override {text!r}")


def _check_override_path(parts: list[str], text: str, source: str) -> None:
    cls: Any = Recipe
    for i, part in enumerate(parts):
        section = ".".join(parts[:i])
        if cls is dict:  # free-form mapping (model.args): checked later against the model
            return
        if cls is None:
            raise RecipeError(f"{source}: override {text!r}: {section} is a value, not a section")
        fields = _schema_fields(cls)
        if part not in fields:
            raise RecipeError(f"{source}: override {text!r}: "
                              + _unknown_key_message(part, section, fields))
        inner, _ = _unwrap_optional(typing.get_type_hints(cls)[part])
        if dataclasses.is_dataclass(inner):
            cls = inner
        elif typing.get_origin(inner) is dict:
            cls = dict
        else:
            cls = None


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str],
                    source: str = "<dict>") -> tuple[dict[str, Any], dict[str, str]]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw recipe mapping.

    Returns the new mapping and {dotted key: override text}; the input is not modified.
    """
    raw = copy.deepcopy(dict(raw))
    applied: dict[str, str] = {}
    for text in overrides:
        parts, value = _parse_override(text, source)
        _check_override_path(parts, text, source)
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        applied[".".join(parts)] = text
    return raw, applied


# ---------------------------------------------------------------------------------------------
# cross-field checks

# noise networks of each SDE: the DenoisingSDE's see only the state, net(x_t, t)
SDE_TYPE_MODELS = {"ir_sde": ("ConditionalNAFNet", "ConditionalUNet", "StereoNAFNet", "BokehNAFNet"),
                   "denoising": ("UnconditionalNAFNet", "UnconditionalUNet")}


def _check_sde_type(recipe: Recipe, ctx: _Context) -> None:
    sched = recipe.scheduler
    allowed = SDE_TYPE_MODELS[sched.type]
    if recipe.model.name in TASK_MODELS["sde"] and recipe.model.name not in allowed:
        ctx.fail("model.name", f"scheduler.type {sched.type!r} trains {', '.join(allowed)}; got "
                               f"{recipe.model.name!r} (the DenoisingSDE's networks are net(x_t, t), the "
                               f"IR-SDE's net(x_t, mu, t))")
    if sched.type == "ir_sde" and sched.noise_level is not None:
        ctx.fail("scheduler.noise_level", "scheduler.noise_level is only used by scheduler.type 'denoising'")
    if sched.type == "denoising":
        if sched.sampler not in (None, "ode", "sde", "posterior"):
            ctx.fail("scheduler.sampler", f"scheduler.sampler must be one of ode, sde, posterior for "
                                          f"scheduler.type 'denoising'; got {sched.sampler!r}")
        if recipe.latent is not None:
            ctx.fail("latent", "latent: the DenoisingSDE runs on pixels; remove latent or use scheduler.type ir_sde")


def _check_task(recipe: Recipe, raw: Mapping[str, Any], ctx: _Context) -> None:
    task = recipe.task
    if task == "sde":
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
            ctx.fail("scheduler", f"scheduler is only used by task 'sde', not {task!r}: remove it")
        if recipe.latent is not None:
            ctx.fail("latent", f"latent is only used by task 'sde', not {task!r}: remove it")
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
        ctx.fail("model.name", f"task {task!r} needs {_TASK_MODEL_KIND[task]}: model.name must "
                               f"be one of {', '.join(TASK_MODELS[task])}; got {recipe.model.name!r}")


def _datasets(recipe: Recipe) -> list[tuple[str, DatasetConfig]]:
    """("data.train", section) and ("data.val", section) when there is one."""
    return [(f"data.{split}", section) for split in ("train", "val")
            if (section := getattr(recipe.data, split)) is not None]


def _check_stereo(recipe: Recipe, ctx: _Context) -> None:
    stereo_net = recipe.model.name == "StereoNAFNet"
    for key, section in _datasets(recipe):
        if section.stereo != stereo_net:
            ctx.fail(f"{key}.stereo", f"{key}.stereo is {section.stereo} but model.name is {recipe.model.name!r}: "
                                      f"stereo pairs (<id>_L / <id>_R) go with StereoNAFNet and only with it")
        if section.stereo and section.use_rot:
            ctx.fail(f"{key}.use_rot", f"{key}.use_rot with stereo pairs would turn the horizontal disparity "
                                       f"vertical; use flips only")


def _check_lens(recipe: Recipe, ctx: _Context) -> None:
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


def _check_cond(recipe: Recipe, ctx: _Context) -> None:
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


def _check_model_name(model: ModelConfig, ctx: _Context) -> None:
    models = _model_table()
    if model.name not in models:
        ctx.fail("model.name", f"model.name: unknown model {model.name!r}"
                               f"{_did_you_mean(model.name, models)}; allowed: "
                               f"{', '.join(sorted(models))}")


def _check_model_args(model: ModelConfig, ctx: _Context) -> None:
    params = list(inspect.signature(_model_table()[model.name].__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in model.args:
        if key not in names:
            ctx.fail(f"model.args.{key}",
                     f"unknown key 'model.args.{key}' for model {model.name}"
                     f"{_did_you_mean(key, names)}; allowed arguments: {', '.join(names)}")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name in names and p.name not in model.args:
            ctx.fail("model.args", f"model.args is missing {p.name!r}, a required argument of "
                                   f"{model.name}")


def _check_paths(recipe: Recipe, ctx: _Context) -> None:
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


# ---------------------------------------------------------------------------------------------
# public API

def recipe_from_dict(data: Mapping[str, Any], source: str = "<dict>", overrides: Iterable[str] = (),
                     *, check_paths: bool = True, check_model: bool = True) -> Recipe:
    """Validate a recipe given as a mapping (the parsed YAML) and build the dataclasses.

    ``check_paths=False`` skips the existence of data folders / the autoencoder run, and
    ``check_model=False`` skips the model table lookup and constructor-signature check, for tools
    that only need the schema.
    """
    if data is None:
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys, got "
                          f"{type(data).__name__}")
    raw, applied = apply_overrides(data, overrides, source)
    ctx = _Context(source, applied)
    recipe = _build(Recipe, raw, "", ctx)
    recipe.source = source
    if recipe.output_dir is None:
        recipe.output_dir = f"runs/{recipe.name}"
    if check_model:
        _check_model_name(recipe.model, ctx)
    _check_task(recipe, raw, ctx)
    _check_cond(recipe, ctx)
    _check_stereo(recipe, ctx)
    _check_lens(recipe, ctx)
    if check_model:
        _check_model_args(recipe.model, ctx)
    if check_paths:
        _check_paths(recipe, ctx)
    return recipe


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = (), *,
                check_paths: bool = True, check_model: bool = True) -> Recipe:
    """Read, override and validate a YAML recipe (see recipe_from_dict for the flags)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {source!r}") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {source!r}: {exc}") from None
    return recipe_from_dict(_parse_yaml(text, source), source, overrides,
                            check_paths=check_paths, check_model=check_model)


class _RecipeDumper(yaml.SafeDumper):
    """Sections in block style, lists inline ([1, 1, 1, 28]) as a person writes them."""


_RecipeDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def dump_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe (every key, defaults filled) as YAML; load_recipe reads it back."""
    text = yaml.dump(recipe.to_dict(), Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f"# resolved recipe of run {recipe.name!r}\n{text}", encoding="utf-8")
