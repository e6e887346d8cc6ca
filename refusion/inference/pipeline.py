"""Inference: RefusionPipeline (a diffusers DiffusionPipeline), the reverse-SDE loop and load_pipeline.

- ``RefusionPipeline(unet, scheduler, autoencoder=None)`` runs the reverse IR-SDE from the noisy
  degraded image x_T = mu + lambda*z to the restored image, optionally tile by tile and
  optionally in the latent space of a LatentUNet (for very large inputs).
- ``sde_sample`` is the loop itself (one small function: timesteps, initial state, network call,
  scheduler step); ``sde_samples`` runs it once or for K posterior samples in chunks.
- ``load_pipeline(path)`` reads a training run directory or a directory written by
  ``RefusionPipeline.save_pretrained``.

The one-line forms live elsewhere: ``refusion.sample`` in refusion.inference.sampling, ``refusion.restore``
in refusion.inference.restoration, ``refusion.sample_posterior`` in refusion.inference.posterior; all of
them, the command line, the app and evaluation restore through refusion.inference.restorer.

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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from refusion.checksums import verify_weights_dir, write_weights_manifest
from refusion.data.inputs import tensor_to_numpy, tensor_to_pil, to_batch
from refusion.data.lens import lens_batch
from refusion.inference.allocator import tune_malloc_for
from refusion.inference.color_fix import fix_restored
from refusion.inference.ensemble import (check_ensemble_network, ensemble_predict, mean_over_ensemble,
                                         repeat_for_ensemble, shared_noise)
from refusion.inference.loading import load_network, own_memory, read_run_task, weights_dir
from refusion.inference.network_calls import noise_call
from refusion.inference.precision import InferenceNetwork, check_finite, nonfinite_hint, to_float32
from refusion.inference.sample_chunks import check_stochastic, sample_generators, sample_in_chunks
from refusion.inference.settings import RestoreSettings
from refusion.inference.tiling import tiled_apply, validate_tiling
from refusion.models.capabilities import GENERIC_NOISE, capabilities_of
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler

__all__ = ["RefusionPipeline", "RefusionPipelineOutput", "load_pipeline", "sde_sample", "sde_samples", "upscale_lq",
           "LATENT_AUTO_PIXELS", "LATENT_TILE_DEFAULT"]

# latent=None picks the autoencoder path above this many pixels per image (about 4 megapixels)
LATENT_AUTO_PIXELS = 2048 * 2048
# pixel tile of the autoencoder when the latent path runs on an image larger than LATENT_AUTO_PIXELS
LATENT_TILE_DEFAULT = 1024
# context pixels around each autoencoder tile: covers the local encoder + decoder receptive field
LATENT_AE_OVERLAP = 128

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class RefusionPipelineOutput(BaseOutput):
    """``images``: list of PIL images, numpy (B, H, W, C) float32, or torch (B, C, H, W), in [0, 1]."""

    images: Any



def _check_generator(generator: Generator, batch: int) -> None:
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} generators but the batch has {batch} "
                         f"images; pass one generator or one per image")


StepCallback = Callable[[int, int], None]


def sde_sample(
    noise_fn: Callable[..., torch.Tensor],
    scheduler: IRSDEScheduler,
    mu: torch.Tensor,
    *,
    num_inference_steps: int,
    generator: Generator = None,
    tile_size: int | None = None,
    tile_overlap: int = 32,
    multiple: int | None = None,
    cond: torch.Tensor | None = None,
    progress: Callable[[Sequence[int]], Any] = lambda steps: steps,
    half: bool = False,
    lens_info: Any = None,
    self_ensemble: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse SDE from x_T = mu + lambda*z; returns x_0 (not clamped).

    ``noise_fn`` predicts the noise and is called as its capabilities say
    (refusion.inference.network_calls): ``noise_fn(x_t, mu, t)`` (plus ``cond=`` when given), ``noise_fn(x_t, t)``
    for an unconditional network, ``lens_info=`` (the (B,) columns of ``lens_info``, see
    refusion.data.lens.lens_batch) for the bokeh network; ``t`` a (B,) int64 tensor. A callable that
    declares nothing is called as ``noise_fn(x_t, mu, t)``. ``scheduler`` is used as is (``set_timesteps``
    is called on it). With ``tile_size`` the network runs tile-wise on the full-size state (tiles at
    ``multiple``, None: the network's own); the noise is drawn at full size. ``callback(done, total)``
    is called before the first step (done 0) and after every step.

    The network gets its inputs in channels_last layout (refusion.inference.precision.InferenceNetwork).
    ``half``: it runs with bfloat16 (CPU) / float16 (CUDA) channels_last weights cast once for the
    whole run, and inputs cast at each call (``noise_fn`` itself is not changed); the state and the
    scheduler arithmetic stay float32.

    A network output with NaN/Inf raises FloatingPointError naming the first such step. The check
    never stops the device mid-loop: each step folds ``isfinite(noise).all()`` into a device-side
    "first bad step" index (one elementwise pass, no host sync) and the host reads it once, with
    the finiteness of the final state, after the loop. The cost is the wasted remaining steps when
    the output goes bad early, against a synchronisation per step otherwise.

    ``self_ensemble``: 8 trajectories, one per flip/rotation of the network's inputs, sharing the
    noise a plain run draws, averaged at the end (refusion.inference.ensemble): 8 network calls a step.
    """
    batch = mu.shape[0]
    _check_generator(generator, batch)
    caps = capabilities_of(noise_fn, GENERIC_NOISE)
    if self_ensemble:
        check_ensemble_network(noise_fn)
    multiple = multiple or caps.multiple
    # inputs go channels_last at each call; half: the weights are cast once here; the state stays float32
    call = noise_call(InferenceNetwork(noise_fn, mu.device, half=half), caps, name=type(noise_fn).__name__,
                      lens_info=lens_info, batch=batch, device=mu.device)
    scheduler.set_timesteps(num_inference_steps)          # timesteps stay on the host: Python ints below
    steps = [int(t) for t in scheduler.timesteps]
    x = scheduler.initial_sample(mu, generator=generator)
    inputs = [mu] if cond is None else [mu, cond]
    state_mu = mu
    if self_ensemble:        # the 8 trajectories stay in the original frame, transform-major in the batch
        x, state_mu = repeat_for_ensemble(x), repeat_for_ensemble(mu)
    draws = self_ensemble and getattr(scheduler, "is_stochastic", True)     # a step that draws noise
    first_bad = torch.full((), -1, dtype=torch.long, device=mu.device)   # index of the first NaN/Inf output
    if callback is not None:
        callback(0, len(steps))
    for index, t in enumerate(progress(steps)):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=mu.device)

        def apply(x_t, *inputs_t):
            def predict(x_tile, mu_tile, cond_tile=None):
                return to_float32(call(x_tile, mu_tile, t_batch, cond_tile))

            if tile_size:
                return tiled_apply(predict, [x_t, *inputs_t], tile_size, tile_overlap, multiple)
            return predict(x_t, *inputs_t)

        noise_pred = ensemble_predict(apply, x, inputs) if self_ensemble else apply(x, *inputs)
        bad = ~torch.isfinite(noise_pred).all()
        first_bad = torch.where(bad & (first_bad < 0), index, first_bad)
        noise = shared_noise(mu, generator) if draws else None     # one draw for all 8, as a plain run draws it
        x = scheduler.step(noise_pred, t, x, mu=state_mu, generator=generator, variance_noise=noise).prev_sample
        if callback is not None:
            callback(index + 1, len(steps))
    bad_index = int(first_bad)                                           # the one host sync
    if bad_index >= 0:
        raise FloatingPointError(
            f"the noise network returned NaN or Inf at sampling step {bad_index + 1} of {len(steps)} "
            f"(timestep {steps[bad_index]}); {nonfinite_hint(half)}")
    check_finite(x, "the sampled image (final SDE state)", half)
    return mean_over_ensemble(x) if self_ensemble else x


def sde_samples(noise_fn, scheduler, mu: torch.Tensor, settings: RestoreSettings, *, generator: Generator,
                multiple: int | None = None, progress=lambda steps: steps,
                callback: StepCallback | None = None) -> torch.Tensor:
    """sde_sample with ``settings`` (steps resolved; tile and overlap on mu's grid; ``settings.cond`` the
    conditioning maps): once for ``samples`` 1, else K samples in chunks -> (K, B, ...) (one generator per
    sample, refusion.inference.sample_chunks.sample_generators)."""
    def run(mu_n, cond_n, lens_n, *, generator):
        return sde_sample(noise_fn, scheduler, mu_n, num_inference_steps=settings.steps, generator=generator,
                          tile_size=settings.tile, tile_overlap=settings.overlap, multiple=multiple, cond=cond_n,
                          progress=progress, half=settings.half, lens_info=lens_n, self_ensemble=settings.self_ensemble,
                          callback=callback)

    if settings.samples == 1:
        return run(mu, settings.cond, settings.lens_info, generator=generator)
    lens = None if settings.lens_info is None else lens_batch(settings.lens_info, mu.shape[0]).to(mu.device)
    entries = sample_generators(generator, settings.samples, mu.shape[0], mu.device)
    return sample_in_chunks(run, [mu, settings.cond, lens], entries=entries, chunk_size=settings.chunk_size,
                            tile=settings.tile)


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

    def __init__(self, unet, scheduler: IRSDEScheduler | DenoisingSDEScheduler, autoencoder=None, lq_upscale: int = 1):
        super().__init__()
        if not isinstance(lq_upscale, int) or isinstance(lq_upscale, bool) or lq_upscale < 1:
            raise ValueError(f"lq_upscale must be an int >= 1 (the SR factor the LQ image is upsampled by "
                             f"before sampling), got {lq_upscale!r}")
        self.register_modules(unet=unet, scheduler=scheduler, autoencoder=autoencoder)
        # saved in model_index.json: super-resolution models restore the bicubically upsampled LQ image
        self.register_to_config(lq_upscale=lq_upscale)

    def with_scheduler(self, scheduler: IRSDEScheduler | DenoisingSDEScheduler) -> "RefusionPipeline":
        """The same networks (and SR upscaling) driven by another scheduler; this pipeline is left as it is."""
        return RefusionPipeline(unet=self.unet, scheduler=scheduler, autoencoder=self.autoencoder,
                                lq_upscale=self.config.get("lq_upscale", 1))

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' save_pretrained, then checksums.json (sha256 of every file) for load_pipeline."""

        super().save_pretrained(save_directory, **kwargs)
        write_weights_manifest(Path(save_directory))

    def _use_latent(self, latent: bool | None, height: int, width: int, channels: int) -> bool:
        net_ch = capabilities_of(self.unet, GENERIC_NOISE).input_channels
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
        lens_info: Any = None,
        num_samples: int = 1,
        chunk_size: int | None = None,
        self_ensemble: bool = False,
        color_fix: str | None = None,
        callback: StepCallback | None = None,
    ):
        """Restore ``image`` (tensor (B,C,H,W)/(C,H,W) in [0,1], numpy HWC, PIL image or list of them).

        ``num_inference_steps`` defaults to the sampler's documented step count (the scheduler's
        ``default_steps``: 10 for mr_ode / mr_sde, every trained step for the official samplers); ``sampler`` and
        ``eta`` override the scheduler's config for this call only. ``generator``: one, or one per
        image (image i then does not depend on the rest of the batch). ``tile_size``: run the
        network on overlapping tiles (shared full-size noise). ``latent``: None = automatic (the
        autoencoder path when the network needs latents or the image exceeds LATENT_AUTO_PIXELS),
        True/False force it. ``lens_info`` (bokeh networks only, and required by them): the encoded
        [src_lens, tgt_lens, disparity] of each image, a (B, 3) tensor or three scalars / (B,) values
        (refusion.data.lens.lens_info encodes lens names). Inputs with NaN/Inf are refused; values outside
        [0, 1] are clamped with a warning. The output is clamped to [0, 1].

        ``num_samples`` K > 1: K posterior samples of every image (a stochastic sampler is required),
        and ``images`` holds B * K images, image-major as diffusers' ``num_images_per_prompt``: image b's
        samples are ``images[b*K:(b+1)*K]``. ``generator`` then gives each SAMPLE its generator (None:
        seeded from torch's global RNG; one generator: K seeds drawn from it; a list of K, each a
        generator or a list of B), so sample k equals a one-sample call with generator k.
        ``chunk_size``: samples per network batch (None: automatic, see
        refusion.inference.sample_chunks.auto_chunk_size); the result does not depend on it.
        refusion.sample_posterior returns the samples with their mean and std.

        ``self_ensemble``: 8 trajectories, one per flip/rotation of the noise network's inputs, sharing
        one noise field, averaged (8 network calls a step; refusion.inference.ensemble; refused for
        stereo networks). ``color_fix``: None (off), "adain" or "wavelet": each result (each sample)
        gets the colours of the input as the SDE sees it, after any SR upscaling
        (refusion.inference.color_fix). ``callback(done, total)`` is called after every sampling step (each
        chunk of posterior samples makes its own pass over the steps).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        settings = RestoreSettings(
            sampler=sampler, steps=num_inference_steps, eta=eta, generator=generator, tile=tile_size,
            overlap=tile_overlap, latent=latent, cond=cond, half=half, lens_info=lens_info, samples=num_samples,
            chunk_size=chunk_size, self_ensemble=self_ensemble, color_fix=color_fix)
        tune_malloc_for(self.device)
        with torch.inference_mode():
            restored = self.run(to_batch(image)[0], settings, progress=progress, callback=callback)
        if num_samples > 1:      # (K, B, ...) -> image-major (B * K, ...)
            restored = restored.transpose(0, 1).reshape(-1, *restored.shape[2:])
        # clamp and copy outside inference mode: callers get an ordinary tensor they may edit in place
        images = _format_output(restored.clamp(0.0, 1.0), output_type)
        return RefusionPipelineOutput(images=images) if return_dict else (images,)

    def scheduler_for(self, settings: RestoreSettings):
        """A copy of the scheduler with the call's sampler and eta (ours is never changed)."""
        overrides = {k: v for k, v in (("sampler", settings.sampler), ("eta", settings.eta)) if v is not None}
        return type(self.scheduler).from_config(self.scheduler.config, **overrides)

    def run(self, lq: torch.Tensor, settings: RestoreSettings, *, progress: bool = False,
            callback: StepCallback | None = None) -> torch.Tensor:
        """(B, C, H, W) restored images of a (B, C, H, W) batch, not clamped; (K, B, C, H, W) samples when
        ``settings.samples`` K > 1. ``progress``: the pipeline's step bar; ``callback(done, total)`` per step."""
        device = self.device
        lq = upscale_lq(lq.to(device), self.config.get("lq_upscale", 1))
        batch, channels, height, width = lq.shape
        cond = settings.cond
        if cond is not None:
            cond = cond.to(device=device, dtype=lq.dtype)
            cond = cond[None] if cond.dim() == 3 else cond
            if cond.shape[0] != batch or cond.shape[-2:] != lq.shape[-2:]:
                raise ValueError(f"cond must be (B, C, H, W) matching the image {tuple(lq.shape)}, "
                                 f"got {tuple(cond.shape)}")
        scheduler = self.scheduler_for(settings)
        check_stochastic(scheduler, settings.samples)
        settings = settings.replace(steps=settings.steps or scheduler.default_steps(), cond=cond)
        bar = self.progress_bar if progress else (lambda steps: steps)
        generator = settings.make_generator(device)
        caps = capabilities_of(self.unet, GENERIC_NOISE)
        if self._use_latent(settings.latent, height, width, channels):
            restored = self._latent_sample(lq, scheduler, settings, generator, bar, callback)
        else:
            if settings.tile is not None:
                validate_tiling(settings.tile, settings.overlap, caps.multiple)
            if caps.input_channels not in (None, channels):
                raise ValueError(f"the noise network takes {caps.input_channels}-channel images, "
                                 f"got an image with {channels} channels")
            restored = sde_samples(self.unet, scheduler, lq, settings, generator=generator, progress=bar,
                                   callback=callback)
        return fix_restored(restored, lq, settings.color_fix)

    def _latent_sample(self, lq, scheduler, settings: RestoreSettings, generator, bar, callback):
        """Encode LQ (tiled), run the SDE on latents, decode with the LQ image's skips (tiled).

        ``settings.tile`` / ``overlap`` are in image pixels: the autoencoder runs on tiles of ``tile``
        with at least LATENT_AE_OVERLAP pixels of context, the noise network on latent tiles of
        ``tile / downscale``. Without a tile an image above LATENT_AUTO_PIXELS still gets
        LATENT_TILE_DEFAULT autoencoder tiles (never the whole full-resolution skips) and the noise
        network sees the whole latent. K samples share one encoding; each is decoded on its own, as a
        one-sample call decodes it.
        """
        ae = self.autoencoder
        factor = ae.downscale
        height, width = lq.shape[-2:]
        tile_size, tile_overlap = settings.tile, settings.overlap
        if tile_size is not None:
            validate_tiling(tile_size, tile_overlap, factor)
        ae_tile = tile_size or (LATENT_TILE_DEFAULT if height * width > LATENT_AUTO_PIXELS else None)
        if ae_tile:
            ae_tile = max(factor, ae_tile // factor * factor)
            ae_overlap = -(-max(tile_overlap, LATENT_AE_OVERLAP) // factor) * factor
        # half: one bf16/fp16 channels_last copy of the weights serves encode and decode; the skips
        # stay in half precision (and channels_last) between them (decode takes them as they are)
        run = InferenceNetwork(ae, lq.device, half=settings.half).call
        if ae_tile:
            mu, skips = run("encode_tiled", lq, tile=ae_tile, overlap=ae_overlap, return_skips=False)
        else:
            mu, skips = run("encode", lq)
        mu = to_float32(mu)
        cond = settings.cond
        if cond is not None:
            cond = torch.nn.functional.interpolate(cond, size=mu.shape[-2:], mode="area")
        multiple = capabilities_of(self.unet, GENERIC_NOISE).multiple
        latent_tile = latent_overlap = None
        if tile_size is not None:
            latent_tile = max(multiple, tile_size // factor // multiple * multiple)
            latent_overlap = min(max(tile_overlap // factor, 4), latent_tile - 1)
        on_latents = settings.replace(tile=latent_tile, overlap=latent_overlap or 0, cond=cond)
        latent_x0 = sde_samples(self.unet, scheduler, mu, on_latents, generator=generator, progress=bar,
                                callback=callback)

        def decode(latent_x0):
            if ae_tile:
                out = run("decode_from_lq", latent_x0, lq, tile=ae_tile, overlap=ae_overlap)
            else:
                out = run("decode", latent_x0, skips)
            check_finite(out, "the autoencoder's decoded image", settings.half)
            return to_float32(out)

        return decode(latent_x0) if settings.samples == 1 else torch.stack([decode(x) for x in latent_x0])


SCHEDULERS = {"IRSDEScheduler": IRSDEScheduler, "DenoisingSDEScheduler": DenoisingSDEScheduler}


def _saved_scheduler_class(folder: Path):
    """The scheduler class a run saved (scheduler_config.json ``_class_name``)."""
    path = folder / "scheduler_config.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("_class_name", "IRSDEScheduler")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable scheduler config ({exc})") from exc
    if name not in SCHEDULERS:
        raise ValueError(f"{path}: _class_name {name!r} is not a refusion scheduler; known: {sorted(SCHEDULERS)}")
    return SCHEDULERS[name]


def upscale_lq(lq: torch.Tensor, factor: int) -> torch.Tensor:
    """The LQ image as an SR model's SDE sees it: bicubic ``F.interpolate`` by ``factor``.

    As the official super-resolution test does (``mode='bicubic'``, ``align_corners=False``, no
    clamping before the SDE); ``factor`` 1 returns the image unchanged.
    """
    if factor == 1:
        return lq
    return torch.nn.functional.interpolate(lq, scale_factor=factor, mode="bicubic")


def _is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def _import_component_modules(path: Path) -> None:
    """Import this package's modules that a saved pipeline's model_index.json names (diffusers loads a
    component only from a module already imported); names outside refusion are left to diffusers."""
    import importlib

    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return                      # from_pretrained reports the broken file with the directory's name
    for entry in index.values() if isinstance(index, dict) else ():
        if isinstance(entry, list) and entry and isinstance(entry[0], str) and entry[0].split(".")[0] == "refusion":
            try:
                importlib.import_module(entry[0])
            except ImportError:
                pass                # from_pretrained names the module it cannot load


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
        _import_component_modules(path)
        try:
            pipe = RefusionPipeline.from_pretrained(str(path), use_safetensors=True)
        except Exception as exc:  # name the directory whatever part of it is broken
            raise ValueError(f"cannot load the pipeline saved in {path}: {type(exc).__name__}: {exc}") from exc
        for module in (pipe.unet, pipe.autoencoder):
            if module is not None:
                own_memory(module)
    else:
        task = read_run_task(path)
        if task not in ("sde", "distill"):
            hint = (f"Use refusion.restore(lq, model={str(path)!r}) for regressors" if task == "regressor" else
                    "an autoencoder run is used through the latent sde run that names it (recipe latent.autoencoder)")
            raise ValueError(f"{path} is a {task!r} run; load_pipeline/sample need an sde run. {hint}")
        sched_dir = path / "scheduler"
        if not (sched_dir / "scheduler_config.json").is_file():
            raise FileNotFoundError(f"{sched_dir / 'scheduler_config.json'} is missing: the run directory "
                                    f"{path} is incomplete (an sde run saves its scheduler there)")
        verify_weights_dir(sched_dir)
        scheduler = _saved_scheduler_class(sched_dir).from_pretrained(str(sched_dir))
        ae_dir = path / "autoencoder"
        autoencoder = load_network(ae_dir) if ae_dir.is_dir() else None
        unet = load_network(weights_dir(path, weights))
        pipe = RefusionPipeline(unet=unet, scheduler=scheduler, autoencoder=autoencoder)
    pipe.unet.eval()
    if pipe.autoencoder is not None:
        pipe.autoencoder.eval()
    return pipe.to(device) if device is not None else pipe
