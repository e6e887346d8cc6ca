"""Official option files (IR-SDE / Refusion, NAFNet, HINet) -> one typed description of the model.

``read_options(path)`` reads an official YAML option file (train or test) with a safe loader and
returns an :class:`OfficialOptions`: the refusion network (a ``refusion.models.MODELS`` name and its
constructor arguments, the official defaults filled in), the SDE, the latent autoencoder, and what
the official test script does at inference, as data. Every key is accounted for: ``ignored`` holds
the keys inference does not need with the reason, ``unknown`` the keys that may matter but are not
understood (a warning, or an error with ``strict=True``). Malformed files raise :class:`OptionsError`
naming the file, the key, what was expected and the allowed values. ``check_against`` compares the
options with the network read off a checkpoint. The tables behind it: :mod:`.option_tables`.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from refusion.official.option_reader import (
    OptionsError,
    _Reader,
    parse_basicsr,
    parse_irsde,
)

STYLES = ("ir-sde", "basicsr")
SDE_TYPES = ("ir-sde", "denoising")
__all__ = [
    "InferenceSpec",
    "LatentSpec",
    "NetworkSpec",
    "OfficialOptions",
    "OptionsError",
    "OptionsMismatchError",
    "OptionsWarning",
    "SDESpec",
    "TLCSpec",
    "check_against",
    "parse_options",
    "read_options",
]


class OptionsMismatchError(OptionsError):
    """The options contradict the network read off the weights (``check_against(strict=True)``)."""


class OptionsWarning(UserWarning):
    """Keys of an option file that may change inference but are not understood."""


@dataclass(frozen=True)
class TLCSpec:
    """Test-time local converter of the official ``...Local`` classes."""
    train_size: tuple[int, int, int, int]  # (N, C, H, W), as the official class takes it
    base_size: tuple[int, int]             # the local pooling window at input size: int(1.5 x H, W)
    fast_imp: bool = False


@dataclass(frozen=True)
class NetworkSpec:
    name: str                   # refusion.models.MODELS name
    kwargs: dict[str, Any]      # its constructor arguments (lists as tuples)
    official_type: str          # the official class name (which_model_G / which_model / type)
    section: str                # network_G, network_L or network_g
    origin: dict[str, str]      # constructor argument -> the official key (or default) it came from
    tlc: Optional[TLCSpec] = None

    @property
    def channels(self) -> Optional[int]:
        """Image (or, for a latent noise network, latent) channels."""
        for key in ("img_channel", "in_nc", "in_chn", "in_ch"):
            if key in self.kwargs:
                return self.kwargs[key]
        return None

    def build(self):
        """``MODELS[name](**kwargs)``, untrained; TLC (``tlc``) is applied by the caller."""
        from refusion.models import MODELS

        if self.name not in MODELS:
            raise OptionsError(f"refusion.models has no network {self.name!r} (for the official "
                               f"{self.official_type}); known: {', '.join(sorted(MODELS))}")
        return MODELS[self.name](**self.kwargs)


@dataclass(frozen=True)
class LatentSpec(NetworkSpec):
    """The latent autoencoder (network_L) of the latent tasks."""
    pretrain_model_L: Optional[str] = None


@dataclass(frozen=True)
class SDESpec:
    sde_type: str               # "ir-sde" (IRSDE) or "denoising" (DenoisingSDE of denoising-sde)
    max_sigma: float            # 0-255 scale (values < 1 taken as already normalised)
    T: int
    schedule: str
    eps: float                  # the DenoisingSDE has it fixed at 0.04
    sampler: str                # the official test's reverse process: sde, posterior or ode
    sample_T: Optional[int] = None  # latent-dehazing writes it; no official script reads it

    @property
    def scheduler_class(self) -> str:
        """The refusion.schedulers class of this SDE."""
        return "IRSDEScheduler" if self.sde_type == "ir-sde" else "DenoisingSDEScheduler"

    def scheduler_kwargs(self, sampler: Optional[str] = None) -> dict[str, Any]:
        """``scheduler_class(**kwargs)`` for this SDE, with the official sampler unless one is given
        (a DenoisingSDEScheduler also takes ``noise_level``: ``InferenceSpec.noise_sigma``)."""
        return {"max_sigma": self.max_sigma, "num_train_timesteps": self.T, "schedule": self.schedule,
                "eps": self.eps, "sampler": sampler or self.sampler}


@dataclass(frozen=True)
class InferenceSpec:
    mode: str                   # a key of option_tables.STEPS
    steps: tuple[str, ...]      # what the official test does, in order
    pretrain_model_G: Optional[str] = None
    pretrain_model_L: Optional[str] = None
    param_key: Optional[str] = None     # BasicSR checkpoint wrapper key (path.param_key)
    upscale: Optional[int] = None       # LQ upsampled by this factor before the SDE
    upscale_fn: Optional[str] = None    # the exact upsampling function of the official test
    mask_root: Optional[str] = None     # inpainting masks folder
    noise_sigma: Optional[float] = None  # denoising-sde: noise added to the GT (0-255 scale)
    stereo: bool = False                # left/right pairs, 6 channels
    lens_metadata: Optional[str] = None  # latent-bokeh: the meta file of lens information
    grids_crop_size: Optional[tuple[int, int]] = None  # BasicSR val.grids tiles (H, W)


@dataclass(frozen=True)
class OfficialOptions:
    style: str                  # "ir-sde" or "basicsr"
    source: str
    task: str                   # IR-SDE task folder, or the BasicSR options folder (GoPro, SIDD, ...)
    distortion: Optional[str]
    model_type: str             # the official `model` / `model_type`
    name: Optional[str]
    network: NetworkSpec
    sde: Optional[SDESpec]
    latent: Optional[LatentSpec]
    inference: InferenceSpec
    ignored: dict[str, str]     # dotted key -> why inference does not need it
    unknown: dict[str, str]     # dotted key -> why it may matter
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)




# ---------------------------------------------------------------------------------------------
# public API


def parse_options(data: Any, source: str = "<dict>", *, task: Optional[str] = None,
                  strict: bool = False) -> OfficialOptions:
    """Read an official option mapping (the parsed YAML).

    ``task`` names the IR-SDE task folder (deshadow, sisr, latent-dehazing, ...) when neither the
    source path (``.../codes/config/<task>/options/...``) nor the content tells it. Keys that may
    matter but are not understood are warned about (:class:`OptionsWarning`), or raise with
    ``strict=True``.
    """
    if data is None:
        raise OptionsError(f"{source}: the file is empty; expected an official option file (network_G "
                           "for IR-SDE / Refusion, network_g for NAFNet / HINet)")
    if not isinstance(data, Mapping):
        raise OptionsError(f"{source}: an option file must be a mapping of keys, got {type(data).__name__}")
    r = _Reader(data, source)
    if "network_G" in data and "network_g" in data:
        r.fail("network_g", "both network_G (IR-SDE style) and network_g (BasicSR style): keep one")
    if "network_G" in data:
        fields = parse_irsde(r, task)
    elif "network_g" in data:
        fields = parse_basicsr(r, task)
    else:
        raise OptionsError(f"{source}: no network section: expected network_G (IR-SDE / Refusion: "
                           "which_model_G and setting) or network_g (BasicSR: NAFNet, Baseline, HINet: "
                           f"type and arguments); top-level keys: {', '.join(map(str, data)) or 'none'}")
    if r.unknown:
        listing = "; ".join(f"{key}: {why}" for key, why in r.unknown.items())
        if strict:
            raise OptionsError(f"{source}: keys not understood (strict): {listing}")
        warnings.warn(f"{source}: keys not understood: {listing}", OptionsWarning, stacklevel=2)
    network, latent = fields["network"], fields["latent"]
    for spec in (network, latent):
        if spec and spec["tlc"]:
            spec["tlc"] = TLCSpec(**spec["tlc"])
    return OfficialOptions(
        source=source, name=data.get("name"), style=fields["style"], task=fields["task"],
        distortion=fields["distortion"], model_type=fields["model_type"],
        network=NetworkSpec(**network), latent=LatentSpec(**latent) if latent else None,
        sde=SDESpec(**fields["sde"]) if fields["sde"] else None, inference=InferenceSpec(**fields["inference"]),
        ignored=r.ignored, unknown=r.unknown, notes=tuple(r.notes))


def read_options(path: str | Path, *, task: Optional[str] = None, strict: bool = False) -> OfficialOptions:
    """Read an official option file with a safe YAML loader (see :func:`parse_options`)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionsError(f"option file not found: {source!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionsError(f"cannot read option file {source!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise OptionsError(f"{source}: refusing a YAML tag the safe loader does not construct "
                           f"({(exc.problem or str(exc)).strip()}); option files are read as plain YAML, "
                           "python object tags are not run") from None
    except yaml.YAMLError as exc:
        raise OptionsError(f"{source}: not valid YAML: {exc}") from None
    return parse_options(data, source, task=task, strict=strict)


def _plain(value: Any) -> Any:
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_against(options: OfficialOptions, name: str, kwargs: Mapping[str, Any], *,
                  strict: bool = False) -> list[str]:
    """Contradictions between ``options`` and a network read off the weights (``name``: its MODELS
    name, ``kwargs``: its constructor arguments), one message each naming the options file, the key
    and both values. A ``LatentUNet`` is compared with the options' autoencoder (network_L); a
    latent noise network also with the autoencoder's embed_dim. ``strict`` raises
    :class:`OptionsMismatchError` instead of returning a non-empty list."""
    spec = options.network
    if name == "LatentUNet" and options.latent is not None:
        spec = options.latent
    src = options.source
    messages = []
    if name != spec.name:
        messages.append(f"{src}: {spec.section}: the options describe the official {spec.official_type} "
                        f"(refusion {spec.name}) but the weights are a {name}")
    else:
        for key, value in kwargs.items():
            if key in spec.kwargs and _plain(value) != _plain(spec.kwargs[key]):
                messages.append(f"{src}: {spec.origin[key]}: the options give {key}={_plain(spec.kwargs[key])!r}, "
                                f"the weights have {key}={_plain(value)!r}")
    latent = options.latent
    if latent is not None and spec is options.network and name == spec.name:
        channels = next((kwargs[k] for k in ("img_channel", "in_nc") if k in kwargs), None)
        embed = latent.kwargs["embed_dim"]
        if channels is not None and channels != embed:
            messages.append(f"{src}: network_L.setting.embed_dim: the autoencoder's latents have {embed} "
                            f"channels but the weights' noise network takes {channels}")
    if strict and messages:
        raise OptionsMismatchError("\n".join(messages))
    return messages
