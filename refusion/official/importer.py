"""Import an official checkpoint (+ its option file) into a ready refusion folder with a model card.

``import_official(out, weights=..., options=None, latent_weights=None, sde=None)``:

1. reads the checkpoint safely (tensors and plain containers only) and detects the architecture
   from its keys and shapes (:mod:`refusion.official.detection`);
2. with an option file, checks it against the weights (width, channels, block counts, latent
   channels) and takes from it what the weights cannot say (TLC, the latent-dehazing skip, the SDE,
   SR upscaling, ...);
3. writes, into a temporary folder beside ``out`` renamed into place at the end (so a refusal or a
   crash never leaves a half-written ``out``):
   - noise networks: a ``RefusionPipeline.save_pretrained`` folder (network, scheduler from the
     options, the autoencoder for latent tasks) that ``refusion.load_pipeline`` / ``refusion.sample``
     / ``refusion restore`` / ``refusion evaluate`` use as they are;
   - regressors: a saved network folder that ``refusion.restore`` uses, with ``inference.json``
     carrying TLC for the official ``...Local`` types;
   - ``README.md``: sources with sha256, options, what was detected / given / defaulted, parameter
     count, the restore command, the source's licence.

Every refusal is an :class:`ImportRefusal` naming the file, the key and both values.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from refusion.checksums import sha256_file, write_weights_manifest
from refusion.inference.loading import INFERENCE_FILE
from refusion.official.card import write_model_card
from refusion.official.checkpoints import (OfficialCheckpointError, extract_state_dict, load_state_dict_strict,
                                           read_official)
from refusion.official.detection import DetectionError, detect_architecture
from refusion.official.options import OptionsError, check_against, read_options
from refusion.models.capabilities import capabilities_of

# the settings a noise network needs that its weights cannot give (the Refusion defaults beside them)
SDE_KEYS = {"max_sigma": 50.0, "T": 100, "schedule": "cosine", "eps": 0.005}


class ImportRefusal(ValueError):
    """The checkpoint / options cannot be imported; nothing was written. The message says why."""


@dataclass
class ImportedModel:
    path: Path
    kind: str                          # "pipeline" or "regressor"
    network: str                       # MODELS name
    kwargs: dict[str, Any]
    num_parameters: int
    detected: dict[str, Any]           # constructor arguments read off the weights
    given: dict[str, Any]              # arguments / settings taken from the options or the command line
    defaulted: dict[str, str]          # arguments neither could determine: default used and why
    sde: dict[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict)   # file -> sha256
    notes: list[str] = field(default_factory=list)


def read_checkpoint(path: str | os.PathLike, *, param_key: str | None = None, what: str = "--weights") -> dict:
    """The bare state dict of an official checkpoint file, or an ImportRefusal naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefusal(f"{what} {path}: no such file")
    try:
        obj = read_official(path)
        return extract_state_dict(obj, param_key=param_key, source=str(path))
    except OfficialCheckpointError as exc:
        raise ImportRefusal(str(exc)) from exc
    except Exception as exc:  # torch.load on a file that is no checkpoint: zip, pickle or EOF errors
        raise ImportRefusal(f"{what} {path} is not a PyTorch checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def parse_sde_settings(items: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"max_sigma": "50", "T": "100", ...}`` (from ``--sde KEY=VALUE``) typed and checked."""
    if not items:
        return None
    unknown = sorted(set(items) - set(SDE_KEYS) - {"sample_T"})
    if unknown:
        raise ImportRefusal(f"--sde: unknown setting(s) {unknown}; allowed: {sorted(SDE_KEYS) + ['sample_T']}")
    missing = sorted(set(SDE_KEYS) - set(items))
    if missing:
        raise ImportRefusal(f"--sde needs every one of {list(SDE_KEYS)}; missing {missing} "
                            f"(the Refusion defaults: {_defaults_text()})")
    try:
        out = {"max_sigma": float(items["max_sigma"]), "T": int(items["T"]), "schedule": str(items["schedule"]),
               "eps": float(items["eps"])}
        if "sample_T" in items:
            out["sample_T"] = int(items["sample_T"])
    except (TypeError, ValueError) as exc:
        raise ImportRefusal(f"--sde: {exc}") from exc
    return out


def _defaults_text() -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in SDE_KEYS.items())


def _needs_sde_message(weights: Path, name: str) -> str:
    return (f"{weights} holds a {name} noise network: its SDE settings ({', '.join(SDE_KEYS)}) are not in the "
            f"weights and must match the training run exactly (a different T or max_sigma gives noise or an "
            f"unchanged image). Pass the official option file (--options codes/config/<task>/options/test/"
            f"<file>.yml) or the settings explicitly, e.g. --sde {_defaults_text()} (the Refusion defaults).")


def import_official(out: str | os.PathLike, *, weights: str | os.PathLike, options: str | os.PathLike | None = None,
                    latent_weights: str | os.PathLike | None = None, sde: Mapping[str, Any] | None = None,
                    param_key: str | None = None, overwrite: bool = False) -> ImportedModel:
    """Write a ready folder for an official checkpoint into ``out``; see the module docstring."""
    out, weights = Path(out), Path(weights)
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise ImportRefusal(f"output folder {out} already exists and is not empty (pass --overwrite to replace it)")
    opts = _read_options(options)
    try:
        state_dict = read_checkpoint(weights, param_key=param_key or _options_param_key(opts))
    except ImportRefusal:
        if param_key is not None or _options_param_key(opts) is None:
            raise
        # BasicSR files name `params` by default; a checkpoint holding only `params_ema` is still fine
        state_dict = read_checkpoint(weights)
    found = _detect(state_dict, weights)
    if opts is not None:
        _check(opts, found, options)
    kwargs, given, defaulted = _resolve_kwargs(found, opts)
    from refusion.models import MODELS

    net = MODELS[found.name](**kwargs)
    load_state_dict_strict(net, state_dict, source=str(weights))
    sources = {str(weights): sha256_file(weights)}
    if options is not None:
        sources[str(options)] = sha256_file(Path(options))
    result = ImportedModel(path=out, kind="regressor" if found.purpose == "regressor" else "pipeline",
                           network=found.name, kwargs=kwargs, num_parameters=sum(p.numel() for p in net.parameters()),
                           detected=dict(found.kwargs), given=given, defaulted=defaulted, sources=sources)
    if found.purpose == "autoencoder":
        raise ImportRefusal(f"{weights} holds a LatentUNet autoencoder on its own: import the latent noise network "
                            f"with --weights NOISE.pth --latent-weights {weights} --options OPTIONS.yml")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent if out.parent.exists() else None))
    try:
        if result.kind == "regressor":
            _write_regressor(staging, net, opts, result)
        else:
            _write_pipeline(staging, net, opts, sde, latent_weights, result, weights)
        write_model_card(staging, result, opts)
        write_weights_manifest(staging)       # sha256 of every file, verified by the loaders
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _options_param_key(opts) -> str | None:
    return opts.inference.param_key if opts is not None else None


def _read_options(options):
    if options is None:
        return None
    try:
        return read_options(options)
    except OptionsError as exc:
        raise ImportRefusal(str(exc)) from exc
    except FileNotFoundError as exc:
        raise ImportRefusal(f"--options {options}: no such file") from exc


def _detect(state_dict, weights: Path):
    try:
        return detect_architecture(state_dict)
    except DetectionError as exc:
        raise ImportRefusal(f"{weights}: {exc}") from exc


def _check(opts, found, options) -> None:
    try:
        problems = check_against(opts, found.name, found.kwargs)
    except OptionsError as exc:
        raise ImportRefusal(str(exc)) from exc
    if problems:
        raise ImportRefusal(f"the options {options} contradict the weights:\n  " + "\n  ".join(problems))


def _resolve_kwargs(found, opts) -> tuple[dict, dict, dict]:
    """Detected constructor arguments, completed from the options where the weights cannot tell."""
    kwargs = dict(found.build_kwargs)        # undetermined arguments at the value that fits the weights
    given, defaulted = {}, {}
    option_kwargs = dict(opts.network.kwargs) if opts is not None and opts.network.name == found.name else {}
    for arg, why in found.undetermined.items():
        if not why.constructor:              # e.g. TLC's training size: applied at inference, not built
            continue
        if arg in option_kwargs:
            kwargs[arg] = option_kwargs[arg]
            given[arg] = option_kwargs[arg]
        else:
            defaulted[arg] = str(why)
    return kwargs, given, defaulted


def _write_regressor(folder: Path, net, opts, result: ImportedModel) -> None:
    net.save_pretrained(folder, safe_serialization=True)
    inference: dict[str, Any] = {"tlc": None}
    if opts is not None and opts.network.tlc is not None:
        tlc = opts.network.tlc
        inference["tlc"] = list(tlc.train_size[-2:])
        result.given["tlc"] = f"training size {tlc.train_size[-2]}x{tlc.train_size[-1]} ({opts.network.official_type})"
    else:
        result.notes.append("TLC off: the weights cannot say whether the model was meant to run with TLC; "
                            "pass --options with the official NAFNetLocal/BaselineLocal file to switch it on")
    (folder / INFERENCE_FILE).write_text(json.dumps(inference, indent=2) + "\n")


def _scheduler_settings(opts, sde, weights: Path, name: str) -> dict[str, Any]:
    settings = parse_sde_settings(sde)
    if settings is None and opts is not None and opts.sde is not None:
        s = opts.sde
        settings = {"max_sigma": float(s.max_sigma), "T": int(s.T), "schedule": s.schedule, "eps": float(s.eps),
                    "sde_type": s.sde_type, "official_sampler": s.sampler}
        if getattr(s, "sample_T", None):
            settings["sample_T"] = int(s.sample_T)
    if settings is None:
        raise ImportRefusal(_needs_sde_message(weights, name))
    return settings


def _write_pipeline(folder: Path, net, opts, sde, latent_weights, result: ImportedModel, weights: Path) -> None:
    from refusion.inference.pipeline import RefusionPipeline
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
    from refusion.schedulers.ir_sde import IRSDEScheduler

    settings = _scheduler_settings(opts, sde, weights, result.network)
    result.sde = settings
    unconditional = capabilities_of(net).conditioning == "none"      # net(x_t, t): the denoising-sde networks
    common = dict(max_sigma=settings["max_sigma"], num_train_timesteps=settings["T"], schedule=settings["schedule"],
                  eps=settings["eps"])
    if settings.get("sde_type", "ir-sde") == "denoising":
        if not unconditional:
            raise ImportRefusal(f"{opts.source}: the DenoisingSDE runs an unconditional network net(x, t), but "
                                f"{weights} holds a {result.network}")
        noise_level = opts.inference.noise_sigma
        # the official denoising test runs the reverse ODE from the step whose sigma_bar fits the noise level
        sampler = settings.get("official_sampler") if settings.get("official_sampler") in ("ode", "sde", "posterior") \
            else "ode"
        scheduler = DenoisingSDEScheduler(**common, sampler=sampler, noise_level=noise_level)
        result.given["noise_level"] = noise_level
    else:
        if unconditional:
            raise ImportRefusal(f"{weights} holds an unconditional {result.network} (the denoising-sde networks); "
                                f"it needs the DenoisingSDE: pass the denoising-sde option file")
        scheduler = IRSDEScheduler(**common)
    autoencoder = _autoencoder(opts, latent_weights, net, result, weights)
    upscale = opts.inference.upscale if opts is not None and opts.inference.upscale else 1
    if upscale > 1:
        result.given["lq_upscale"] = upscale
    pipe = RefusionPipeline(unet=net, scheduler=scheduler, autoencoder=autoencoder, lq_upscale=int(upscale))
    pipe.save_pretrained(folder)


def _autoencoder(opts, latent_weights, net, result: ImportedModel, weights: Path):
    needs_latent = opts is not None and opts.latent is not None
    if latent_weights is None:
        if needs_latent:
            raise ImportRefusal(f"the options {opts.source} describe a latent model (network_L): it needs both weight "
                                f"files; pass the autoencoder with --latent-weights (without it the output has "
                                f"colour casts){_named_path(opts.latent)}")
        return None
    latent_weights = Path(latent_weights)
    state_dict = read_checkpoint(latent_weights, what="--latent-weights")
    found = _detect(state_dict, latent_weights)
    if found.purpose != "autoencoder":
        raise ImportRefusal(f"--latent-weights {latent_weights} holds a {found.name}, not a LatentUNet autoencoder")
    kwargs = dict(found.kwargs)
    if needs_latent:
        for arg in found.undetermined:
            if arg in opts.latent.kwargs:
                kwargs[arg] = opts.latent.kwargs[arg]
        for arg, value in opts.latent.kwargs.items():
            if arg in found.kwargs and _norm(found.kwargs[arg]) != _norm(value):
                raise ImportRefusal(f"{opts.source}: network_L {arg} is {value!r} but {latent_weights} has {found.kwargs[arg]!r}")
    from refusion.models import MODELS

    net_channels, embed_dim = capabilities_of(net).input_channels, kwargs.get("embed_dim")
    if net_channels is not None and embed_dim is not None and net_channels != embed_dim:
        raise ImportRefusal(f"the noise network {weights} takes {net_channels}-channel inputs but the autoencoder "
                            f"{latent_weights} has embed_dim {embed_dim}: they do not belong together")
    ae = MODELS[found.name](**kwargs)
    load_state_dict_strict(ae, state_dict, source=str(latent_weights))
    result.sources[str(latent_weights)] = sha256_file(latent_weights)
    result.given["autoencoder"] = f"{found.name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    return ae


def _named_path(latent) -> str:
    path = getattr(latent, "pretrain_model_L", None)
    return f" (the options name {path})" if path else ""


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def cached_import(weights: str | os.PathLike, *, options: str | os.PathLike | None = None,
                  latent_weights: str | os.PathLike | None = None, sde: Mapping[str, Any] | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """Import into a cache folder keyed by the sha256 of the inputs (reused when it exists)."""
    parts = [sha256_file(Path(weights))]
    parts += [sha256_file(Path(p)) if p else "-" for p in (options, latent_weights)]
    parts.append(json.dumps(dict(sde or {}), sort_keys=True))
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    # the project cache the LPIPS weights use too (refusion.evaluation.lpips_weights.cache_dir)
    base = cache_dir or os.environ.get("REFUSION_CACHE_DIR") or Path.home() / ".cache" / "refusion"
    root = Path(base).expanduser() / "imported"
    folder = root / f"{Path(weights).stem}-{key}"
    if not (folder / "README.md").is_file():
        root.mkdir(parents=True, exist_ok=True)
        import_official(folder, weights=weights, options=options, latent_weights=latent_weights, sde=sde,
                        overwrite=True)
    return folder


__all__ = ["ImportRefusal", "ImportedModel", "import_official", "cached_import", "read_checkpoint",
           "parse_sde_settings", "SDE_KEYS"]
