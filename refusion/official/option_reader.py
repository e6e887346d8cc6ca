"""Reading official option files into plain fields (see :mod:`refusion.official.options`)."""
from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Mapping, NoReturn, Optional

from refusion.official import option_tables as T
from refusion.schedulers.ir_sde import IRSDEScheduler


class OptionsError(ValueError):
    """An option file that cannot be used; the message names the file, the key and what is allowed."""


class _Reader:
    """The raw mapping of one file plus what parsing found out about its keys."""

    def __init__(self, raw: Mapping[str, Any], source: str):
        self.raw, self.source = raw, source
        self.ignored: dict[str, str] = {}
        self.unknown: dict[str, str] = {}
        self.notes: list[str] = []
        self.task_from_content = False  # the task was inferred from the keys, not named

    def fail(self, key: str, message: str) -> NoReturn:
        raise OptionsError(f"{self.source}: {key}: {message}")

    def section(self, key: str, *, required: str = "") -> dict[str, Any]:
        node: Any = self.raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            if required:
                self.fail(key, f"missing section; {required}")
            return {}
        if not isinstance(node, Mapping):
            self.fail(key, f"must be a mapping of keys, got {node!r} ({type(node).__name__})")
        return dict(node)

    def value(self, key: str, value: Any, kind: str, *, allowed: tuple = ()) -> Any:
        """Check ``value`` (the value of ``key``): kind int, positive, number, str, bool or ints."""
        ok = {"int": _is_int(value) and value >= 0, "positive": _is_int(value) and value >= 1,
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "str": isinstance(value, str), "bool": isinstance(value, bool),
              "ints": isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 0 for v in value)}[kind]
        if not ok:
            hint = (" (YAML 1.1, which the official loaders follow too, reads a number like 5e-3 without "
                    "a dot as a string: write 5.0e-3)") if isinstance(value, str) and kind == "number" else ""
            self.fail(key, f"must be {_KINDS[kind]}, got {value!r} ({type(value).__name__}){hint}")
        if allowed and value not in allowed:
            self.fail(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}"
                           f"{_did_you_mean(value, allowed)}")
        return tuple(value) if kind == "ints" else value

    def rest(self, section: str, values: Mapping[str, Any], used: tuple, reasons: Mapping[str, str],
             default: Optional[str]) -> None:
        """Account for the keys of ``section`` not in ``used``: a reason from ``reasons`` (or
        ``default``) makes them ignored, else they are unknown."""
        for key in values:
            dotted = f"{section}.{key}" if section else str(key)
            if key in used:
                continue
            reason = reasons.get(key, default)
            if reason is None:
                self.unknown[dotted] = (f"not a key the official {section or 'top level'} code reads; "
                                        "refusion cannot tell whether it changes inference")
            else:
                self.ignored[dotted] = reason


_KINDS = {"int": "an integer >= 0", "positive": "an integer >= 1", "number": "a number",
          "str": "a string", "bool": "true or false", "ints": "a list of integers >= 0"}
_INT_LISTS = ("enc_blk_nums", "dec_blk_nums", "ch_mult")
_POSITIVE = ("img_channel", "width", "in_nc", "out_nc", "nf", "depth", "in_ch", "out_ch", "ch",
             "embed_dim", "wf", "in_chn", "dw_expand", "ffn_expand")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _did_you_mean(word: Any, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _network(r: _Reader, section: str, type_key: str, official_type: Any, values: Mapping[str, Any],
             table: Mapping[str, T.OfficialNet], prefix: str, context: str) -> dict[str, Any]:
    """The NetworkSpec fields of an official network section; ``prefix`` + key names each key."""
    r.value(type_key, official_type, "str")
    if official_type in T.UNSUPPORTED_NETWORKS:
        r.fail(type_key, f"{T.UNSUPPORTED_NETWORKS[official_type]}; supported {context}: {', '.join(table)}")
    if official_type not in table:
        r.fail(type_key, f"unknown network type {official_type!r}{_did_you_mean(official_type, table)}; "
                         f"known {context}: {', '.join(table) or 'none'}")
    spec = table[official_type]
    kwargs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    tlc_values: dict[str, Any] = {}
    for key, value in values.items():
        if spec.local_train_size is not None and key in T.TLC_KEYS:
            tlc_values[key] = value
        elif key in spec.ignored:
            r.ignored[prefix + key] = spec.ignored[key]
        elif key not in spec.defaults:
            r.fail(prefix + key, f"not an argument of the official {official_type}; its arguments: "
                                 f"{', '.join(k for k in spec.defaults)}{_did_you_mean(key, spec.defaults)}")
        else:
            kind = "ints" if key in _INT_LISTS else "number" if key == "relu_slope" else \
                "positive" if key in _POSITIVE else "int"
            kwargs[key], origin[key] = r.value(prefix + key, value, kind), prefix + key
    for key, default in spec.defaults.items():
        if key in kwargs or key in spec.ignored:
            continue
        if default == T.REQUIRED:
            r.fail(prefix + key, f"missing; the official {official_type} requires it")
        kwargs[key], origin[key] = default, f"{prefix}{key} (not set: the official default)"
    for key, value in spec.fixed.items():
        kwargs[key], origin[key] = value, f"{type_key} ({official_type} {context})"
    if "enc_blk_nums" in kwargs and len(kwargs["enc_blk_nums"]) != len(kwargs["dec_blk_nums"]):
        r.fail(prefix + "dec_blk_nums", f"must have as many levels as enc_blk_nums "
                                        f"{list(kwargs['enc_blk_nums'])}, got {list(kwargs['dec_blk_nums'])}")
    _check_signature(r, spec.refusion, kwargs, origin)
    tlc = None
    if spec.local_train_size is not None:
        size = tlc_values.get("train_size", spec.local_train_size)
        size = r.value(prefix + "train_size", size, "ints")
        if len(size) != 4 or min(size) < 1:
            r.fail(prefix + "train_size", f"must be [N, C, H, W] of integers >= 1, got {list(size)}")
        fast = r.value(prefix + "fast_imp", tlc_values.get("fast_imp", False), "bool")
        if fast:
            r.unknown[prefix + "fast_imp"] = ("true selects the official non-equivalent fast TLC pooling; "
                                              "refusion runs the exact local mean")
        tlc = dict(train_size=tuple(size), base_size=(int(size[2] * 1.5), int(size[3] * 1.5)), fast_imp=fast)
    return dict(name=spec.refusion, kwargs=kwargs, official_type=official_type, section=section,
                origin=origin, tlc=tlc)


def _check_signature(r: _Reader, name: str, kwargs: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    from refusion.models import MODELS  # lazily: the networks import torch

    if name not in MODELS:  # a network refusion does not have (yet): NetworkSpec.build says so
        return
    params = list(inspect.signature(MODELS[name].__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params]
    for key in kwargs:
        if key not in names:
            r.fail(origin[key].split(" ")[0], f"maps to {name}({key}=...), an argument refusion's {name} "
                                              f"does not take; its arguments: {', '.join(names)}")


def _task_from_path(source: str, style: str) -> Optional[str]:
    parts = Path(source).parts
    if style == "ir-sde":
        found = [parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "config"]
        return next((t for t in reversed(found) if t in T.IRSDE_TASKS), None)
    for i in range(len(parts) - 3):
        if parts[i] == "options" and parts[i + 1] in ("test", "train"):
            return parts[i + 2]
    return None


def _irsde_task(r: _Reader, model: str, distortion: Optional[str]) -> str:
    modes = [d.get("mode") for d in r.section("datasets").values() if isinstance(d, Mapping)]
    if model == "latent":
        return "unet-latent"
    if model == "latent_denoising":
        bokeh = distortion == "bokeh" or any(str(m).startswith("Bokeh") for m in modes)
        return "latent-bokeh" if bokeh else "latent-dehazing"
    if distortion is None:
        return "denoising-sde"
    if distortion == "sr":
        return "stereo-sr" if any(str(m).startswith("Ste") for m in modes) else "sisr"
    if distortion == "derain":
        if "mask_root" in r.section("degradation"):
            return "inpainting"
        r.notes.append("distortion 'derain' is written by the deblurring, deraining and inpainting folders "
                       "alike; without degradation.mask_root the test is the plain conditional one of "
                       "deblurring and deraining: read as deraining (pass task= or keep the official "
                       "codes/config/<task>/ path to name the task)")
        return "deraining"
    if distortion in ("deshadow", "deblur"):
        return {"deshadow": "deshadow", "deblur": "deblurring"}[distortion]
    r.unknown["distortion"] = (f"{distortion!r} is none of the official values (deshadow, deblur, derain, "
                               "sr, dehazing, bokeh); read as a conditional IR-SDE task")
    return str(distortion)


def _sde(r: _Reader, task: str) -> Optional[dict[str, Any]]:
    if task == "unet-latent":
        if "sde" in r.raw:
            r.ignored["sde"] = "the unet-latent test runs the autoencoder alone, no SDE"
        return None
    denoising = task == "denoising-sde"
    required = ("max_sigma", "T") if denoising else ("max_sigma", "T", "schedule", "eps")
    what = "DenoisingSDE" if denoising else "IRSDE"
    sde = r.section("sde", required=f"the official {task} test builds its {what} from sde: "
                                    f"{', '.join(required)}")
    for key in required:
        if key not in sde:
            r.fail(f"sde.{key}", f"missing; the official {task} test reads it to build its {what} "
                                 f"(required keys: {', '.join(required)})")
    max_sigma = r.value("sde.max_sigma", sde["max_sigma"], "number")
    if not max_sigma > 0:
        r.fail("sde.max_sigma", f"must be > 0 (0-255 scale, e.g. 50), got {max_sigma!r}")
    steps = r.value("sde.T", sde["T"], "positive")
    used = ["max_sigma", "T", "sample_T"]
    if denoising:
        schedule, eps, sampler = "cosine", 0.04, "ode"
        for key in ("schedule", "eps"):
            if key in sde:
                r.ignored[f"sde.{key}"] = ("the denoising-sde test builds DenoisingSDE(max_sigma, T): "
                                           "cosine schedule, eps fixed at 0.04")
                used.append(key)
    else:
        # every official schedule (cosine, linear, constant) is one IRSDEScheduler implements: read from it
        schedule = r.value("sde.schedule", sde["schedule"], "str", allowed=IRSDEScheduler.SCHEDULES)
        eps = r.value("sde.eps", sde["eps"], "number")
        if not 0 < eps < 1:
            r.fail("sde.eps", f"must be in (0, 1) (the signal left at t = T, e.g. 0.005), got {eps!r}")
        used += ["schedule", "eps"]
        sampler = "sde"
        if task == "deraining":
            used.append("sampling_mode")
            if "sampling_mode" in sde:
                sampler = r.value("sde.sampling_mode", sde["sampling_mode"], "str", allowed=T.SAMPLING_MODES)
            elif not r.task_from_content:
                r.notes.append("the official deraining test.py reads sde.sampling_mode and stops without "
                               "it; refusion takes the reverse SDE of the other tasks")
    sample_t = None
    if "sample_T" in sde:
        sample_t = r.value("sde.sample_T", sde["sample_T"], "positive")
        r.notes.append("sde.sample_T is read by no official script: the official test runs all T steps")
    r.rest("sde", sde, tuple(used), {"sampling_mode": f"read only by the deraining test; the {task} "
                                                      "test runs the reverse SDE"}, None)
    return dict(sde_type="denoising" if denoising else "ir-sde", max_sigma=float(max_sigma), T=steps,
                schedule=schedule, eps=float(eps), sampler=sampler, sample_T=sample_t)


_IRSDE_MODES = {"sisr": "sr", "stereo-sr": "stereo-sr", "inpainting": "inpainting",
                "denoising-sde": "denoising", "latent-dehazing": "latent", "latent-bokeh": "latent-bokeh",
                "unet-latent": "autoencoder"}
_SAMPLERS = {"sde": "SDE (reverse_sde)", "posterior": "posterior sampler (reverse_posterior)"}


def _steps(mode: str, *, scale: Any = None, sampler: str = "sde") -> tuple[str, ...]:
    return tuple(s.replace("{scale}", str(scale)).replace("{sampler}", _SAMPLERS.get(sampler, sampler))
                 for s in T.STEPS[mode])


def _path(r: _Reader, keys: tuple, reasons: Mapping[str, str]) -> dict[str, Any]:
    path = r.section("path")
    found = {k: path.get(k) for k in keys}
    for key, value in found.items():
        if value is not None:
            r.value(f"path.{key}", value, "str")
    r.rest("path", path, keys, {**T.PATH_IGNORED, **reasons},
           "a folder or file of the official scripts' own runs")
    return found


def _irsde_inference(r: _Reader, task: str, sde: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    mode = _IRSDE_MODES.get(task, "ir-sde")
    latent = task in T.LATENT_TASKS
    paths = _path(r, ("pretrain_model_G", "pretrain_model_L") if latent else ("pretrain_model_G",),
                  {"pretrain_model_L": "read only by the latent tasks"})
    deg = r.section("degradation")
    fields: dict[str, Any] = {"mode": mode, **paths}
    used: tuple = ()
    scale = None
    if mode == "sr":
        if "scale" not in deg:
            r.fail("degradation.scale", "missing; the official sisr test upsamples the LQ by it")
        scale = fields["upscale"] = r.value("degradation.scale", deg["scale"], "positive")
        used = ("scale",)
    elif mode == "stereo-sr":
        scale, fields["upscale"], fields["stereo"], used = 4, 4, True, ("scale",)
        if deg.get("scale", 4) != 4:
            r.notes.append(f"degradation.scale is {deg['scale']!r} but the official stereo test upsamples "
                           "both views by 4 (written in test.py)")
    elif mode == "inpainting":
        used = ("mask_root",)
        if "mask_root" in deg:
            fields["mask_root"] = r.value("degradation.mask_root", deg["mask_root"], "str")
        else:
            r.unknown["degradation.mask_root"] = ("missing; the official inpainting test reads the masks "
                                                  "of its test images from it")
    elif mode == "denoising":
        if "sigma" not in deg:
            r.fail("degradation.sigma", "missing; the official denoising-sde test adds noise of this "
                                        "level and starts the reverse ODE at the matching step")
        fields["noise_sigma"] = float(r.value("degradation.sigma", deg["sigma"], "number"))
        used = ("sigma",)
    elif mode == "latent-bokeh":
        metas = [d.get("dataroot_meta") for d in r.section("datasets").values() if isinstance(d, Mapping)]
        metas = [m for m in metas if m is not None]
        if metas:
            fields["lens_metadata"] = r.value("datasets.dataroot_meta", metas[0], "str")
        else:
            r.unknown["datasets.dataroot_meta"] = ("missing; the official bokeh test reads the lens "
                                                   "information of every image from this meta file")
    if scale is not None:
        fields["upscale_fn"] = "torch.nn.functional.interpolate(LQ, scale_factor=scale, mode='bicubic')"
    r.rest("degradation", deg, used, {"scale": "read by the test only as the metrics crop border",
                                      "noise_type": "the denoising test always adds Gaussian noise"},
           f"not read by the official {task} test")
    fields["steps"] = _steps(mode, scale=scale, sampler=sde["sampler"] if sde else "sde")
    return fields


def parse_irsde(r: _Reader, task: Optional[str]) -> dict[str, Any]:
    if "model" not in r.raw:
        r.fail("model", "missing; the official create_model reads it (denoising, latent_denoising or latent)")
    model = r.value("model", r.raw["model"], "str")
    if model not in ("denoising", "latent_denoising", "latent"):
        r.unknown["model"] = f"{model!r} is none of the official models (denoising, latent_denoising, latent)"
    distortion = r.raw.get("distortion")
    if distortion is not None:
        r.value("distortion", distortion, "str")
    if task is not None and task not in T.IRSDE_TASKS:
        raise OptionsError(f"{r.source}: task {task!r} is not an official IR-SDE task"
                           f"{_did_you_mean(task, T.IRSDE_TASKS)}; known: {', '.join(T.IRSDE_TASKS)}")
    task = task or _task_from_path(r.source, "ir-sde")
    if task is None:
        r.task_from_content = True
        task = _irsde_task(r, model, distortion)
    net = r.section("network_G", required="expected which_model_G (or which_model) and setting")
    type_keys = [k for k in ("which_model_G", "which_model") if k in net]
    if not type_keys:
        r.fail("network_G.which_model_G", "missing; the official define_G reads the network class from "
                                          "which_model_G (which_model in the latent tasks)")
    if len(type_keys) == 2 and net["which_model_G"] != net["which_model"]:
        r.fail("network_G.which_model", f"contradicts network_G.which_model_G ({net['which_model_G']!r} "
                                        f"vs {net['which_model']!r})")
    setting = r.section("network_G.setting", required="the official define_G calls the network with it")
    r.rest("network_G", net, tuple(type_keys) + ("setting",), {}, None)
    table = T.IRSDE_NETWORKS.get(task, T.IRSDE_NETWORKS["deshadow"])
    context = f"for task {task}"
    network = _network(r, "network_G", f"network_G.{type_keys[0]}", net[type_keys[0]], setting, table,
                       "network_G.setting.", context)
    latent = None
    if task in T.LATENT_TASKS:
        net_l = r.section("network_L", required="the latent tasks build their autoencoder from it")
        if "which_model" not in net_l:
            r.fail("network_L.which_model", "missing; the official define_L reads the autoencoder class")
        setting_l = r.section("network_L.setting", required="the official define_L calls the autoencoder with it")
        r.rest("network_L", net_l, ("which_model", "setting"), {}, None)
        latent = _network(r, "network_L", "network_L.which_model", net_l["which_model"], setting_l,
                          T.LATENT_NETWORKS, "network_L.setting.", "autoencoders")
        embed, channels = latent["kwargs"]["embed_dim"], network["kwargs"]["img_channel"]
        if embed != channels:
            r.fail(network["origin"]["img_channel"].split(" ")[0],
                   f"the noise network works on the latents: img_channel ({channels}) must equal "
                   f"network_L.setting.embed_dim ({embed})")
    elif "network_L" in r.raw:
        r.ignored["network_L"] = f"read only by the latent tasks, not by {task}"
    sde = _sde(r, task)
    inference = _irsde_inference(r, task, sde)
    if latent is not None:
        latent["pretrain_model_L"] = inference["pretrain_model_L"]
    r.rest("", r.raw, ("model", "distortion", "sde", "degradation", "network_G", "network_L", "path"),
           T.IRSDE_IGNORED, None)
    return dict(style="ir-sde", task=task, distortion=distortion, model_type=model, network=network,
                sde=sde, latent=latent, inference=inference)


def parse_basicsr(r: _Reader, task: Optional[str]) -> dict[str, Any]:
    if "model_type" not in r.raw:
        r.fail("model_type", "missing; BasicSR's create_model reads it (ImageRestorationModel)")
    model = r.value("model_type", r.raw["model_type"], "str")
    if model != "ImageRestorationModel":
        r.unknown["model_type"] = f"{model!r}: the official test options all use ImageRestorationModel"
    net = r.section("network_g", required="expected type and the network's keyword arguments")
    if "type" not in net:
        r.fail("network_g.type", f"missing; the network class, one of {', '.join(T.BASICSR_NETWORKS)}")
    values = {k: v for k, v in net.items() if k != "type"}
    network = _network(r, "network_g", "network_g.type", net["type"], values, T.BASICSR_NETWORKS,
                       "network_g.", "network_g types")
    scale = r.raw.get("scale", 1)
    if scale != 1:
        r.unknown["scale"] = f"{scale!r}: the supported BasicSR networks keep the image size (scale 1)"
    paths = _path(r, ("pretrain_network_g", "param_key"), {})
    val = r.section("val")
    steps = (T.TLC_STEP,) if network["tlc"] else ()
    grids = None
    used = ["grids"]
    if val.get("grids"):
        r.value("val.grids", val["grids"], "bool")
        if "crop_size" in val:
            size = r.value("val.crop_size", val["crop_size"], "positive")
            grids, used = (size, size), used + ["crop_size"]
        elif "crop_size_h" in val and "crop_size_w" in val:
            grids = (r.value("val.crop_size_h", val["crop_size_h"], "positive"),
                     r.value("val.crop_size_w", val["crop_size_w"], "positive"))
            used += ["crop_size_h", "crop_size_w"]
        else:
            r.unknown["val.grids"] = ("true without crop_size (or crop_size_h and crop_size_w): refusion "
                                      "takes fixed tile sizes, not fractions of each image")
            used += ["crop_size_h_ratio", "crop_size_w_ratio"]
        steps += (T.GRIDS_STEP,)
    for key in ("trans_num", "random_crop_num"):
        if key in val and val[key] not in (0, 1):
            r.unknown[f"val.{key}"] = f"{val[key]!r}: test-time flips/random crops are not implemented"
            used.append(key)
    grid_keys = ("crop_size", "crop_size_h", "crop_size_w", "crop_size_h_ratio", "crop_size_w_ratio")
    r.rest("val", val, tuple(used), {**T.VAL_IGNORED, "trans_num": "1: no test-time flips",
                                     "random_crop_num": "0: no random crops",
                                     **{k: "used only with grids: true" for k in grid_keys}}, None)
    r.rest("", r.raw, ("model_type", "scale", "network_g", "path", "val"), T.BASICSR_IGNORED, None)
    name = r.raw.get("name")
    task = task or _task_from_path(r.source, "basicsr") or (str(name) if name is not None else "unknown")
    inference = dict(mode="regression", steps=T.STEPS["regression"] + steps,
                     pretrain_model_G=paths["pretrain_network_g"], param_key=paths["param_key"] or "params",
                     grids_crop_size=grids)
    return dict(style="basicsr", task=task, distortion=None, model_type=model, network=network, sde=None,
                latent=None, inference=inference)
