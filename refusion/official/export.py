"""Export a refusion network as the checkpoint its official code saves and loads: the inverse of
:mod:`refusion.official.importer` (the same keys, the same wrapper).

Layouts, as the official training code writes them and its test code reads them:

- NAFNet, Baseline (megvii-research/NAFNet) and HINet (megvii-model/HINet), all BasicSR-based:
  ``{'params': state_dict}`` (BasicSR's ``save_network`` with its default ``param_key``, which
  ``load_network`` and the option files' ``path.param_key`` default read back);
- the IR-SDE noise networks (ConditionalNAFNet, ConditionalUNet and the copies of the denoising-sde,
  latent-bokeh and stereo-sr tasks) and the latent autoencoder ``UNet`` (Algolzw/image-restoration-sde):
  the bare state dict of ``torch.save(network.state_dict())``;
- NAFFT-Net has no official code: it is written in the BasicSR layout of its NAFNet relatives, which
  ``refusion import`` and BasicSR-style loaders read.

refusion's networks use the official key names unchanged (see :mod:`.checkpoints`), so the keys are
the network's own. Tensors are written contiguous, float32 and on the CPU with ``torch.save``; the
file loads with ``torch.load(weights_only=True)``. :func:`official_form` says which official class
and option-file settings build the same network, and refuses networks no official class can build.
"""
from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from refusion.official import option_tables as T

BASICSR, IRSDE = "basicsr", "ir-sde"
IRSDE_REPO = "Algolzw/image-restoration-sde"
BASICSR_REPOS = {"NAFNet": "megvii-research/NAFNet", "Baseline": "megvii-research/NAFNet", "HINet": "megvii-model/HINet"}
# refusion arguments an official class does not take, with the value built into it; None: an argument
# without weights or effect at inference (dropout), so any value exports. The official NAFNet builds
# NAFBlock(c) with its defaults DW_Expand=2, FFN_Expand=2 (Baseline takes both as arguments).
BUILT_IN: dict[str, dict[str, Any]] = {
    "NAFNet": {"dw_expand": 2, "ffn_expand": 2, "drop_out_rate": None},
    "Baseline": {"drop_out_rate": None},
}


class ExportRefusal(ValueError):
    """The network has no official form, or the output cannot be written; nothing was written."""


@dataclass(frozen=True)
class OfficialForm:
    """The official class that builds a network, and the option-file settings that make it the same."""

    network: str                      # refusion MODELS name
    layout: str                       # BASICSR ({'params': sd}) or IRSDE (bare sd)
    repository: str                   # "" when there is no official code
    official_type: str | None         # the class an option file names (None: no official code)
    tasks: tuple[str, ...] = ()       # IR-SDE task folders whose test builds it
    settings: dict[str, Any] = field(default_factory=dict)   # option-file keys of the class -> values
    notes: tuple[str, ...] = ()

    @property
    def wrapper(self) -> str | None:
        return "params" if self.layout == BASICSR else None


def _config(network: nn.Module) -> dict[str, Any]:
    config = dict(getattr(network, "config", {}) or {})
    params = list(inspect.signature(type(network).__init__).parameters)[1:]
    return {k: _plain(config[k]) for k in params if k in config}


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _candidates(name: str):
    """(layout, task, official type, OfficialNet) of every official class that holds ``name``'s weights."""
    for official_type, spec in T.BASICSR_NETWORKS.items():
        if spec.refusion == name:
            yield BASICSR, None, official_type, spec
    for task, table in T.IRSDE_NETWORKS.items():
        for official_type, spec in table.items():
            if spec.refusion == name:
                yield IRSDE, task, official_type, spec


def official_form(network: nn.Module, *, tlc: tuple[int, int] | None = None) -> OfficialForm:
    """The official class and option-file settings of ``network``; ExportRefusal if it has none.

    ``tlc``: the TLC training size the network runs with (an imported NAFNetLocal / BaselineLocal),
    which selects the official ``...Local`` class."""
    name, config = type(network).__name__, _config(network)
    if name == "NAFFTNet":
        return OfficialForm(name, BASICSR, "", None, notes=(
            "NAFFT-Net has no official code: the file has the BasicSR layout of NAFNet ({'params': ...}), "
            "which `refusion import` reads back",))
    candidates = list(_candidates(name))
    if not candidates:
        raise ExportRefusal(f"{name} has no official checkpoint format: no official code builds it "
                            f"(official forms exist for NAFNet, Baseline, HINet, the IR-SDE networks and the latent UNet)")
    fitting = [c for c in candidates if all(config.get(k) == _plain(v) for k, v in c[3].fixed.items())]
    if not fitting:
        _, _, official_type, spec = candidates[0]
        key, value = next((k, v) for k, v in spec.fixed.items() if config.get(k) != _plain(v))
        raise ExportRefusal(f"{name}({key}={config.get(key)!r}) has no official form: the official {official_type} "
                            f"({IRSDE_REPO if candidates[0][0] == IRSDE else BASICSR_REPOS.get(official_type)}) "
                            f"fixes {key}={value!r}")
    local = [c for c in fitting if (c[3].local_train_size is not None) == (tlc is not None)]
    layout, _, official_type, spec = (local or fitting)[0]
    settings, notes = {}, []
    for key, value in config.items():
        if key in spec.defaults and key not in spec.ignored:
            settings[key] = value
        elif key in spec.fixed:
            continue
        elif key in BUILT_IN.get(name, {}):
            built_in = BUILT_IN[name][key]
            if built_in is not None and value != built_in:
                raise ExportRefusal(f"{name}({key}={value!r}) has no official form: the official {official_type} "
                                    f"builds its blocks with {key}={built_in!r}")
        else:
            raise ExportRefusal(f"{name}({key}={value!r}) has no official form: the official {official_type} "
                                f"takes no {key} (its arguments: {', '.join(spec.defaults)})")
    if spec.local_train_size is not None and tlc is not None:
        settings["train_size"] = [1, config.get("img_channel", 3), int(tlc[0]), int(tlc[1])]
    elif tlc is not None:
        notes.append(f"TLC ({tlc[0]}x{tlc[1]}) has no official {official_type}Local class: it runs without TLC")
    tasks = tuple(task for _, task, t, _ in fitting if t == official_type and task is not None)
    if name == "LatentUNet":
        tasks = (*T.LATENT_TASKS, *tasks)
        notes.append("the latent tasks load it as network_L (path.pretrain_model_L) beside the noise network; "
                     "codes/config/unet-latent tests it alone as network_G")
    repo = IRSDE_REPO if layout == IRSDE else BASICSR_REPOS[official_type.removesuffix("Local")]
    return OfficialForm(name, layout, repo, official_type, tasks, settings, tuple(notes))


def official_state_dict(network: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The network's tensors under their official names: CPU, float32, each in its own compact storage
    (a view would otherwise save the whole storage it looks into)."""
    out = OrderedDict()
    for key, tensor in network.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()
        out[key] = tensor.clone(memory_format=torch.contiguous_format)
    return out


def option_sections(form: OfficialForm, weights: str, *, sde: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The option-file sections with which the official test builds ``form``'s network from ``weights``
    (merge them into one of its test option files); {} when there is no official code."""
    if form.official_type is None:
        return {}
    if form.layout == BASICSR:
        return {"network_g": {"type": form.official_type, **form.settings},
                "path": {"pretrain_network_g": weights, "strict_load_g": True}}
    setting = dict(form.settings)
    if form.network == "LatentUNet":        # the second network of the latent tasks
        return {"network_L": {"which_model": form.official_type, "setting": setting},
                "path": {"pretrain_model_L": weights}}
    # the latent tasks' networks.py reads which_model, the others which_model_G
    which = "which_model" if set(form.tasks) & set(T.LATENT_TASKS) else "which_model_G"
    sections = {"network_G": {which: form.official_type, "setting": setting}, "path": {"pretrain_model_G": weights}}
    if sde:
        sections["sde"] = dict(sde)
    return sections


def sde_options(scheduler_config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The official ``sde:`` section of a refusion scheduler config, and notes on what it cannot say."""
    sde = {"max_sigma": scheduler_config["max_sigma"], "T": scheduler_config["num_train_timesteps"]}
    if scheduler_config.get("_class_name") != "DenoisingSDEScheduler":
        return {**sde, "schedule": scheduler_config["schedule"], "eps": scheduler_config["eps"]}, []
    # the official denoising-sde test builds DenoisingSDE(max_sigma, T): cosine schedule, eps 0.04
    if (scheduler_config.get("schedule"), scheduler_config.get("eps")) != ("cosine", 0.04):
        return sde, [f"the official DenoisingSDE fixes schedule cosine and eps 0.04; this network was trained "
                     f"with {scheduler_config.get('schedule')} / {scheduler_config.get('eps')}"]
    return sde, []


def test_command(form: OfficialForm) -> str:
    """How the official code tests a model with the option file of :func:`option_sections`."""
    if form.layout == BASICSR and form.official_type is not None:
        return f"python basicsr/test.py -opt options/test/<dataset>/<file>.yml   (in a clone of {form.repository})"
    if form.layout == IRSDE:
        task = form.tasks[0] if len(form.tasks) == 1 else "<task>"
        return f"cd codes/config/{task} && python test.py -opt=<option file>.yml   (in a clone of {IRSDE_REPO})"
    return ""


@dataclass(frozen=True)
class ExportedCheckpoint:
    path: Path
    form: OfficialForm
    keys: tuple[str, ...]
    num_parameters: int


def export_official(network: nn.Module, path: str | os.PathLike, *, overwrite: bool = False,
                    tlc: tuple[int, int] | None = None) -> ExportedCheckpoint:
    """Write ``network`` to ``path`` in its official layout (module docstring); returns what it wrote.

    The file is written beside ``path`` and renamed into place, so a failure leaves no partial file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportRefusal(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    if not path.parent.is_dir():
        raise ExportRefusal(f"the output folder {path.parent} of {path.name} does not exist")
    form = official_form(network, tlc=tlc)
    state_dict = official_state_dict(network)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({form.wrapper: state_dict} if form.wrapper else state_dict, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportedCheckpoint(path, form, tuple(state_dict), sum(p.numel() for p in network.parameters()))


__all__ = ["ExportRefusal", "ExportedCheckpoint", "OfficialForm", "export_official", "official_form",
           "official_state_dict", "option_sections", "sde_options", "test_command", "BASICSR", "IRSDE"]
