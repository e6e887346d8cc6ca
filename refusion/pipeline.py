"""Inference: RefusionPipeline (a diffusers DiffusionPipeline), load_pipeline, sample and restore.

- ``RefusionPipeline(unet, scheduler, autoencoder=None)`` runs the reverse IR-SDE from the noisy
  degraded image x_T = mu + lambda*z to the restored image, optionally tile by tile and
  optionally in the latent space of a LatentUNet (for very large inputs).
- ``load_pipeline(path)`` reads a training run directory or a directory written by
  ``RefusionPipeline.save_pretrained``.
- ``sample(lq, model=...)`` / ``restore(lq, model=...)`` are the one-line forms for SDE runs and
  for deterministic regressors (NAFNet, Baseline, HINet, NAFFT-Net); both take a tensor, numpy
  array or PIL image and return the same kind.

Integrity: a folder written by the training engine (model/, best/, scheduler/, autoencoder/) or
by ``RefusionPipeline.save_pretrained`` carries ``checksums.json`` (sha256 of every file); the
loaders verify it when present and name a corrupt file. Sampling raises FloatingPointError when
the network produces NaN/Inf instead of returning an arbitrary clamped image (see
:func:`sde_sample` for how the check avoids a host synchronisation per step).

Tiling and the SDE: the initial state and every step's noise are drawn ONCE for the whole image
(the scheduler draws at full size); only the noise network runs tile by tile, and the blended
noise prediction feeds one full-size scheduler step. All tiles therefore share one trajectory.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from refusion.checksums import verify_weights_dir, write_weights_manifest
from refusion.inputs import from_batch, tensor_to_numpy, tensor_to_pil, to_batch
from refusion.schedulers.ir_sde import IRSDEScheduler
from refusion.tiling import tiled_apply, validate_tiling

__all__ = ["RefusionPipeline", "RefusionPipelineOutput", "load_pipeline", "sample", "restore", "sde_sample",
           "LATENT_AUTO_PIXELS", "LATENT_TILE_DEFAULT"]

# latent=None picks the autoencoder path above this many pixels per image (about 4 megapixels)
LATENT_AUTO_PIXELS = 2048 * 2048
# pixel tile of the autoencoder when the latent path runs on an image larger than LATENT_AUTO_PIXELS
LATENT_TILE_DEFAULT = 1024
# context pixels around each autoencoder tile: covers the local encoder + decoder receptive field
LATENT_AE_OVERLAP = 128

Generator = torch.Generator | Sequence[torch.Generator] | None


# networks that map an image to its restoration in one pass (refusion.restore)
REGRESSOR_NAMES = ("NAFNet", "Baseline", "HINet", "NAFFTNet")


def read_run_task(run_dir: Path) -> str:
    """The ``task:`` of a training run directory's recipe.yml (sde | regressor | latent_autoencoder)."""
    recipe_path = run_dir / "recipe.yml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{recipe_path} not found: {run_dir} is neither a training run directory "
                                f"(recipe.yml, model/) nor a saved pipeline (model_index.json)")
    try:
        with open(recipe_path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)            # safe loader: object tags are refused
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{recipe_path}: cannot read the recipe ({type(exc).__name__}: {exc})") from exc
    task = recipe.get("task") if isinstance(recipe, dict) else None
    if task not in ("sde", "regressor", "latent_autoencoder"):
        raise ValueError(f"{recipe_path}: task must be sde, regressor or latent_autoencoder, got {task!r}")
    return task


WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def load_network(model_dir: Path):
    """A network saved with save_pretrained: config.json "_class_name" picks the class in MODELS.

    Weights are read from safetensors only (a pickled .bin/.pt beside them is never opened);
    unreadable, truncated or mismatched weights and non-finite values are a ValueError naming the
    file. A checksums.json in the folder is verified first (a flipped bit raises
    refusion.errors.CorruptWeightsError, a ValueError naming the file).
    """
    from refusion.models import MODELS

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: expected a network saved with save_pretrained")
    verify_weights_dir(model_dir)
    try:
        with open(config_path, encoding="utf-8") as f:
            class_name = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{config_path}: not a readable network config ({exc})") from exc
    if class_name not in MODELS:
        raise ValueError(f"{config_path}: _class_name {class_name!r} is not a refusion network; "
                         f"known: {sorted(MODELS)}")
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file() and not weights.with_name(WEIGHTS_NAME + ".index.json").is_file():
        raise FileNotFoundError(f"{weights} is missing: weights are read from safetensors only "
                                f"(pickled .bin/.pt files are never loaded)")
    try:
        net = MODELS[class_name].from_pretrained(str(model_dir), use_safetensors=True)
    except Exception as exc:  # truncated file, wrong shapes for the config, ...: name the files
        raise ValueError(f"cannot load the {class_name} network from {weights} with {config_path}: "
                         f"{type(exc).__name__}: {exc}") from exc
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{weights}: tensor {name!r} holds NaN or Inf values (corrupt weights)")
    return _own_memory(net.eval())


def _own_memory(module: torch.nn.Module) -> torch.nn.Module:
    """Copy loaded weights out of the file mapping into freshly allocated (aligned) memory.

    safetensors tensors can sit at odd offsets of a memory-mapped file; CPU kernels then take
    other vectorisation paths and round differently, so a loaded network would not reproduce the
    saved one bit for bit. The copy also detaches the weights from the file on disk.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
    return module


def _weights_dir(run_dir: Path, weights: str) -> Path:
    """model/ (final, EMA when on) or best/ (best validation PSNR) of a run directory."""
    if weights not in ("model", "best"):
        raise ValueError(f"weights must be 'model' (final weights) or 'best' (best validation PSNR), got {weights!r}")
    return run_dir / weights


def load_regressor(path: str | Path, *, weights: str = "model"):
    """A regressor from a run directory (task: regressor) or a directory holding config.json + weights.

    ``weights``: "model" (the run's final weights) or "best" (best validation PSNR) of a run.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        net = load_network(path)
    elif not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} is not a directory; pass a regressor run directory")
    else:
        task = read_run_task(path)
        if task != "regressor":
            raise ValueError(f"{path} is a {task!r} run; refusion.restore needs a regressor run "
                             f"(use refusion.sample for sde runs)")
        net = load_network(_weights_dir(path, weights))
    if type(net).__name__ not in REGRESSOR_NAMES:
        raise ValueError(f"{path} holds a {type(net).__name__}, not a regressor ({', '.join(REGRESSOR_NAMES)})")
    return net


def _config(net) -> dict:
    config = getattr(net, "config", None)
    return dict(config) if config is not None else {}


def spatial_multiple(net) -> int:
    """The side multiple a network pads to (2^levels), so tiles need no padding; 8 when unknown."""
    config = _config(net)
    if "enc_blk_nums" in config:                    # NAFNet family, ConditionalNAFNet
        return 2 ** len(config["enc_blk_nums"])
    if "nf" in config and "depth" in config:        # ConditionalUNet
        return 2 ** config["depth"]
    if "wf" in config and "depth" in config:        # HINet
        return 2 ** (config["depth"] - 1)
    return 8


def network_channels(net) -> int | None:
    """Image channels a network takes (None when it does not say)."""
    config = _config(net)
    for key in ("img_channel", "in_nc", "in_chn"):
        if key in config:
            return int(config[key])
    return None


@dataclass
class RefusionPipelineOutput(BaseOutput):
    """``images``: list of PIL images, numpy (B, H, W, C) float32, or torch (B, C, H, W), in [0, 1]."""

    images: Any


def half_precision(device: torch.device, enabled: bool):
    """Autocast for the network calls: bfloat16 on CPU, float16 on CUDA; the SDE state stays float32."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_generator(generator: Generator, batch: int) -> None:
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} generators but the batch has {batch} "
                         f"images; pass one generator or one per image")


def sde_sample(
    noise_fn: Callable[..., torch.Tensor],
    scheduler: IRSDEScheduler,
    mu: torch.Tensor,
    *,
    num_inference_steps: int,
    generator: Generator = None,
    tile_size: int | None = None,
    tile_overlap: int = 32,
    multiple: int = 8,
    cond: torch.Tensor | None = None,
    progress: Callable[[Sequence[int]], Any] = lambda steps: steps,
    half: bool = False,
) -> torch.Tensor:
    """Run the reverse SDE from x_T = mu + lambda*z; returns x_0 (not clamped).

    ``noise_fn(x_t, mu, t)`` (plus ``cond=`` when given) predicts the noise, ``t`` a (B,) int64
    tensor. ``scheduler`` is used as is (``set_timesteps`` is called on it). With ``tile_size``
    the network runs tile-wise on the full-size state; the noise is drawn at full size.

    A network output with NaN/Inf raises FloatingPointError naming the first such step. The check
    never stops the device mid-loop: each step folds ``isfinite(noise).all()`` into a device-side
    "first bad step" index (one elementwise pass, no host sync) and the host reads it once, with
    the finiteness of the final state, after the loop. The cost is the wasted remaining steps when
    the output goes bad early, against a synchronisation per step otherwise.
    """
    batch = mu.shape[0]
    _check_generator(generator, batch)
    scheduler.set_timesteps(num_inference_steps)          # timesteps stay on the host: Python ints below
    steps = [int(t) for t in scheduler.timesteps]
    x = scheduler.initial_sample(mu, generator=generator)
    inputs = [mu] if cond is None else [mu, cond]
    first_bad = torch.full((), -1, dtype=torch.long, device=mu.device)   # index of the first NaN/Inf output
    for index, t in enumerate(progress(steps)):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=mu.device)

        def predict(x_t, mu_t, cond_t=None):
            with half_precision(mu.device, half):
                out = noise_fn(x_t, mu_t, t_batch) if cond_t is None else noise_fn(x_t, mu_t, t_batch, cond=cond_t)
            return out.float()

        if tile_size:
            noise_pred = tiled_apply(predict, [x, *inputs], tile_size, tile_overlap, multiple)
        else:
            noise_pred = predict(x, *inputs)
        bad = ~torch.isfinite(noise_pred).all()
        first_bad = torch.where(bad & (first_bad < 0), index, first_bad)
        x = scheduler.step(noise_pred, t, x, mu=mu, generator=generator).prev_sample
    bad_index = int(first_bad)                                           # the one host sync
    if bad_index >= 0:
        raise FloatingPointError(
            f"the noise network returned NaN or Inf at sampling step {bad_index + 1} of {len(steps)} "
            f"(timestep {steps[bad_index]}); {nonfinite_hint(half)}")
    check_finite(x, "the sampled image (final SDE state)", half)
    return x


def nonfinite_hint(half: bool) -> str:
    """The likely causes of a NaN/Inf network output, for the error message."""
    if half:
        return ("with half precision the likely cause is a float16/bfloat16 overflow: run without half=True "
                "(--half); otherwise the weights may be corrupt")
    return ("the weights are likely corrupt (or were damaged in memory); if the network ran in float16 "
            "elsewhere, run it in float32 (without --half)")


def check_finite(tensor: torch.Tensor, what: str, half: bool) -> None:
    """FloatingPointError when ``tensor`` holds NaN/Inf (one reduction, one host sync)."""
    if not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{what} holds NaN or Inf values; {nonfinite_hint(half)}")


def _format_output(images: torch.Tensor, output_type: str):
    if output_type == "pt":
        return images
    if output_type == "np":
        return tensor_to_numpy(images)
    if output_type == "pil":
        return tensor_to_pil(images)
    raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


class RefusionPipeline(DiffusionPipeline):
    """Reverse IR-SDE restoration: ``pipe(lq).images``.

    Components: ``unet`` the noise network ``unet(x_t, mu, t, cond=None)`` (ConditionalNAFNet or
    ConditionalUNet), ``scheduler`` an IRSDEScheduler, ``autoencoder`` an optional LatentUNet
    (the noise network then works on its latents).
    """

    _optional_components = ["autoencoder"]
    model_cpu_offload_seq = "autoencoder->unet"

    def __init__(self, unet, scheduler: IRSDEScheduler, autoencoder=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, autoencoder=autoencoder)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' save_pretrained, then checksums.json (sha256 of every file) for load_pipeline."""

        super().save_pretrained(save_directory, **kwargs)
        write_weights_manifest(Path(save_directory))

    def _use_latent(self, latent: bool | None, height: int, width: int, channels: int) -> bool:
        net_ch = network_channels(self.unet)
        if self.autoencoder is None:
            if latent:
                raise ValueError("latent=True needs a pipeline with an autoencoder (a latent SDE run); "
                                 "this pipeline has none")
            return False
        latent_ch = self.autoencoder.config.embed_dim
        only_latent = net_ch is not None and net_ch != channels
        if latent is False and only_latent:
            raise ValueError(f"latent=False: the noise network takes {net_ch}-channel latents "
                             f"(autoencoder embed_dim={latent_ch}), it cannot run on {channels}-channel pixels")
        if latent is None:
            return only_latent or height * width > LATENT_AUTO_PIXELS
        return bool(latent)

    def __call__(
        self,
        image: Any,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        generator: Generator = None,
        output_type: str = "pil",
        tile_size: int | None = None,
        tile_overlap: int = 32,
        latent: bool | None = None,
        cond: torch.Tensor | None = None,
        progress: bool = True,
        half: bool = False,
        return_dict: bool = True,
    ):
        """Restore ``image`` (tensor (B,C,H,W)/(C,H,W) in [0,1], numpy HWC, PIL image or list of them).

        ``num_inference_steps`` defaults to the scheduler's ``num_train_timesteps``; ``sampler`` and
        ``eta`` override the scheduler's config for this call only. ``generator``: one, or one per
        image (image i then does not depend on the rest of the batch). ``tile_size``: run the
        network on overlapping tiles (shared full-size noise). ``latent``: None = automatic (the
        autoencoder path when the network needs latents or the image exceeds LATENT_AUTO_PIXELS),
        True/False force it. Inputs with NaN/Inf are refused; values outside [0, 1] are clamped
        with a warning. The output is clamped to [0, 1].
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        with torch.inference_mode():
            restored = self._restore(image, num_inference_steps, sampler, eta, generator, tile_size, tile_overlap,
                                     latent, cond, progress, half)
        # clamp and copy outside inference mode: callers get an ordinary tensor they may edit in place
        images = _format_output(restored.clamp(0.0, 1.0), output_type)
        return RefusionPipelineOutput(images=images) if return_dict else (images,)

    def _restore(self, image, num_inference_steps, sampler, eta, generator, tile_size, tile_overlap, latent, cond,
                 progress, half) -> torch.Tensor:
        lq, _ = to_batch(image)
        device = self.device
        lq = lq.to(device)
        batch, channels, height, width = lq.shape
        if cond is not None:
            cond = cond.to(device=device, dtype=lq.dtype)
            if cond.dim() == 3:
                cond = cond[None]
            if cond.shape[0] != batch or cond.shape[-2:] != lq.shape[-2:]:
                raise ValueError(f"cond must be (B, C, H, W) matching the image {tuple(lq.shape)}, "
                                 f"got {tuple(cond.shape)}")
        overrides = {k: v for k, v in (("sampler", sampler), ("eta", eta)) if v is not None}
        scheduler = IRSDEScheduler.from_config(self.scheduler.config, **overrides)  # never mutate ours
        steps = num_inference_steps or scheduler.config.num_train_timesteps
        bar = self.progress_bar if progress else (lambda steps: steps)
        use_latent = self._use_latent(latent, height, width, channels)
        if tile_size is not None:
            multiple = self.autoencoder.downscale if use_latent else spatial_multiple(self.unet)
            validate_tiling(tile_size, tile_overlap, multiple)
        if not use_latent:
            if network_channels(self.unet) not in (None, channels):
                raise ValueError(f"the noise network takes {network_channels(self.unet)}-channel images, "
                                 f"got an image with {channels} channels")
            return sde_sample(self.unet, scheduler, lq, num_inference_steps=steps, generator=generator,
                              tile_size=tile_size, tile_overlap=tile_overlap, multiple=spatial_multiple(self.unet),
                              cond=cond, progress=bar, half=half)
        return self._latent_sample(lq, scheduler, steps, generator, tile_size, tile_overlap, cond, bar, half)

    def _latent_sample(self, lq, scheduler, steps, generator, tile_size, tile_overlap, cond, bar, half):
        """Encode LQ (tiled), run the SDE on latents, decode with the LQ image's skips (tiled).

        ``tile_size``/``tile_overlap`` are in image pixels: the autoencoder runs on tiles of
        ``tile_size`` with at least LATENT_AE_OVERLAP pixels of context, the noise network on
        latent tiles of ``tile_size / downscale``. Without ``tile_size`` an image above
        LATENT_AUTO_PIXELS still gets LATENT_TILE_DEFAULT autoencoder tiles (never the whole
        full-resolution skips) and the noise network sees the whole latent.
        """
        ae = self.autoencoder
        factor = ae.downscale
        height, width = lq.shape[-2:]
        ae_tile = tile_size or (LATENT_TILE_DEFAULT if height * width > LATENT_AUTO_PIXELS else None)
        if ae_tile:
            ae_tile = max(factor, ae_tile // factor * factor)
            ae_overlap = -(-max(tile_overlap, LATENT_AE_OVERLAP) // factor) * factor
        with half_precision(lq.device, half):
            if ae_tile:
                mu, skips = ae.encode_tiled(lq, tile=ae_tile, overlap=ae_overlap, return_skips=False)
            else:
                mu, skips = ae.encode(lq)
        mu = mu.float()
        if cond is not None:
            cond = torch.nn.functional.interpolate(cond, size=mu.shape[-2:], mode="area")
        multiple = spatial_multiple(self.unet)
        latent_tile = latent_overlap = None
        if tile_size is not None:
            latent_tile = max(multiple, tile_size // factor // multiple * multiple)
            latent_overlap = min(max(tile_overlap // factor, 4), latent_tile - 1)
        latent_x0 = sde_sample(self.unet, scheduler, mu, num_inference_steps=steps, generator=generator,
                               tile_size=latent_tile, tile_overlap=latent_overlap or 0, multiple=multiple,
                               cond=cond, progress=bar, half=half)
        with half_precision(lq.device, half):
            if ae_tile:
                out = ae.decode_from_lq(latent_x0, lq, tile=ae_tile, overlap=ae_overlap)
            else:
                out = ae.decode(latent_x0, skips)
        check_finite(out, "the autoencoder's decoded image", half)
        return out.float()


def _is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def load_pipeline(path: str | Path, *, device: str | torch.device | None = None,
                  weights: str = "model") -> RefusionPipeline:
    """A RefusionPipeline from a training run directory (task: sde) or a saved pipeline directory.

    ``weights``: "model" (the run's final weights) or "best" (best validation PSNR) of a run.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} is not a directory; pass a training run directory "
                                f"(runs/<name>) or a directory written by RefusionPipeline.save_pretrained")

    if _is_pipeline_dir(path):
        verify_weights_dir(path)      # checksums.json of RefusionPipeline.save_pretrained, when present
        try:
            pipe = RefusionPipeline.from_pretrained(str(path), use_safetensors=True)
        except Exception as exc:  # name the directory whatever part of it is broken
            raise ValueError(f"cannot load the pipeline saved in {path}: {type(exc).__name__}: {exc}") from exc
        for module in (pipe.unet, pipe.autoencoder):
            if module is not None:
                _own_memory(module)
    else:
        task = read_run_task(path)
        if task != "sde":
            hint = (f"Use refusion.restore(lq, model={str(path)!r}) for regressors" if task == "regressor" else
                    "an autoencoder run is used through the latent sde run that names it (recipe latent.autoencoder)")
            raise ValueError(f"{path} is a {task!r} run; load_pipeline/sample need an sde run. {hint}")
        sched_dir = path / "scheduler"
        if not (sched_dir / "scheduler_config.json").is_file():
            raise FileNotFoundError(f"{sched_dir / 'scheduler_config.json'} is missing: the run directory "
                                    f"{path} is incomplete (an sde run saves its scheduler there)")
        verify_weights_dir(sched_dir)
        scheduler = IRSDEScheduler.from_pretrained(str(sched_dir))
        ae_dir = path / "autoencoder"
        autoencoder = load_network(ae_dir) if ae_dir.is_dir() else None
        unet = load_network(_weights_dir(path, weights))
        pipe = RefusionPipeline(unet=unet, scheduler=scheduler, autoencoder=autoencoder)
    pipe.unet.eval()
    if pipe.autoencoder is not None:
        pipe.autoencoder.eval()
    return pipe.to(device) if device is not None else pipe


_NO_MODEL_SDE = (
    "refusion.sample needs a model: pass model='runs/shadow' (a training run directory of an sde run or a "
    "directory written by RefusionPipeline.save_pretrained), a RefusionPipeline, or a noise network "
    "net(x_t, mu, t) with scheduler=IRSDEScheduler(...). Example: refusion.sample(lq, steps=20, "
    "model='runs/shadow')")
_NO_MODEL_REGRESSOR = (
    "refusion.restore needs a model: pass model='runs/nafnet' (a training run directory of a regressor run "
    "or a saved model directory with config.json), or a network such as refusion.models.NAFNet(...). "
    "Example: refusion.restore(lq, model='runs/nafnet')")


def sample(
    lq: Any,
    steps: int = 100,
    model: Any = None,
    sampler: str | None = None,
    generator: Generator = None,
    tile_size: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    *,
    scheduler: IRSDEScheduler | None = None,
    eta: float | None = None,
    tile_overlap: int = 32,
    latent: bool | None = None,
    cond: torch.Tensor | None = None,
    half: bool = False,
) -> Any:
    """Restore ``lq`` with the reverse IR-SDE; returns the same kind as ``lq`` (tensor/numpy/PIL).

    ``model``: a run directory or saved pipeline directory (str/Path), a RefusionPipeline, or any
    noise network ``net(x_t, mu, t)`` (then ``scheduler`` or a default IRSDEScheduler()).
    """
    if model is None:
        raise ValueError(_NO_MODEL_SDE)
    if isinstance(model, (str, Path)):
        model = load_pipeline(model)
    if isinstance(model, torch.nn.Module) and type(model).__name__ in REGRESSOR_NAMES:
        raise ValueError(f"model is a {type(model).__name__} regressor; use refusion.restore(lq, model=...) "
                         f"for regressors, refusion.sample for sde noise networks")
    x, kind = to_batch(lq)
    if isinstance(model, RefusionPipeline):
        if scheduler is not None:
            model = RefusionPipeline(unet=model.unet, scheduler=scheduler, autoencoder=model.autoencoder)
        if device is not None:
            model = model.to(device)
        out = model(x, num_inference_steps=steps, sampler=sampler, eta=eta, generator=generator,
                    output_type="pt", tile_size=tile_size, tile_overlap=tile_overlap, latent=latent,
                    cond=cond, progress=progress, half=half).images
        return from_batch(out, kind)
    if not callable(model):
        raise TypeError(f"model must be a path, a RefusionPipeline or a callable net(x_t, mu, t), "
                        f"got {type(model).__name__}. " + _NO_MODEL_SDE)
    if latent:
        raise ValueError("latent=True needs a RefusionPipeline with an autoencoder, not a bare noise network")
    base = scheduler if scheduler is not None else IRSDEScheduler()
    overrides = {k: v for k, v in (("sampler", sampler), ("eta", eta)) if v is not None}
    sched = IRSDEScheduler.from_config(base.config, **overrides)
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else x.device
    x = x.to(device)
    if tile_size is not None:
        validate_tiling(tile_size, tile_overlap, spatial_multiple(model))
    bar = _tqdm_steps if progress else (lambda s: s)
    with torch.inference_mode():
        out = sde_sample(model, sched, x, num_inference_steps=steps, generator=generator, tile_size=tile_size,
                         tile_overlap=tile_overlap, multiple=spatial_multiple(model),
                         cond=None if cond is None else cond.to(device), progress=bar, half=half)
    return from_batch(out.clamp(0.0, 1.0), kind)


def _tqdm_steps(steps):
    from tqdm.auto import tqdm

    return tqdm(steps, desc="sampling", leave=False)


def restore(
    lq: Any,
    model: Any = None,
    tile_size: int | None = None,
    tlc: bool | int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    *,
    tile_overlap: int = 32,
    half: bool = False,
) -> Any:
    """Restore ``lq`` with a deterministic regressor (NAFNet, Baseline, HINet, NAFFT-Net).

    ``model``: a regressor run directory / saved model directory, or the network itself.
    ``tlc``: test-time local converter for networks with global pooling (NAFNet family): the
    global average pools become box means over 1.5 x the training patch; True reads the patch
    size from the run's recipe, an int or (H, W) gives it.
    Same input/output conventions as :func:`sample`.
    """
    if model is None:
        raise ValueError(_NO_MODEL_REGRESSOR)
    train_patch = None
    if isinstance(model, (str, Path)):
        train_patch = _run_train_patch(Path(model))
        model = load_regressor(model)
    if isinstance(model, RefusionPipeline):
        raise ValueError("model is a RefusionPipeline (an sde model); use refusion.sample(lq, model=...)")
    if not callable(model):
        raise TypeError(f"model must be a path or a regressor network, got {type(model).__name__}. "
                        + _NO_MODEL_REGRESSOR)
    x, kind = to_batch(lq)
    if device is not None and isinstance(model, torch.nn.Module):
        model = model.to(device)
    if isinstance(model, torch.nn.Module):
        params = list(model.parameters())
        x = x.to(params[0].device if params else (device or x.device))
    multiple = spatial_multiple(model)
    if tile_size is not None:
        validate_tiling(tile_size, tile_overlap, multiple)
    from refusion.models import final_output

    def run(tile: torch.Tensor) -> torch.Tensor:
        with half_precision(tile.device, half):
            return final_output(model(tile)).float()

    with torch.inference_mode(), _tlc_context(model, tlc, train_patch):
        out = tiled_apply(run, x, tile_size, tile_overlap, multiple, progress=progress) if tile_size else run(x)
        check_finite(out, f"the output of the {type(model).__name__} network", half)
    return from_batch(out.clamp(0.0, 1.0), kind)


def _tlc_context(model, tlc, train_patch: int | None):
    """The models' local-pooling (TLC) context for this network, or nothing when tlc is off."""
    if tlc is None or tlc is False:
        return contextlib.nullcontext()
    from refusion.models.nafnet import local_pooling

    if tlc is True:
        if train_patch is None:
            raise ValueError("tlc=True needs the training patch size, which is only known for a run directory "
                             "(recipe data.train.gt_size); pass it instead, e.g. tlc=256")
        tlc = train_patch
    size = (int(tlc), int(tlc)) if isinstance(tlc, int) else tuple(int(v) for v in tlc)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"tlc must be True, a training patch size (int) or (H, W), got {tlc!r}")
    return local_pooling(model, size)


def _run_train_patch(path: Path) -> int | None:
    """data.train.gt_size of a run directory's recipe (the TLC training size), when there is one."""
    try:
        with open(Path(path) / "recipe.yml", encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
        size = recipe["data"]["train"]["gt_size"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return int(size) if isinstance(size, int) else None
