"""``refusion.load_model``: every model a user brings, loaded one way, described by one small object.

A source is any of:

- a training run directory (``recipe.yml`` with ``task: sde`` or ``task: regressor``), with ``weights``
  "model" (final) or "best" (best validation PSNR);
- a pipeline saved with ``RefusionPipeline.save_pretrained`` (``model_index.json``);
- a saved regressor (``config.json`` + safetensors weights), e.g. a folder written by `refusion import`
  (whose ``inference.json`` may switch TLC on);
- an official checkpoint file (``.pth``) with its option file (``options``; ``latent_weights`` for the
  latent tasks; ``sde`` settings for a noise network without options), imported once into the cache
  (refusion.official.importer.cached_import) and loaded from there;
- a RefusionPipeline, a network (``nn.Module`` that declares its capabilities), or an already loaded model.

The result, :class:`LoadedModel`, says what the model is (``kind`` "sde" or "regressor"), holds its
network(s) and scheduler, what the network can do (``capabilities``, declared by the network class) and
its defaults (sampler, steps for each sampler, TLC): the one place defaults live.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from refusion.inference.loading import (default_tlc, load_network, read_run_task, run_train_patch,
                                        weights_dir)
from refusion.models.capabilities import GENERIC_NOISE, Capabilities, capabilities_of, declares_capabilities

__all__ = ["LoadedModel", "ModelDefaults", "load_model", "model_folder"]

KINDS = ("sde", "regressor")
# a callable regressor that declares nothing (refusion.restore with a user's function)
GENERIC_REGRESSOR = Capabilities(purpose="regressor", multiple=8)


@dataclass(frozen=True)
class ModelDefaults:
    """What a restoration uses where its settings say None."""

    sampler: str | None = None          # sde: the scheduler's configured sampler
    tlc: tuple[int, int] | None = None  # regressors: TLC training size the folder asks for (imported ...Local)
    train_patch: int | None = None      # a run's data.train.gt_size (what tlc=True means)


@dataclass
class LoadedModel:
    """A model ready to restore with (see the module doc). ``pipeline``: the RefusionPipeline of an sde model
    loaded from a folder or given as one (autoencoder, SR upscaling); a bare noise network has none."""

    kind: str
    network: Any
    capabilities: Capabilities
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    scheduler: Any = None
    pipeline: Any = None
    source: Path | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "sde" and self.scheduler is None:
            raise ValueError("an sde model needs its scheduler")

    @property
    def autoencoder(self):
        return None if self.pipeline is None else self.pipeline.autoencoder

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(self.scheduler.SAMPLERS) if self.scheduler is not None else ()

    def default_steps(self, sampler: str | None = None) -> int | None:
        """The documented step count of ``sampler`` (None: the default sampler); None for regressors."""
        return None if self.scheduler is None else self.scheduler.default_steps(sampler or self.defaults.sampler)

    @property
    def full_steps(self) -> int | None:
        """Steps of the model's whole reverse process (an upper bound on steps); None for regressors."""
        if self.scheduler is None:
            return None
        return int(getattr(self.scheduler, "start_timestep", None) or self.scheduler.config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        if self.pipeline is not None:
            return self.pipeline.device
        params = list(self.network.parameters()) if isinstance(self.network, torch.nn.Module) else []
        return params[0].device if params else torch.device("cpu")

    def to(self, device: str | torch.device | None) -> "LoadedModel":
        """Moves the networks to ``device`` (in place, as nn.Module.to); returns self."""
        if device is None:
            return self
        if self.pipeline is not None:
            self.pipeline.to(device)
        elif isinstance(self.network, torch.nn.Module):
            self.network.to(device)
        return self

    def describe(self) -> str:
        name = type(self.network).__name__
        if self.kind == "regressor":
            return f"regressor ({name}), one network pass"
        latent = ", latent autoencoder" if self.autoencoder is not None else ""
        return (f"SDE ({name}{latent}, {type(self.scheduler).__name__}), {self.full_steps} trained steps, "
                f"default sampler {self.defaults.sampler} at {self.default_steps()} steps")


def model_folder(source: str | os.PathLike, *, options=None, latent_weights=None,
                 sde: Mapping[str, Any] | None = None, cache_dir=None) -> Path:
    """The folder a path source is loaded from: an official checkpoint file is imported into the cache
    first; ``options`` / ``latent_weights`` / ``sde`` describe such a file and are refused for a folder."""
    path = Path(source)
    if path.is_file():
        from refusion.official.importer import cached_import

        return cached_import(path, options=options, latent_weights=latent_weights, sde=sde, cache_dir=cache_dir)
    if options is not None or latent_weights is not None or sde:
        raise ValueError(f"options / latent_weights / sde describe an official checkpoint file; {str(path)!r} is "
                         f"not a file (import it with `refusion import` first, or pass the .pth)")
    if not path.is_dir():
        raise FileNotFoundError(f"model {str(path)!r} is neither a file nor a directory: pass a training run "
                                f"directory, a saved pipeline or model directory, an imported official folder, "
                                f"or an official checkpoint file (.pth) with its option file")
    return path


def _sde_model(pipeline, source: Path | None) -> LoadedModel:
    caps = capabilities_of(pipeline.unet, GENERIC_NOISE)
    if caps.purpose != "noise":
        raise ValueError(f"{source or 'the pipeline'}: its unet is a {type(pipeline.unet).__name__} "
                         f"({caps.purpose}), not a noise network")
    return LoadedModel("sde", pipeline.unet, caps, ModelDefaults(sampler=pipeline.scheduler.config.sampler),
                       scheduler=pipeline.scheduler, pipeline=pipeline, source=source)


def _regressor(net, source: Path | None, *, tlc=None, train_patch=None) -> LoadedModel:
    caps = capabilities_of(net, GENERIC_REGRESSOR)
    return LoadedModel("regressor", net.eval() if isinstance(net, torch.nn.Module) else net, caps,
                       ModelDefaults(tlc=tlc, train_patch=train_patch), source=source)


def _from_folder(folder: Path, weights: str) -> LoadedModel:
    from refusion.inference.pipeline import load_pipeline

    if (folder / "model_index.json").is_file():
        return _sde_model(load_pipeline(folder), folder)
    if (folder / "config.json").is_file():
        net = load_network(folder)
        caps = capabilities_of(net)
        if caps.purpose != "regressor":
            raise ValueError(f"{folder} holds a {type(net).__name__} ({caps.purpose} network) without its "
                             f"scheduler: load the run or pipeline folder that holds it (model_index.json or "
                             f"recipe.yml beside scheduler/)")
        return _regressor(net, folder, tlc=default_tlc(folder))
    task = read_run_task(folder)
    if task in ("sde", "distill"):
        return _sde_model(load_pipeline(folder, weights=weights), folder)
    if task == "regressor":
        net = load_network(weights_dir(folder, weights))
        return _regressor(net, folder, tlc=default_tlc(folder), train_patch=run_train_patch(folder))
    raise ValueError(f"{folder} is a {task!r} run: it cannot restore images on its own; load the latent sde run "
                     f"that uses it (recipe latent.autoencoder)")


def _from_object(source, scheduler) -> LoadedModel:
    from refusion.inference.pipeline import RefusionPipeline
    from refusion.schedulers.ir_sde import IRSDEScheduler

    if isinstance(source, RefusionPipeline):
        return _sde_model(source.with_scheduler(scheduler) if scheduler is not None else source, None)
    if not callable(source):
        raise TypeError(f"model must be a path, a RefusionPipeline, a LoadedModel or a network, got "
                        f"{type(source).__name__}")
    if declares_capabilities(source):
        caps = capabilities_of(source)
    else:           # a network that declares nothing: a noise network when a scheduler comes with it
        caps = GENERIC_NOISE if scheduler is not None else GENERIC_REGRESSOR
    if caps.purpose == "regressor":
        return _regressor(source, None)
    if caps.purpose != "noise":
        raise ValueError(f"model is a {type(source).__name__} ({caps.purpose}): it cannot restore images on its own")
    scheduler = scheduler if scheduler is not None else IRSDEScheduler()
    # a bare noise network runs without a pipeline: no autoencoder, no SR upscaling of the input
    return LoadedModel("sde", source, caps, ModelDefaults(sampler=scheduler.config.sampler), scheduler=scheduler)


def load_model(source: Any, *, options: str | os.PathLike | None = None,
               latent_weights: str | os.PathLike | None = None, sde: Mapping[str, Any] | None = None,
               device: str | torch.device | None = None, weights: str = "model", scheduler=None,
               cache_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load any model a user brings (see the module doc) and move it to ``device`` (None: where it is).

    ``scheduler``: the IRSDEScheduler / DenoisingSDEScheduler of a noise network given as a module (a
    default IRSDEScheduler when omitted), or another scheduler for a pipeline. A network that declares
    no capabilities is taken as a regressor unless a ``scheduler`` says it is a noise network.
    Errors name the source: FileNotFoundError for a missing path, ValueError for a folder or file that
    is not a model (or a model that cannot restore on its own, such as an autoencoder run).
    """
    if isinstance(source, LoadedModel):
        return source.to(device)
    if isinstance(source, (str, os.PathLike)):
        folder = model_folder(source, options=options, latent_weights=latent_weights, sde=sde, cache_dir=cache_dir)
        model = _from_folder(folder, weights)
        if scheduler is not None and model.pipeline is not None:
            model = _sde_model(model.pipeline.with_scheduler(scheduler), model.source)
    else:
        model = _from_object(source, scheduler)
    return model.to(device)
