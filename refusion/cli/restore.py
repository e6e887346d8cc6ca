"""Restore an image file or a folder of images with a trained model; results go to another folder.

    python tools/restore.py photos/ -o restored/ --model runs/shadow --steps 20 --sampler mr_ode
    python tools/restore.py big.tif -o out/ --model runs/dehaze_latent --tile 512 --half
    python tools/restore.py photos/ -o out/ --model runs/nafnet --tile 512 --tlc 256
    python tools/restore.py src/ -o out/ --model runs/bokeh --lens-meta src/meta.txt
    python tools/restore.py a.png -o out/ --model runs/bokeh --src-lens Sony50mmf16.0BS --tgt-lens Canon50mmf1.4BS --disparity 35

--model is an sde run (reverse SDE sampling), a regressor run (NAFNet/Baseline/HINet/NAFFT), a
pipeline saved with RefusionPipeline.save_pretrained, a saved regressor directory, a folder written by
`refusion import`, or an official checkpoint file (imported on the fly; --options for noise networks).

A stereo model (StereoNAFNet) restores view pairs named <id>_L / <id>_R (Flickr1024): both views go
through the network together and both are written; a view without its partner is a usage error.

A bokeh model (BokehNAFNet) needs the lens information of every image: --lens-meta FILE (the dataset's
meta.txt, lines "id, src_lens, tgt_lens, disparity", refusion.data.lens), or --src-lens/--tgt-lens/
--disparity for every input. An input without an entry, or a value out of range, is a usage error
naming the file, before any image is restored.

Output files keep the input file name and bit depth (16-bit in, 16-bit out). Formats the writer
does not support (BMP, WebP, PPM/PGM) are written as PNG with ".png" appended ("a.bmp" ->
"a.bmp.png"). Unreadable or failing images (including a NaN/Inf network output, e.g. a float16
overflow with --half) are reported and skipped, nothing is written for them; the batch goes on and the
exit status is 1 when any image failed (2 for usage errors). Inputs are never overwritten: the
command refuses an output folder that is the input folder or where an output would replace an
input file.

Several processes (one per GPU, or CPU processes) share a folder under accelerate; each image is
written once, by one process, exactly as a one-process run writes it (refusion/cli/restore_jobs.py):

    accelerate launch tools/restore.py photos/ -o out/ --model runs/shadow --summary out/summary.json
    accelerate launch -m refusion restore photos/ -o out/ --model runs/shadow --skip-existing

Outputs are written to a hidden temporary file and renamed, so a killed run leaves no partial image
under a final name; the next run removes its temporaries, and --skip-existing restores only the images
whose outputs are missing. --summary FILE writes a JSON manifest of the run (settings, totals, per image
input, output, process, seconds, status).

SDE models only: --samples K writes the mean of K posterior samples as the output; --save-std adds
<stem>_std.png (colour-mapped uncertainty) and <stem>_std.tiff (float32), --save-samples every sample
(refusion/cli/restore_posterior.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from functools import partial

from typing import TYPE_CHECKING

# torch, numpy, accelerate and the library are imported inside the functions that use them, so that
# `refusion restore --help` answers without loading them (tests/test_cli.py checks it)
from refusion.cli import common
from refusion.cli.common import UsageError
from refusion.cli.restore_posterior import add_posterior_args, check_posterior_flags, write_posterior_files

if TYPE_CHECKING:
    import torch

    from refusion.data.lens import LensInfo

WRITABLE = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="an image file or a folder of images (not recursive)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--options", type=Path, default=None,
                   help="official option file of a checkpoint given as --model (needed for noise networks)")
    p.add_argument("--latent-weights", type=Path, default=None,
                   help="official latent autoencoder checkpoint (latent dehazing / bokeh) for --model FILE")
    p.add_argument("--sde", nargs="+", default=None, metavar="KEY=VALUE",
                   help="SDE settings of a noise-network checkpoint without --options: max_sigma=50 T=100 "
                        "schedule=cosine eps=0.005")
    p.add_argument("--weights", choices=("model", "best"), default="model",
                   help="run weights: model (final) or best (best validation PSNR)")
    p.add_argument("--sampler", default=None, help="sde sampler override: sde, ode, posterior, mr_ode, mr_sde")
    p.add_argument("--eta", type=float, default=None, help="stochasticity of the posterior sampler (0..1)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    p.add_argument("--latent", choices=("auto", "on", "off"), default="auto",
                   help="latent (autoencoder) path for models that have one (default auto: large images)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="x8 self-ensemble: the mean over the 8 flips and 90-degree rotations of each image (8x the "
                        "network calls; not for stereo models)")
    p.add_argument("--color-fix", choices=("adain", "wavelet"), default=None,
                   help="give each result its input's colours: adain (per-channel mean and std) or wavelet (the "
                        "input's low frequencies under the result's detail)")
    tlc = p.add_mutually_exclusive_group()
    tlc.add_argument("--tlc", type=int, default=None,
                     help="regressors: test-time local converter with this training patch size (default: what the "
                          "model folder says; imported NAFNetLocal/BaselineLocal models have it on)")
    tlc.add_argument("--no-tlc", action="store_true", help="regressors: switch the test-time local converter off")
    lens = p.add_argument_group("bokeh models (lens information)")
    lens.add_argument("--lens-meta", type=Path, default=None,
                      help="meta.txt with a line 'id, src_lens, tgt_lens, disparity' per input image")
    lens.add_argument("--src-lens", default=None, help="source lens of every input, e.g. Sony50mmf16.0BS")
    lens.add_argument("--tgt-lens", default=None, help="target lens to render, e.g. Canon50mmf1.4BS")
    lens.add_argument("--disparity", default=None, help="disparity (blur strength) of every input, e.g. 35")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume an interrupted batch: skip the images whose outputs (both views of a stereo pair) "
                        "are already in the output folder")
    p.add_argument("--summary", type=Path, default=None, metavar="FILE",
                   help="write a JSON manifest of the run: settings, totals, and per image its input, output, "
                        "process, seconds and status (restored, failed with the reason, skipped-existing)")
    common.add_shared(p, "model", "device", "threads", "workers", "steps", "seed", "tile", "half", "no-progress",
                      model=dict(required=True, help="run directory, saved pipeline/model directory, imported official "
                                                     "folder, or an official checkpoint file (.pth: imported on the "
                                                     "fly into $REFUSION_CACHE_DIR/imported, default ~/.cache/refusion)"),
                      seed=dict(help="noise seed, the same for every image (default 0)"))
    add_posterior_args(p)         # --samples K, --save-std, --save-samples (refusion/cli/restore_posterior.py)
    return p.parse_args(argv)


def list_inputs(path: Path) -> list[Path]:
    from refusion.data.image_io import IMAGE_EXTENSIONS

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"input {str(path)!r} is neither a file nor a folder")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {str(path)!r}")
    return files


def output_path(out_dir: Path, source: Path) -> Path:
    name = source.name if source.suffix.lower() in WRITABLE else source.name + ".png"
    return out_dir / name


def plan_outputs(inputs: list[Path], out_dir: Path, input_arg: Path) -> list[Path]:
    """Output paths, refusing any plan that would overwrite an input."""
    out_resolved = out_dir.resolve()
    in_dir = input_arg if input_arg.is_dir() else input_arg.parent
    if out_resolved == in_dir.resolve() or (out_dir.exists() and in_dir.exists() and os.path.samefile(out_dir, in_dir)):
        raise UsageError(f"output folder {str(out_dir)!r} is the input folder; choose another folder "
                         f"(inputs are never overwritten)")
    outputs = [output_path(out_dir, src) for src in inputs]
    claimed: dict[str, Path] = {}
    for src, dst in zip(inputs, outputs):
        key = os.path.normcase(dst.name)
        if key in claimed:
            raise UsageError(f"inputs {str(claimed[key])!r} and {str(src)!r} would both be written to the same "
                             f"output {str(dst)!r}; rename one of them")
        claimed[key] = src
    sources = {src.resolve() for src in inputs}
    for src, dst in zip(inputs, outputs):
        if dst.resolve() in sources or (dst.exists() and any(os.path.samefile(dst, s) for s in inputs)):
            raise UsageError(f"output {str(dst)!r} would replace the input file {str(src)!r}; choose another "
                             f"output folder")
    return outputs


def plan_jobs(inputs: list[Path], outputs: list[Path], *, stereo: bool) -> list[tuple[tuple[Path, ...], tuple[Path, ...]]]:
    """(sources, targets) per network pass: one image, or for a stereo model its <id>_L / <id>_R pair."""
    from refusion.data.paired import stereo_groups

    if not stereo:
        return [((src,), (dst,)) for src, dst in zip(inputs, outputs)]
    by_stem = {src.stem: (src, dst) for src, dst in zip(inputs, outputs)}
    ids = stereo_groups(list(by_stem), {stem: src for stem, (src, _) in by_stem.items()})
    return [tuple(zip(by_stem[i + "_L"], by_stem[i + "_R"])) for i in ids]


def load_model(args, device: torch.device):
    """The LoadedModel of --model (refusion.load_model: an official checkpoint file is imported into the
    shared cache first, with --options / --latent-weights / --sde)."""
    from refusion.inference.model import load_model as load
    from refusion.official.importer import parse_sde_settings

    sde = parse_sde_settings(dict(item.split("=", 1) for item in args.sde)) if args.sde else None
    return load(args.model, options=args.options, latent_weights=args.latent_weights, sde=sde, device=device,
                weights=args.weights)


def settings_from(args):
    """The RestoreSettings of the command line (validated; the model's defaults are filled in later)."""
    from refusion.inference.settings import RestoreSettings

    tlc = False if args.no_tlc else args.tlc
    return RestoreSettings(sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed, tile=args.tile,
                           overlap=args.overlap, half=args.half, color_fix=args.color_fix,
                           self_ensemble=args.self_ensemble, samples=args.samples or 1, chunk_size=args.chunk_size,
                           tlc=tlc, latent={"auto": None, "on": True, "off": False}[args.latent])


def lens_plan(args, inputs: list[Path], model) -> dict[Path, LensInfo] | None:
    """The lens information of each input for a bokeh model (None for other models); every problem
    (a missing entry, a value out of range, flags for a model that takes none) is a UsageError."""
    from refusion.data.lens import LensMetadataError, lens_info, lens_info_for, read_lens_metadata

    flags = {"--src-lens": args.src_lens, "--tgt-lens": args.tgt_lens, "--disparity": args.disparity}
    given = [name for name, value in flags.items() if value is not None]
    if model.capabilities.conditioning != "lens":
        if given or args.lens_meta:
            raise UsageError(f"{', '.join(given or ['--lens-meta'])}: lens information is only for bokeh models "
                             f"(BokehNAFNet); --model {str(args.model)!r} takes none")
        return None
    try:
        if args.lens_meta is not None:
            if given:
                raise UsageError(f"--lens-meta and {', '.join(given)} exclude each other: give the lens "
                                 f"information in the file or on the command line")
            table = read_lens_metadata(args.lens_meta)
            return {src: lens_info_for(table, src.name, source=args.lens_meta, image=str(src)) for src in inputs}
        if len(given) != len(flags):
            missing = [name for name in flags if name not in given]
            raise UsageError(f"--model {str(args.model)!r} is a bokeh model ({type(model.network).__name__}): it "
                             f"needs the lens information of every image, --lens-meta FILE or all of --src-lens, "
                             f"--tgt-lens, --disparity (missing: {', '.join(missing)})")
        info = lens_info(args.src_lens, args.tgt_lens, args.disparity, where="command line")
    except LensMetadataError as exc:
        raise UsageError(str(exc)) from None
    return {src: info for src in inputs}


def restore_job(model, sources: tuple[Path, ...], targets: tuple[Path, ...], *, args, settings,
                lenses: dict[Path, LensInfo] | None, progress: bool) -> None:
    """Restore one job and write its outputs: a stereo pair goes through the network in one pass
    (left then right on channels) and each view is written to its own file, at its input's bit depth.
    With --samples the mean is the output, after the --save-std / --save-samples files."""
    import numpy as np

    from refusion.data.image_io import image_bit_depth, read_image, write_image
    from refusion.inference.restorer import restore_image

    image = np.concatenate([read_image(src) for src in sources], axis=2)
    lens = lenses[sources[0]] if lenses else None
    result = restore_image(model, image, settings.replace(lens_info=lens), progress=progress)
    if result.samples is not None:
        write_posterior_files(result, args, sources, targets)
    for view, src, dst in zip(np.split(result.hwc(), len(sources), axis=2), sources, targets):
        bit_depth = image_bit_depth(src) if dst.suffix.lower() in (".png", ".tif", ".tiff") else 8
        write_image(dst, view, bit_depth=bit_depth)


def _prepare(args, state, device):
    """(inputs, outputs, the loaded model, the checked settings); UsageError for anything wrong before work."""
    from refusion.cli.restore_jobs import check_summary_path
    from refusion.inference.restorer import check_settings

    inputs = list_inputs(args.input)
    outputs = plan_outputs(inputs, args.output, args.input)
    check_summary_path(args.summary, inputs, outputs)
    with state.main_process_first():   # an official checkpoint is imported into the shared cache once
        try:
            model = load_model(args, device)
        except (FileNotFoundError, ValueError):
            raise                       # they name the file and the problem
        except Exception as exc:  # any other failure to load the model is still a usage problem, not a crash
            raise UsageError(f"cannot load --model {str(args.model)!r}: {type(exc).__name__}: {exc}") from None
    check_posterior_flags(args, model.kind, outputs, UsageError)      # names every posterior flag given
    settings = check_settings(model, settings_from(args), lens_later=True)
    return inputs, outputs, model, settings


def _run(args, state, device, model, settings, jobs, lenses) -> int:
    """Restore the jobs of this process, report, write the summary; the exit status."""
    from accelerate.utils import gather_object

    from refusion.cli.restore_jobs import (exit_status, gather_records, manifest, prepare_output, report, run_share,
                                           settings_of, write_summary)
    from refusion.data.image_io import image_pixels
    from refusion.inference.workers import worker_models

    start = time.perf_counter()
    try:
        todo, skipped = prepare_output(jobs, args.output, skip_existing=args.skip_existing, state=state)
    except OSError as exc:
        print(f"restore: error: cannot prepare the output folder {str(args.output)!r}: {exc}", file=sys.stderr)
        return 2
    largest = max((image_pixels(src) or 0 for sources, _ in todo for src in sources), default=0)
    models, threads = worker_models(model, jobs=len(todo), largest_pixels=largest, workers=args.workers,
                                    cpu=device.type == "cpu")
    progress = not args.no_progress and len(models) == 1          # per-image step bars would interleave
    workers = [partial(restore_job, copy, args=args, settings=settings, lenses=lenses, progress=progress)
               for copy in models]
    records = gather_records(run_share(todo, workers, threads=threads, state=state, progress=not args.no_progress),
                             skipped, jobs)
    devices = gather_object([str(device)])
    seconds = time.perf_counter() - start
    status = exit_status(records)
    if state.is_main_process:
        report(records, args.output, seconds)
        if args.summary is not None:
            summary = settings_of(args, model_kind=model.kind, devices=devices, workers=len(models))
            try:
                write_summary(args.summary, manifest(records, summary, processes=state.num_processes, seconds=seconds))
            except OSError as exc:
                print(f"restore: error: cannot write --summary {str(args.summary)!r}: {exc}", file=sys.stderr)
                status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)

    from refusion.cli.restore_jobs import restore_state
    from refusion.inference.processes import end_processes

    try:
        device = common.resolve_device(args.device or "auto")
        state = restore_state(device)
        inputs, outputs, model, settings = _prepare(args, state, device)
        jobs = plan_jobs(inputs, outputs, stereo=model.capabilities.conditioning == "stereo")
        lenses = lens_plan(args, inputs, model)
    except (UsageError, FileNotFoundError, ValueError) as exc:
        print(f"restore: error: {exc}", file=sys.stderr)
        return 2
    if model.kind == "regressor" and (args.steps or args.sampler or args.eta is not None) and state.is_main_process:
        print("restore: note: --steps/--sampler/--eta are ignored for a regressor model", file=sys.stderr)
    args.no_progress = args.no_progress or not state.is_main_process   # one set of bars: the main process's
    if model.pipeline is not None:
        model.pipeline.set_progress_bar_config(leave=False, desc="steps", disable=args.no_progress)
    status = _run(args, state, device, model, settings, jobs, lenses)
    # every process has its records (the exit status is the same on all): they meet and the process group
    # ends here, not at interpreter exit, where tearing it down can abort a finished launch; an exception
    # above skips this, so a failing process exits at once and the launch ends non-zero
    end_processes()
    return status


if __name__ == "__main__":
    sys.exit(main())
