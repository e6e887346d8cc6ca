"""Inference: RefusionPipeline (a diffusers DiffusionPipeline), load_pipeline, sample and restore.

- ``RefusionPipeline(unet, scheduler, autoencoder=None)`` runs the reverse IR-SDE from the noisy
  degraded image x_T = mu + lambda*z to the restored image, optionally tile by tile and
  optionally in the latent space of a LatentUNet (for very large inputs).
- ``load_pipeline(path)`` reads a training run directory or a directory written by
  ``RefusionPipeline.save_pretrained``.
- ``sample(lq, model=...)`` / ``restore(lq, model=...)`` are the one-line forms for SDE runs and
  for deterministic regressors (NAFNet, Baseline, HINet, NAFFT-Net); both take a tensor, numpy
  array or PIL image and return the same kind. ``restore`` lives in refusion.inference.restoration, the
  loaders in refusion.inference.loading, the half-precision path in refusion.inference.precision; all are importable
  from here as before.

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
from refusion.data.inputs import from_batch, tensor_to_numpy, tensor_to_pil, to_batch
from refusion.data.lens import lens_arguments, lens_batch
from refusion.inference.loading import (REGRESSOR_NAMES, is_unconditional, load_network, network_channels, own_memory,
                                        read_run_task, spatial_multiple, weights_dir)
from refusion.inference.allocator import tune_malloc_for
from refusion.inference.color_fix import check_color_fix, fix_restored
from refusion.inference.ensemble import (check_ensemble_network, ensemble_predict, mean_over_ensemble,
                                         repeat_for_ensemble, shared_noise)
from refusion.inference.precision import InferenceNetwork, check_finite, nonfinite_hint, to_float32
from refusion.inference.sample_chunks import check_num_samples, check_stochastic, sample_generators, sample_in_chunks
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler
from refusion.inference.tiling import tiled_apply, validate_tiling

__all__ = ["RefusionPipeline", "RefusionPipelineOutput", "load_pipeline", "sample", "sde_sample",
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



# noise networks that embed the lens information (codes/config/latent-bokeh): net(x_t, mu, t, lens_info=[...])
LENS_NETWORKS = ("BokehNAFNet",)


def takes_lens_info(net) -> bool:
    return type(net).__name__ in LENS_NETWORKS


def _lens_arguments(noise_fn, lens_info, batch: int, device: torch.device) -> list | None:
    """The network's ``lens_info=`` list of (B,) tensors, checked against what the network takes."""
    if lens_info is None:
        if takes_lens_info(noise_fn):
            raise ValueError(f"{type(noise_fn).__name__} embeds the lens information of every image: pass "
                             f"lens_info=[src_lens, tgt_lens, disparity] (a (B, 3) tensor or three values; "
                             f"refusion.data.lens.lens_info encodes lens names such as 'Sony50mmf1.8BS')")
        return None
    if isinstance(noise_fn, torch.nn.Module) and not takes_lens_info(noise_fn):
        raise ValueError(f"lens_info was given but the noise network is a {type(noise_fn).__name__}, which takes "
                         f"no lens information (only {', '.join(LENS_NETWORKS)} does)")
    return lens_arguments(lens_batch(lens_info, batch).to(device))


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
    lens_info: Any = None,
    self_ensemble: bool = False,
) -> torch.Tensor:
    """Run the reverse SDE from x_T = mu + lambda*z; returns x_0 (not clamped).

    ``noise_fn(x_t, mu, t)`` (plus ``cond=`` when given; ``lens_info=`` for the bokeh network, the
    (B,) columns of ``lens_info``, see refusion.data.lens.lens_batch) predicts the noise, ``t`` a (B,) int64
    tensor. ``scheduler`` is used as is (``set_timesteps`` is called on it). With ``tile_size``
    the network runs tile-wise on the full-size state; the noise is drawn at full size.

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
    if self_ensemble:
        check_ensemble_network(noise_fn)
    lens = _lens_arguments(noise_fn, lens_info, batch, mu.device)   # per image: the same for every tile
    scheduler.set_timesteps(num_inference_steps)          # timesteps stay on the host: Python ints below
    steps = [int(t) for t in scheduler.timesteps]
    x = scheduler.initial_sample(mu, generator=generator)
    inputs = [mu] if cond is None else [mu, cond]
    state_mu = mu
    if self_ensemble:        # the 8 trajectories stay in the original frame, transform-major in the batch
        x, state_mu = repeat_for_ensemble(x), repeat_for_ensemble(mu)
    draws = self_ensemble and getattr(scheduler, "is_stochastic", True)     # a step that draws noise
    first_bad = torch.full((), -1, dtype=torch.long, device=mu.device)   # index of the first NaN/Inf output
    # inputs go channels_last at each call; half: the weights are cast once here; the state stays float32
    net = InferenceNetwork(noise_fn, mu.device, half=half)
    unconditional = is_unconditional(noise_fn)
    for index, t in enumerate(progress(steps)):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=mu.device)

        def predict(x_t, mu_t, cond_t=None):
            if unconditional:        # the DenoisingSDE's networks see only the state
                return to_float32(net(x_t, t_batch))
            if lens is not None:
                return to_float32(net(x_t, mu_t, t_batch, lens_info=lens))
            out = net(x_t, mu_t, t_batch) if cond_t is None else net(x_t, mu_t, t_batch, cond=cond_t)
            return to_float32(out)

        def apply(x_t, *inputs_t):
            if tile_size:
                return tiled_apply(predict, [x_t, *inputs_t], tile_size, tile_overlap, multiple)
            return predict(x_t, *inputs_t)

        noise_pred = ensemble_predict(apply, x, inputs) if self_ensemble else apply(x, *inputs)
        bad = ~torch.isfinite(noise_pred).all()
        first_bad = torch.where(bad & (first_bad < 0), index, first_bad)
        noise = shared_noise(mu, generator) if draws else None     # one draw for all 8, as a plain run draws it
        x = scheduler.step(noise_pred, t, x, mu=state_mu, generator=generator, variance_noise=noise).prev_sample
    bad_index = int(first_bad)                                           # the one host sync
    if bad_index >= 0:
        raise FloatingPointError(
            f"the noise network returned NaN or Inf at sampling step {bad_index + 1} of {len(steps)} "
            f"(timestep {steps[bad_index]}); {nonfinite_hint(half)}")
    check_finite(x, "the sampled image (final SDE state)", half)
    return mean_over_ensemble(x) if self_ensemble else x


def sde_samples(noise_fn, scheduler, mu: torch.Tensor, cond: torch.Tensor | None, lens_info: Any, generator: Generator,
                samples: tuple | None, sampling: dict) -> torch.Tensor:
    """sde_sample once (``samples`` None), or K samples in chunks -> (K, B, ...) (``samples``: the
    per-sample generators of sample_chunks.sample_generators and the chunk size). ``sampling``: the
    other sde_sample arguments."""
    if samples is None:
        return sde_sample(noise_fn, scheduler, mu, generator=generator, cond=cond, lens_info=lens_info, **sampling)
    entries, chunk_size = samples
    lens = None if lens_info is None else lens_batch(lens_info, mu.shape[0]).to(mu.device)

    def run(mu_n, cond_n, lens_n, *, generator):
        return sde_sample(noise_fn, scheduler, mu_n, generator=generator, cond=cond_n, lens_info=lens_n, **sampling)

    return sample_in_chunks(run, [mu, cond, lens], entries=entries, chunk_size=chunk_size, tile=sampling["tile_size"])


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
        lens_info: Any = None,
        num_samples: int = 1,
        chunk_size: int | None = None,
        self_ensemble: bool = False,
        color_fix: str | None = None,
    ):
        """Restore ``image`` (tensor (B,C,H,W)/(C,H,W) in [0,1], numpy HWC, PIL image or list of them).

        ``num_inference_steps`` defaults to the scheduler's ``num_train_timesteps``; ``sampler`` and
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
        (refusion.inference.color_fix).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        check_num_samples(num_samples)
        check_color_fix(color_fix)
        tune_malloc_for(self.device)
        with torch.inference_mode():
            restored = self._restore(image, num_inference_steps, sampler, eta, generator, tile_size, tile_overlap,
                                     latent, cond, progress, half, lens_info=lens_info, num_samples=num_samples,
                                     chunk_size=chunk_size, self_ensemble=self_ensemble, color_fix=color_fix)
        if num_samples > 1:      # (K, B, ...) -> image-major (B * K, ...)
            restored = restored.transpose(0, 1).reshape(-1, *restored.shape[2:])
        # clamp and copy outside inference mode: callers get an ordinary tensor they may edit in place
        images = _format_output(restored.clamp(0.0, 1.0), output_type)
        return RefusionPipelineOutput(images=images) if return_dict else (images,)

    def _restore(self, image, num_inference_steps, sampler, eta, generator, tile_size, tile_overlap, latent, cond,
                 progress, half, *, lens_info=None, num_samples=1, chunk_size=None, self_ensemble=False,
                 color_fix=None) -> torch.Tensor:
        """(B, C, H, W) restored images; (K, B, C, H, W) samples when num_samples K > 1."""
        lq, _ = to_batch(image)
        device = self.device
        lq = upscale_lq(lq.to(device), self.config.get("lq_upscale", 1))
        batch, channels, height, width = lq.shape
        if cond is not None:
            cond = cond.to(device=device, dtype=lq.dtype)
            if cond.dim() == 3:
                cond = cond[None]
            if cond.shape[0] != batch or cond.shape[-2:] != lq.shape[-2:]:
                raise ValueError(f"cond must be (B, C, H, W) matching the image {tuple(lq.shape)}, "
                                 f"got {tuple(cond.shape)}")
        overrides = {k: v for k, v in (("sampler", sampler), ("eta", eta)) if v is not None}
        scheduler = type(self.scheduler).from_config(self.scheduler.config, **overrides)  # never mutate ours
        check_stochastic(scheduler, num_samples)
        samples = None if num_samples == 1 else (sample_generators(generator, num_samples, batch, device), chunk_size)
        if isinstance(scheduler, DenoisingSDEScheduler):
            steps = num_inference_steps      # None: every step from the start timestep (the official loop)
        else:
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
            sampling = dict(num_inference_steps=steps, tile_size=tile_size, tile_overlap=tile_overlap,
                            multiple=spatial_multiple(self.unet), progress=bar, half=half, self_ensemble=self_ensemble)
            restored = sde_samples(self.unet, scheduler, lq, cond, lens_info, generator, samples, sampling)
        else:
            restored = self._latent_sample(lq, scheduler, steps, generator, tile_size, tile_overlap, cond, bar, half,
                                           lens_info=lens_info, samples=samples, self_ensemble=self_ensemble)
        return fix_restored(restored, lq, color_fix)

    def _latent_sample(self, lq, scheduler, steps, generator, tile_size, tile_overlap, cond, bar, half, *,
                       lens_info=None, samples=None, self_ensemble=False):
        """Encode LQ (tiled), run the SDE on latents, decode with the LQ image's skips (tiled).

        ``tile_size``/``tile_overlap`` are in image pixels: the autoencoder runs on tiles of
        ``tile_size`` with at least LATENT_AE_OVERLAP pixels of context, the noise network on
        latent tiles of ``tile_size / downscale``. Without ``tile_size`` an image above
        LATENT_AUTO_PIXELS still gets LATENT_TILE_DEFAULT autoencoder tiles (never the whole
        full-resolution skips) and the noise network sees the whole latent. K samples (``samples``)
        share one encoding; each is decoded on its own, as a one-sample call decodes it.
        """
        ae = self.autoencoder
        factor = ae.downscale
        height, width = lq.shape[-2:]
        ae_tile = tile_size or (LATENT_TILE_DEFAULT if height * width > LATENT_AUTO_PIXELS else None)
        if ae_tile:
            ae_tile = max(factor, ae_tile // factor * factor)
            ae_overlap = -(-max(tile_overlap, LATENT_AE_OVERLAP) // factor) * factor
        # half: one bf16/fp16 channels_last copy of the weights serves encode and decode; the skips
        # stay in half precision (and channels_last) between them (decode takes them as they are)
        run = InferenceNetwork(ae, lq.device, half=half).call
        if ae_tile:
            mu, skips = run("encode_tiled", lq, tile=ae_tile, overlap=ae_overlap, return_skips=False)
        else:
            mu, skips = run("encode", lq)
        mu = to_float32(mu)
        if cond is not None:
            cond = torch.nn.functional.interpolate(cond, size=mu.shape[-2:], mode="area")
        multiple = spatial_multiple(self.unet)
        latent_tile = latent_overlap = None
        if tile_size is not None:
            latent_tile = max(multiple, tile_size // factor // multiple * multiple)
            latent_overlap = min(max(tile_overlap // factor, 4), latent_tile - 1)
        sampling = dict(num_inference_steps=steps, tile_size=latent_tile, tile_overlap=latent_overlap or 0,
                        multiple=multiple, progress=bar, half=half, self_ensemble=self_ensemble)
        latent_x0 = sde_samples(self.unet, scheduler, mu, cond, lens_info, generator, samples, sampling)

        def decode(latent_x0):
            if ae_tile:
                out = run("decode_from_lq", latent_x0, lq, tile=ae_tile, overlap=ae_overlap)
            else:
                out = run("decode", latent_x0, skips)
            check_finite(out, "the autoencoder's decoded image", half)
            return to_float32(out)

        return decode(latent_x0) if samples is None else torch.stack([decode(x) for x in latent_x0])


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
        if task != "sde":
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


_NO_MODEL_SDE = (
    "refusion.sample needs a model: pass model='runs/shadow' (a training run directory of an sde run or a "
    "directory written by RefusionPipeline.save_pretrained), a RefusionPipeline, or a noise network "
    "net(x_t, mu, t) with scheduler=IRSDEScheduler(...). Example: refusion.sample(lq, steps=20, "
    "model='runs/shadow')")
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
    lens_info: Any = None,
    self_ensemble: bool = False,
    color_fix: str | None = None,
) -> Any:
    """Restore ``lq`` with the reverse IR-SDE; returns the same kind as ``lq`` (tensor/numpy/PIL).

    ``model``: a run directory or saved pipeline directory (str/Path), a RefusionPipeline, or any
    noise network ``net(x_t, mu, t)`` (then ``scheduler`` or a default IRSDEScheduler()).
    ``lens_info``: the bokeh network's lens information; ``self_ensemble``, ``color_fix``: the x8
    self-ensemble and the colour fix (see RefusionPipeline.__call__).
    """
    if model is None:
        raise ValueError(_NO_MODEL_SDE)
    check_color_fix(color_fix)
    if isinstance(model, (str, Path)):
        model = load_pipeline(model)
    if isinstance(model, torch.nn.Module) and type(model).__name__ in REGRESSOR_NAMES:
        raise ValueError(f"model is a {type(model).__name__} regressor; use refusion.restore(lq, model=...) "
                         f"for regressors, refusion.sample for sde noise networks")
    x, kind = to_batch(lq)
    if isinstance(model, RefusionPipeline):
        if scheduler is not None:
            model = model.with_scheduler(scheduler)
        if device is not None:
            model = model.to(device)
        out = model(x, num_inference_steps=steps, sampler=sampler, eta=eta, generator=generator,
                    output_type="pt", tile_size=tile_size, tile_overlap=tile_overlap, latent=latent,
                    cond=cond, progress=progress, half=half, lens_info=lens_info, self_ensemble=self_ensemble,
                    color_fix=color_fix).images
        return from_batch(out, kind)
    out = network_sample(model, x, steps=steps, scheduler=scheduler, sampler=sampler, eta=eta, generator=generator,
                         tile_size=tile_size, tile_overlap=tile_overlap, latent=latent, cond=cond, progress=progress,
                         half=half, lens_info=lens_info, device=device, self_ensemble=self_ensemble)
    return from_batch(fix_restored(out, x.to(out.device), color_fix).clamp(0.0, 1.0), kind)


def network_sample(model, x: torch.Tensor, *, steps, scheduler, sampler, eta, generator, tile_size, tile_overlap,
                   latent, cond, progress, half, lens_info, device, num_samples: int = 1,
                   chunk_size: int | None = None, self_ensemble: bool = False) -> torch.Tensor:
    """``sample`` with a bare noise network on a (B, C, H, W) batch: (B, ...) or, for num_samples K > 1,
    (K, B, ...) samples (generators and chunks as RefusionPipeline.__call__), not clamped."""
    if not callable(model):
        raise TypeError(f"model must be a path, a RefusionPipeline or a callable net(x_t, mu, t), "
                        f"got {type(model).__name__}. " + _NO_MODEL_SDE)
    if latent:
        raise ValueError("latent=True needs a RefusionPipeline with an autoencoder, not a bare noise network")
    base = scheduler if scheduler is not None else IRSDEScheduler()
    overrides = {k: v for k, v in (("sampler", sampler), ("eta", eta)) if v is not None}
    sched = type(base).from_config(base.config, **overrides)
    check_stochastic(sched, check_num_samples(num_samples))
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else x.device
    x = x.to(device)
    if tile_size is not None:
        validate_tiling(tile_size, tile_overlap, spatial_multiple(model))
    samples = None if num_samples == 1 else (sample_generators(generator, num_samples, x.shape[0], device), chunk_size)
    sampling = dict(num_inference_steps=steps, tile_size=tile_size, tile_overlap=tile_overlap,
                    multiple=spatial_multiple(model), progress=_tqdm_steps if progress else (lambda s: s), half=half,
                    self_ensemble=self_ensemble)
    with torch.inference_mode():
        return sde_samples(model, sched, x, None if cond is None else cond.to(device), lens_info, generator, samples,
                           sampling)


def _tqdm_steps(steps):
    from tqdm.auto import tqdm

    return tqdm(steps, desc="sampling", leave=False)
