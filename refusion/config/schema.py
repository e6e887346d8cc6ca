"""The recipe schema: one dataclass per section, each field with its type, default and constraint
(allowed choices or a range, kept in the field metadata so the schema lives in one place)."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Optional, Union

TASKS = ("sde", "regressor", "latent_autoencoder", "distill")
OPTIMIZERS = ("lion", "adamw", "adam")
LR_SCHEDULES = ("cosine", "constant")
SDE_TYPES = ("ir_sde", "denoising")   # IR-SDE (mean mu) | the denoising-sde DenoisingSDE (mean x0)
MIXED_PRECISION = ("no", "bf16", "fp16")
# tracker -> (the module it needs, the pip extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "refusion"), "wandb": ("wandb", "refusion[wandb]"),
            "mlflow": ("mlflow", "refusion[mlflow]")}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LOSSES = {
    "sde": ("l1", "l2"),
    "regressor": ("psnr", "l1", "charbonnier", "l1_fft"),
    "latent_autoencoder": ("l1",),
    "distill": ("l1", "l2"),          # the student's distance to the teacher's endpoint
}
# which networks each task can train (the task decides the forward signature the objective calls)
TASK_MODELS = {
    "sde": ("ConditionalNAFNet", "ConditionalUNet", "UnconditionalNAFNet", "UnconditionalUNet", "StereoNAFNet",
            "BokehNAFNet"),
    "regressor": ("NAFNet", "Baseline", "HINet", "NAFFTNet"),
    "latent_autoencoder": ("LatentUNet",),
    "distill": ("ConditionalNAFNet", "ConditionalUNet"),     # students of IR-SDE teachers (pixels or latents)
}
TASK_MODEL_KIND = {"sde": "a noise network", "regressor": "a regressor",
                   "latent_autoencoder": "an autoencoder", "distill": "an IR-SDE noise network (the teacher's)"}
# the teacher's deterministic solvers a student learns to copy
DISTILL_SOLVERS = ("mr_ode", "ode")


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
    schedule: str = _field("cosine")             # one of the scheduler class's SCHEDULES (config/checks.py)
    eps: Optional[float] = _field(None, check=OPEN_UNIT)     # None: the SDE's own (0.005 ir_sde, 0.04 denoising)
    sampler: Optional[str] = _field(None)
    prediction_type: str = _field("epsilon")
    eta: float = _field(1.0, check=NON_NEGATIVE)
    solver_order: int = _field(2, check=AT_LEAST_ONE)
    noise_level: Optional[float] = _field(None, check=POSITIVE)   # denoising: test noise sigma (0-255)
    default_inference_steps: Optional[int] = _field(None, check=AT_LEAST_ONE)   # a distilled student's K

    def scheduler_kwargs(self) -> dict[str, Any]:
        """The scheduler's (**kwargs); unset values leave the scheduler's defaults."""
        kwargs = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "type"}
        if self.type == "denoising":
            kwargs.pop("solver_order", None)     # the DenoisingSDE has no multistep solvers
        return kwargs

    def scheduler_class(self) -> type:
        """The scheduler class of ``type`` (imported here: the schema loads without torch)."""
        if self.type == "denoising":
            from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

            return DenoisingSDEScheduler
        from refusion.schedulers.ir_sde import IRSDEScheduler

        return IRSDEScheduler

    def build(self):
        """The scheduler this section describes."""
        return self.scheduler_class()(**self.scheduler_kwargs())


@dataclass(kw_only=True)
class LatentConfig:
    autoencoder: str


@dataclass(kw_only=True)
class DistillConfig:
    """A student that lands in ``student_steps`` network evaluations where the teacher's deterministic
    ``teacher_solver`` lands in ``teacher_steps``, from the same terminal state x_T = mu + lambda z."""
    teacher: str
    teacher_sha256: Optional[str] = None       # of the teacher's weights; checked when the run starts
    student_steps: int = _field(1, check=AT_LEAST_ONE)
    teacher_solver: str = _field("mr_ode", choices=DISTILL_SOLVERS)
    teacher_steps: int = _field(10, check=AT_LEAST_ONE)
    lpips_weight: float = _field(0.0, check=NON_NEGATIVE)   # + weight x LPIPS(student, teacher endpoint)
    gt_weight: float = _field(0.0, check=NON_NEGATIVE)      # + weight x L1(student, ground truth)


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
    # images reach the network in channels_last layout; off: no gain measured for a CPU training step
    # (docs/performance.md, "Training step"), the same loss curve
    channels_last: bool = False
    # torch.compile of the network's forward in place (keys unchanged): false, true or a mode
    compile: Union[bool, str] = _field(False)
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
    # where scalars (and validation images) go, through accelerate's log_with; [] logs nowhere
    trackers: list[str] = _field(["tensorboard"])
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
    distill: Optional[DistillConfig] = None  # task distill only
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


