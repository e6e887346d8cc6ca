"""ONE accelerate training loop for every task (sde, regressor, latent_autoencoder).

The task-specific parts are the objective and the validation restoration
(:mod:`refusion.training.objectives`); everything else lives here once: optimizer, learning-rate
schedule, gradient accumulation and clipping, EMA weights, mixed precision, seeding, logging,
validation, atomic checkpoints and exact resumption.

Resumption is exact: the data order and augmentations are a function of (seed, stream position)
(:mod:`refusion.training.data_stream`), the learning rate a function of the step
(:func:`refusion.training.optim.learning_rate`), and a checkpoint holds the weights, optimizer,
EMA, every process's RNG states and the stream position. Training N steps in one go and training
N/2, stopping and resuming to N give the same weights.
"""
from __future__ import annotations

import functools

import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from refusion.data.lens import LensMetadataError
from refusion.inference.allocator import tune_malloc_for
from refusion.training import objectives as objectives_module
from refusion.training import run_dir as rd
from refusion.training.data_stream import stream_loader
from refusion.training.optim import EMA, build_optimizer, learning_rate, set_learning_rate

EMA_FILE = "ema.safetensors"
# recipe sections that must not change when a run is resumed (the weights depend on them)
FROZEN_SECTIONS = ("task", "scheduler", "model", "latent")   # the SDE first: the deepest mismatch


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped before the bad update."""


@dataclass
class _Run:
    """Everything the loop needs, built once by :func:`train`."""
    recipe: object
    run_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module          # the network itself (unwrapped); shares parameters with `module`
    module: torch.nn.Module         # what is trained (prepared: DDP / autocast wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    autoencoder: torch.nn.Module | None
    ema: EMA | None
    teacher: object = None          # task distill: the teacher (refusion.inference.model.LoadedModel), frozen
    best_psnr: float = float("-inf")
    val_dataset: object = None      # built at the first validation, decoded once

    @property
    def inference_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model


def train(recipe, *, resume: bool = False, overwrite: bool = False, stop_at_step: int | None = None) -> Path:
    """Train a recipe (a :class:`refusion.config.Recipe` or a path to a YAML file); return the run dir.

    ``resume`` continues the newest checkpoint of the run directory at its step; ``overwrite``
    deletes an existing run directory first (a non-empty run directory without either is an
    error). ``stop_at_step`` ends this invocation after that step with a checkpoint (to split a
    long run into jobs, e.g. under a cluster time limit); ``--resume`` continues it.
    """
    from refusion.config import load_recipe

    if not hasattr(recipe, "task"):
        recipe = load_recipe(recipe)
    _reset_accelerate_between_runs()
    run_dir = Path(recipe.output_dir)
    tc = recipe.train
    _check_mixed_precision(recipe)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.grad_accum,
        log_with=list(recipe.logging.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    tune_malloc_for(accelerator.device)
    try:
        _open_run_dir(accelerator, run_dir, recipe, resume=resume, overwrite=overwrite)
        run = _build_run(recipe, run_dir, accelerator)
        start_step, position = _restore(run) if resume else (0, 0)
        if accelerator.is_main_process:
            _write_recipe(recipe, run_dir)
            if resume:
                rd.truncate_metrics(run_dir, start_step)
        if recipe.logging.trackers:
            accelerator.init_trackers(recipe.name)
        _loop(run, start_step, position, stop_at_step)
        accelerator.wait_for_everyone()
    finally:
        accelerator.end_training()
    return run_dir


# --- setup ----------------------------------------------------------------------------------


def _reset_accelerate_between_runs() -> None:
    """Let one Python process train several runs (e.g. autoencoder, then latent SDE).

    accelerate keeps process-wide singletons; outside a distributed launch they are reset so a new
    Accelerator can take other settings (mixed precision, accumulation).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _open_run_dir(accelerator: Accelerator, run_dir: Path, recipe, *, resume: bool, overwrite: bool) -> None:
    # every process checks (same answer everywhere) before the main process changes anything
    rd.check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rd.prepare_run_dir(run_dir, overwrite=overwrite)
    accelerator.wait_for_everyone()
    if resume:
        _check_same_config(run_dir, recipe)


def _write_recipe(recipe, run_dir: Path) -> None:
    """recipe.yml, replaced atomically (a resume compares against it)."""
    from refusion.config import dump_recipe

    tmp = run_dir / (rd.TMP_PREFIX + "recipe.yml")
    dump_recipe(recipe, tmp)
    os.replace(tmp, run_dir / "recipe.yml")


def _check_same_config(run_dir: Path, recipe) -> None:
    import yaml

    saved_path = run_dir / "recipe.yml"
    if not saved_path.is_file():
        raise rd.RunDirError(f"--resume: {str(saved_path)!r} is missing; cannot check that the recipe "
                             "matches the run")
    saved = yaml.safe_load(saved_path.read_text())
    current = recipe.to_dict()
    for key in FROZEN_SECTIONS:
        if json.dumps(saved.get(key), sort_keys=True) != json.dumps(current.get(key), sort_keys=True):
            raise rd.CheckpointError(
                f"--resume: recipe key {key!r} differs from the run's {str(saved_path)!r}: "
                f"{saved.get(key)!r} (run) vs {current.get(key)!r} (recipe); the checkpoint belongs to "
                "another configuration (use --overwrite or another output_dir)")


def _build_run(recipe, run_dir: Path, accelerator: Accelerator) -> _Run:
    from refusion.models import build_model

    set_seed(recipe.seed)  # same initial weights on every process
    model = build_model(recipe.model.name, **recipe.model.args)
    scheduler = None
    if recipe.task in ("sde", "distill"):
        scheduler = recipe.scheduler.build()
    autoencoder = None
    if recipe.latent is not None:
        autoencoder = rd.load_autoencoder_run(Path(recipe.latent.autoencoder)).to(accelerator.device)
    teacher = None
    if recipe.task == "distill":
        teacher = _student_of_teacher(recipe, model, autoencoder, accelerator.device)
    ema = EMA(model, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None
    _compile(model, recipe.train.compile)
    module = objectives_module.training_module(recipe.task, model)
    optimizer = build_optimizer(module.parameters(), recipe.optimizer)
    module, optimizer = accelerator.prepare(module, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    set_seed(recipe.seed, device_specific=True)  # noise and timesteps differ between processes
    return _Run(recipe, run_dir, accelerator, model, module, optimizer, scheduler, autoencoder, ema, teacher)


def _compile(model: torch.nn.Module, mode) -> None:
    """torch.compile of the network's forward, in place: its state-dict keys, what checkpoints and
    model/ hold, stay the network's own (no ``_orig_mod.`` prefix); the EMA copy stays eager."""
    if mode is False:
        return
    model.compile(**({} if mode is True else {"mode": mode}))


def _to_device(batch: dict, device, channels_last: bool) -> dict:
    """The batch on the device; images (4-D floating tensors) in channels_last layout when asked: the
    network's convolutions then run their NHWC kernels (weights keep their layout, checkpoints too)."""
    def move(v: torch.Tensor) -> torch.Tensor:
        if channels_last and v.dim() == 4 and v.is_floating_point():
            return v.to(device, memory_format=torch.channels_last)
        return v.to(device)

    return {k: move(v) for k, v in batch.items()}


def _student_of_teacher(recipe, student: torch.nn.Module, autoencoder, device):
    """Load and check the teacher of a distill run (its SDE, its autoencoder) and start the student from its
    weights."""
    from refusion.training import distillation

    teacher = distillation.load_teacher(recipe.distill, device)
    distillation.check_teacher_matches(recipe.distill, recipe.scheduler, teacher, autoencoder)
    try:
        student.load_state_dict(teacher.network.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"model: the student ({recipe.model.name} {recipe.model.args}) is not the teacher's "
                         f"network {type(teacher.network).__name__}: {exc}") from None
    return teacher


def _restore(run: _Run) -> tuple[int, int]:
    """Load the newest checkpoint; returns (step, stream position)."""
    ckpt = rd.latest_checkpoint(run.run_dir)
    meta = rd.verify_checkpoint(ckpt)
    acc = run.accelerator
    if meta.get("num_processes") != acc.num_processes:
        acc.print(f"warning: {ckpt} was written by {meta.get('num_processes')} process(es), this run has "
                  f"{acc.num_processes}: training continues but not bit-for-bit")
    _check_checkpoint_weights(ckpt, acc.unwrap_model(run.module))
    try:
        acc.load_state(str(ckpt))
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise rd.CheckpointError(f"refusing to load {str(_unpicklable_file(ckpt))!r}: it holds more than tensors "
                                 "and plain containers (a pickle that could run code); torch.load(weights_only=True) "
                                 f"said: {(lines or str(exc).splitlines())[0]}") from exc
    if run.ema is not None:
        ema_path = ckpt / EMA_FILE
        if not ema_path.is_file():
            raise rd.CheckpointError(f"{str(ckpt)!r} has no {EMA_FILE} but train.ema_decay > 0")
        run.ema.load_state_dict(load_file(str(ema_path), device=str(acc.device)))
    rd.load_rng_state(ckpt, acc.process_index)
    best = meta.get("best_psnr")
    run.best_psnr = float("-inf") if best is None else float(best)
    acc.print(f"resumed {run.run_dir} from {ckpt.name} (step {meta['step']})")
    return int(meta["step"]), int(meta["samples_seen"])


def _check_checkpoint_weights(ckpt: Path, module: torch.nn.Module) -> None:
    """The checkpoint's model.safetensors must hold this run's tensors (names and shapes).

    Read from the safetensors header only; a checkpoint directory copied from another run passes
    its own checksums, so this is what finds it. Weights are never read from a pickle.
    """
    from safetensors import safe_open

    path = ckpt / "model.safetensors"
    if not path.is_file():
        raise rd.CheckpointError(f"checkpoint {str(ckpt)!r} has no model.safetensors (the weights are only read "
                                 "from safetensors, never from a pickle)")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    with safe_open(str(path), framework="pt") as handle:
        found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(found))]
    problems += [f"unexpected {k}" for k in sorted(set(found) - set(expected))]
    problems += [f"{k}: shape {found[k]} in the file, {expected[k]} in the model"
                 for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise rd.CheckpointError(f"checkpoint file {str(path)!r} does not match the model of this run "
                                 f"({type(module).__name__}): {'; '.join(problems[:5])}{more}; it belongs to "
                                 "another architecture or configuration")


def _unpicklable_file(ckpt: Path) -> Path:
    """The first pickle of a checkpoint that torch.load(weights_only=True) refuses (error path only)."""
    for path in sorted(ckpt.glob("*.bin")):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            return path
        except Exception:
            continue
    return ckpt


def _train_loader(run: _Run, position: int):
    from refusion.data.paired import PairedImageDataset

    cfg, acc = run.recipe.data.train, run.accelerator
    dataset = PairedImageDataset(cfg.gt, cfg.lq, gt_size=cfg.gt_size, use_flip=cfg.use_flip,
                                 use_rot=cfg.use_rot, cond=cfg.cond, max_images=cfg.max_images, stereo=cfg.stereo,
                                 lens=cfg.lens, lens_swap=cfg.lens_swap)
    return stream_loader(dataset, seed=run.recipe.seed, start=position, batch_size=run.recipe.train.batch_size,
                         rank=acc.process_index, world_size=acc.num_processes,
                         num_workers=run.recipe.data.num_workers)


# --- the loop -------------------------------------------------------------------------------


def _loop(run: _Run, step: int, position: int, stop_at_step: int | None) -> None:
    recipe, acc = run.recipe, run.accelerator
    tc, val_cfg = recipe.train, recipe.validation
    total = tc.total_iters
    last = min(total, stop_at_step) if stop_at_step is not None else total
    objective = objectives_module.OBJECTIVES[recipe.task]
    if run.teacher is not None:
        objective = functools.partial(objective, teacher=run.teacher, distill=recipe.distill)
    global_batch = tc.batch_size * acc.num_processes
    if step >= last:
        acc.print(f"nothing to do: the run is at step {step}, target step {last}")
        _save_run_weights(run)
        return
    loader = _train_loader(run, position)
    progress = tqdm(total=total, initial=step, desc=recipe.name, disable=not acc.is_local_main_process)
    run.module.train()
    batches = iter(loader)
    pending: dict[str, list[float]] = {}  # logs of the micro-steps of the current optimizer step
    try:
        while step < last:
            batch = next(batches)
            names = batch.pop("name")
            batch = _to_device(batch, acc.device, tc.channels_last)
            with acc.accumulate(run.module):
                loss, logs = objective(run.module, batch, run.scheduler, tc, autoencoder=run.autoencoder)
                _stop_if_not_finite(acc, loss, step + 1, names, run.run_dir)
                acc.backward(loss)
                if acc.sync_gradients and tc.clip_grad_norm:
                    acc.clip_grad_norm_(run.module.parameters(), tc.clip_grad_norm)
                lr = learning_rate(step, base_lr=recipe.optimizer.lr, total_steps=total,
                                   schedule=recipe.lr_schedule.name, warmup_steps=recipe.lr_schedule.warmup_iters,
                                   eta_min=recipe.lr_schedule.eta_min)
                set_learning_rate(run.optimizer, lr)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            position += global_batch
            for key, value in logs.items():
                pending.setdefault(key, []).append(value)
            if not acc.sync_gradients:
                continue
            step += 1
            if run.ema is not None and not acc.optimizer_step_was_skipped:
                run.ema.update(run.model, step)
            progress.update(1)
            if step % tc.log_every == 0 or step == 1:
                means = _mean_logs(acc, pending)
                acc.log({**{f"train/{k}": v for k, v in means.items()}, "train/lr": lr}, step=step)
                progress.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{lr:.3g}")
            pending.clear()
            if recipe.data.val is not None and ((val_cfg.every and step % val_cfg.every == 0) or step == total):
                _validate(run, step)
            if step % tc.checkpoint_every == 0 or step == last:
                _save_checkpoint(run, step, position)
    finally:
        progress.close()


def _mean_logs(acc: Accelerator, pending: dict[str, list[float]]) -> dict[str, float]:
    """Mean of each logged value over the step's micro-steps and over every process."""
    keys = sorted(pending)
    local = torch.tensor([sum(pending[k]) / len(pending[k]) for k in keys], dtype=torch.float64,
                         device=acc.device)
    values = acc.reduce(local, reduction="mean") if acc.num_processes > 1 else local
    return dict(zip(keys, values.tolist()))


def _stop_if_not_finite(acc: Accelerator, loss: torch.Tensor, step: int, names, run_dir: Path) -> None:
    """Stop every process before the update when any process sees a NaN/Inf loss."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=acc.device)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    if bad.item() == 0:
        return
    local = list(names) if not torch.isfinite(loss.detach()).all() else []
    offenders = gather_object(local) if acc.num_processes > 1 else local
    newest = rd.list_checkpoints(run_dir)
    kept = f"the last good checkpoint {str(newest[-1])!r} is intact" if newest else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"non-finite loss ({loss.item()}) at step {step}; batch files: {', '.join(map(str, offenders))}. "
        f"Training stopped before the update; {kept} (resume with --resume after fixing the data or "
        "lowering optimizer.lr).")


# --- validation -----------------------------------------------------------------------------


def _validation_scheduler(run: _Run):
    if run.scheduler is None:
        return None
    sampler = run.recipe.validation.sampler
    extra = {"sampler": sampler} if sampler is not None else {}
    return type(run.scheduler).from_config(run.scheduler.config, **extra)


@torch.no_grad()
def _validate(run: _Run, step: int) -> dict:
    """Restore whole validation images, gather the metrics of every process, log, keep best/."""
    from refusion.data.paired import PairedImageDataset
    from refusion.evaluation.metrics import MetricSet
    from refusion.data.inputs import split_views
    from refusion.training.objectives import restore_batch

    recipe, acc = run.recipe, run.accelerator
    cfg, val_cfg = recipe.data.val, recipe.validation
    if run.val_dataset is None:
        limits = [n for n in (cfg.max_images, val_cfg.max_images) if n is not None]
        run.val_dataset = PairedImageDataset(cfg.gt, cfg.lq, cond=cfg.cond, stereo=cfg.stereo, lens=cfg.lens,
                                             max_images=min(limits) if limits else None)
    dataset = run.val_dataset
    loader = prepare_data_loader(torch.utils.data.DataLoader(dataset, batch_size=1), acc.device,
                                 num_processes=acc.num_processes, process_index=acc.process_index,
                                 put_on_device=True)
    metric_set = MetricSet(lpips_net="alex", device=acc.device)
    scheduler = _validation_scheduler(run)
    model = run.inference_model
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=acc.device).manual_seed(recipe.seed + acc.process_index)
    rows, first = [], None
    for batch in loader:
        names = batch.pop("name")
        restored = restore_batch(recipe.task, model, batch, scheduler, generator=generator,
                                 num_inference_steps=val_cfg.num_inference_steps,
                                 autoencoder=run.autoencoder).float().clamp(0, 1)
        gt = batch["gt"].float()
        if cfg.stereo:   # both views scored, each as an image of its own
            restored, gt = split_views(restored), split_views(gt)
        values = [[r["psnr"], r["ssim"], float("nan") if r.get("lpips") is None else r["lpips"]]
                  for r in metric_set.evaluate_batch(restored, gt)]
        # inside the loop: gather_for_metrics drops the samples repeated to even out the last batch
        rows.append(acc.gather_for_metrics(torch.tensor(values, dtype=torch.float64, device=acc.device)))
        if first is None:
            first = (batch["lq"][0][:3], restored[0], gt[0], names[0])
    model.train(was_training)
    values = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)
    means = values.mean(dim=0).tolist() if len(values) else [float("nan")] * 3
    metrics = {"psnr": means[0], "ssim": means[1]}
    if means[2] == means[2]:  # not NaN: LPIPS weights available
        metrics["lpips"] = means[2]
    acc.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
    if acc.is_main_process:
        rd.append_metrics(run.run_dir, {"step": step, "images": int(len(values)), **metrics})
        _log_images(run, step, first)
        if metrics["psnr"] > run.best_psnr:
            run.best_psnr = metrics["psnr"]
            rd.save_pretrained_atomic(run.inference_model, run.run_dir / "best")
    run.best_psnr = max(run.best_psnr, metrics["psnr"])
    acc.print(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def _log_images(run: _Run, step: int, first) -> None:
    """The first validation image (lq | restored | gt) to every tracker, in the form each one takes."""
    from refusion.evaluation.metrics import to_uint8_image

    every, trackers = run.recipe.logging.image_every, run.recipe.logging.trackers
    if first is None or not trackers or not every or step % every:
        return
    lq, restored, gt, name = first
    if lq.shape != gt.shape:  # latent or scaled inputs: show restored and GT only
        row = torch.cat([restored, gt], dim=-1)
    else:
        row = torch.cat([lq.float().clamp(0, 1), restored, gt.float()], dim=-1)
    title, chw = f"val/{name} (lq | restored | gt)", row.cpu().clamp(0, 1)
    hwc = to_uint8_image(chw, input_order="CHW")   # wandb takes arrays as 0..255 (floats in [0, 1] come out black)
    for tracker in trackers:
        writer = run.accelerator.get_tracker(tracker, unwrap=True)
        if tracker == "tensorboard":
            writer.add_image(title, chw, step)
        elif tracker == "wandb":
            import wandb

            writer.log({title: wandb.Image(hwc)}, step=step)
        elif tracker == "mlflow":
            # accelerate's mlflow tracker is the ActiveRun, which has no log_image: the client logs to its run.
            # An image key takes only letters, digits, spaces and _-./, not the title's brackets and bars
            import mlflow

            key = re.sub(r"[^A-Za-z0-9_\-./]+", "_", f"val/{name} lq restored gt")
            mlflow.MlflowClient().log_image(writer.info.run_id, hwc, key=key, step=step)


# --- saving ---------------------------------------------------------------------------------


def _save_checkpoint(run: _Run, step: int, position: int) -> None:
    """accelerate state + EMA + RNG states in checkpoints/.tmp-step_X, then renamed to step_X."""
    acc = run.accelerator
    root = run.run_dir / rd.CHECKPOINTS
    final = root / rd.step_dir_name(step)
    tmp = root / (rd.TMP_PREFIX + final.name)
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    rd.save_rng_state(tmp, acc.process_index)
    if acc.is_main_process and run.ema is not None:
        save_file(run.ema.state_dict(), str(tmp / EMA_FILE))
    acc.wait_for_everyone()
    if acc.is_main_process:
        rd.write_meta(tmp, {"step": step, "samples_seen": position, "num_processes": acc.num_processes,
                            "best_psnr": run.best_psnr if run.best_psnr > float("-inf") else None})
        # model/ goes first: a kill between the two publishes then leaves model/ one checkpoint
        # ahead (resume redoes those steps), never a run with checkpoints but no model/.
        _save_run_weights(run)
        rd.publish_dir(tmp, final)
        rd.prune_checkpoints(run.run_dir, run.recipe.train.keep_checkpoints)
    acc.wait_for_everyone()


def _save_run_weights(run: _Run) -> None:
    """model/ (EMA weights when on), scheduler/, autoencoder/: what inference loads.

    Each folder is published atomically with its checksums.json (run_dir.save_pretrained_atomic),
    so a bit flip in the weights is found at load time as it is for checkpoints.
    """
    if not run.accelerator.is_main_process:
        return
    rd.save_pretrained_atomic(run.inference_model, run.run_dir / "model")
    if run.teacher is not None:
        from refusion.training.distillation import weights_sha256, write_student_card

        # a recorded digest was checked against the frozen teacher when the run started: no need to hash it again
        digest = run.recipe.distill.teacher_sha256 or weights_sha256(run.teacher.network)
        write_student_card(run.run_dir, run.recipe, digest)
    if run.scheduler is not None:
        rd.save_pretrained_atomic(run.scheduler, run.run_dir / "scheduler")
    if run.autoencoder is not None:
        rd.save_pretrained_atomic(run.autoencoder, run.run_dir / "autoencoder")


class MixedPrecisionError(ValueError):
    """The recipe asks for a mixed precision this machine computes slowly or not at all."""


def _check_mixed_precision(recipe) -> None:
    """bf16 autocast on a CPU that emulates bfloat16 is several times slower than float32: refuse
    before step 1 (the recipe asked for it explicitly, so changing it silently would change numerics)."""
    from refusion.inference.capability import bf16_reason, native_bf16

    if recipe.train.mixed_precision == "bf16" and not torch.cuda.is_available() and not native_bf16("cpu"):
        raise MixedPrecisionError(
            f"{recipe.source}: train.mixed_precision is 'bf16' but {bf16_reason('cpu')} (a training step "
            f"under bf16 autocast measured 0.98 s against 0.15 s in float32 on such a CPU); set "
            f"train.mixed_precision: 'no' (or --set train.mixed_precision=no)")


def main_guard(fn) -> int:
    """Run ``fn()``; print known training errors as one clear line and return an exit status."""
    try:
        fn()
    except (rd.RunDirError, rd.CheckpointError, NonFiniteLossError, MixedPrecisionError, LensMetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
