"""The README.md model card of an imported official model: where it came from and how to run it."""
from __future__ import annotations

from pathlib import Path

# licence of each source repository as read at the commits the option facts come from
LICENCES = {
    "ir-sde": "Algolzw/image-restoration-sde: the repository states no licence file; the weights are the "
              "authors' (cite Luo et al., ICML 2023 / CVPRW 2023) and their terms apply",
    "nafnet": "megvii-research/NAFNet: MIT License (BasicSR parts Apache-2.0)",
    "hinet": "megvii-model/HINet: the repository states no licence file; the weights are the authors' "
             "(cite Chen et al., CVPRW 2021) and their terms apply",
}


def _licence(result, opts) -> str:
    if result.kind == "pipeline":
        return LICENCES["ir-sde"]
    if result.network == "HINet":
        return LICENCES["hinet"]
    return LICENCES["nafnet"]


def _value(value) -> str:
    return f"`{list(value) if isinstance(value, tuple) else value!r}`"


def write_model_card(folder: Path, result, opts) -> None:
    """folder/README.md for an import's result and its option file (``opts``, None when none was given)."""
    sections = [_header(result), _options(opts), _architecture(result), _sde(result, opts), _inference(result, opts),
                _usage(result), ["## Licence", "", _licence(result, opts), ""]]
    (folder / "README.md").write_text("\n".join(line for section in sections for line in section))


def _header(result) -> list[str]:
    """The title, what the folder holds, and the source files with their sha256."""
    lines = [f"# {result.network} imported from {Path(next(iter(result.sources))).name}", ""]
    kind = ("a RefusionPipeline folder (noise network + scheduler" +
            (" + autoencoder)" if "autoencoder" in result.given else ")")) if result.kind == "pipeline" \
        else "a regressor folder (saved network + inference.json)"
    lines += [f"This folder is {kind}, written by `refusion import`. {result.num_parameters:,} parameters.", ""]
    lines += ["## Sources", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{path}` | `{digest}` |" for path, digest in result.sources.items()]
    return lines + [""]


def _options(opts) -> list[str]:
    """The option file read, and the keys it had that the import ignored or did not understand."""
    if opts is None:
        return ["## Options", "", "none given: the architecture comes from the weights alone.", ""]
    lines = ["## Options", "", f"- file: `{opts.source}` ({opts.style} style, task `{opts.task}`, "
             f"model `{opts.model_type}`, network `{opts.network.official_type}`)"]
    if opts.ignored:
        lines.append(f"- ignored ({len(opts.ignored)} keys: dataset paths, training-only settings): "
                     + ", ".join(f"`{k}`" for k in list(opts.ignored)[:12])
                     + (" ..." if len(opts.ignored) > 12 else ""))
    if opts.unknown:
        lines.append("- not understood (check them): " + ", ".join(f"`{k}`" for k in opts.unknown))
    return lines + [""]


def _architecture(result) -> list[str]:
    """Every constructor argument of the network, with where its value came from."""
    lines = ["## Architecture", "", f"`refusion.models.{result.network}`", "",
             "| argument | value | from |", "|---|---|---|"]
    for arg, value in result.kwargs.items():
        if arg in result.given:
            origin = "options"
        elif arg in result.defaulted:
            origin = f"default ({result.defaulted[arg]})"
        else:
            origin = "weights (detected)"
        lines.append(f"| `{arg}` | {_value(value)} | {origin} |")
    return lines + [""]


def _sde(result, opts) -> list[str]:
    """The IR-SDE settings of a pipeline (nothing for a regressor)."""
    if result.sde is None:
        return []
    s = result.sde
    return ["## SDE", "", f"IR-SDE: max_sigma {s['max_sigma']:g}, T {s['T']}, schedule {s['schedule']}, "
            f"eps {s['eps']:g}" + (f", sample_T {s['sample_T']}" if s.get("sample_T") else "")
            + ("; from the options" if opts is not None and opts.sde is not None else "; given with --sde"), ""]


def _inference(result, opts) -> list[str]:
    """Inference settings that are not network arguments, and the import's notes (nothing without them)."""
    extra = {k: v for k, v in result.given.items() if k not in result.kwargs}
    if not (extra or result.notes):
        return []
    lines = ["## Inference", ""]
    lines += [f"- {k}: {v}" for k, v in extra.items()]
    lines += [f"- {note}" for note in result.notes]
    if opts is not None and opts.inference.steps:
        lines.append("- the official test does: " + "; ".join(opts.inference.steps))
    return lines + [""]


def _usage(result) -> list[str]:
    """How to restore an image with the folder: the command line, then Python."""
    lines = ["## Restore an image", "", "```bash"]
    # the bokeh network needs each image's lens information (refusion.data.lens)
    lens = result.network == "BokehNAFNet"
    lens_flag = " --lens-meta photos/meta.txt" if lens else ""
    if result.kind == "pipeline":
        steps = (result.sde or {}).get("sample_T") or (result.sde or {}).get("T", 100)
        official = (result.sde or {}).get("official_sampler") or "posterior"
        lines += [f"refusion restore photos/ -o restored/ --model {result.path}{lens_flag}            # fast default sampler",
                  f"refusion restore photos/ -o restored/ --model {result.path}{lens_flag} --sampler {official} "
                  f"--steps {steps}   # as the official test"]
    else:
        lines.append(f"refusion restore photos/ -o restored/ --model {result.path}")
    lines += ["```", "", "```python", "import refusion"]
    if lens:
        lines += ["from refusion.data.lens import lens_info",
                  f"restored = refusion.sample(lq, model={str(result.path)!r}, "
                  f"lens_info=lens_info('Sony50mmf16.0BS', 'Sony50mmf1.8BS', 35))"]
    else:
        lines.append(f"restored = refusion.sample(lq, model={str(result.path)!r})" if result.kind == "pipeline"
                     else f"restored = refusion.restore(lq, model={str(result.path)!r})")
    return lines + ["```", ""]
