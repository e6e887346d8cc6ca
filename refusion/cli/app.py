"""Serve a web page that restores uploaded images with one or more models (Gradio).

    refusion app --model runs/quickstart_sde
    refusion app --model runs/shadow --model runs/nafnet_deblur --steps 20 --port 7861
    refusion app --model IR-SDE_denoising.pth --options test_denoising.yml --model runs/nafnet --max-megapixels 12
    refusion app --model runs/shadow --host 0.0.0.0        # reachable from other machines: read the note below

--model is what `refusion restore --model` takes (a run, a saved pipeline or model, an imported
official folder, or an official checkpoint file); repeat it to offer several models in a dropdown.
--options belongs to the --model checkpoint file right before it. Needs the optional extra:
pip install -e ".[app]".

The page: upload an image (or pick a bundled sample photograph), choose the sampler, steps, tile
size, seed, half precision, colour fix, x8 self-ensemble and (SDE models) K posterior samples, whose
mean is the result and whose std shows as an uncertainty map (K at most --max-samples); restore with a progress bar per step, compare before / after, get
PSNR / LPIPS when a ground truth is uploaded, and download the full-resolution result at the
input's bit depth (16-bit PNG/TIFF in, 16-bit out). Requests run one at a time (--concurrency).
Uploads and results live in a temporary folder that is removed when the app stops; an upload that
is not a readable image, or larger than --max-megapixels, gets a message in the page.

The app listens on 127.0.0.1 (this machine only) unless --host says otherwise; it has no login,
so anyone who can reach another --host can use this machine's CPU/GPU through it.
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from typing import TYPE_CHECKING

from refusion.cli import common
from refusion.cli.common import UsageError

if TYPE_CHECKING:   # app_service (numpy, torch) loads in the functions that use it: `--help` stays fast
    from refusion.cli.app_service import AppModel, AppService, Limits, Settings

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ModelSpec:
    path: Path
    options: Path | None = None


class _ModelAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        specs = list(getattr(namespace, self.dest, None) or [])
        specs.append(ModelSpec(Path(values)))
        setattr(namespace, self.dest, specs)


class _OptionsAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        specs = getattr(namespace, "models", None)
        if not specs:
            parser.error("--options describes the --model checkpoint file given right before it; put it after that --model")
        if specs[-1].options is not None:
            parser.error(f"--options given twice for --model {str(specs[-1].path)!r}")
        specs[-1].options = Path(values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="examples:\n" + "\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", dest="models", action=_ModelAction, metavar="DIR_OR_CHECKPOINT", default=None,
                   help="run directory, saved pipeline/model, imported official folder or official checkpoint file; "
                        "repeat for several models")
    p.add_argument("--options", action=_OptionsAction, metavar="YAML", default=argparse.SUPPRESS,
                   help="official option file of the --model checkpoint file right before it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-megapixels", type=float, default=25.0,
                   help="largest image accepted, checked before decoding (default 25 megapixels, 6000x4000 fits)")
    p.add_argument("--max-steps", type=int, default=100, help="largest step count a request may ask for (default 100)")
    p.add_argument("--max-samples", type=int, default=8,
                   help="most posterior samples K a request may ask for (SDE models; default 8; each costs a full run)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload in megabytes (default 200)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="requests restored at the same time (default 1; the rest wait in the queue)")
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait in the queue (default 32)")
    common.add_shared(p, "device", "threads", "steps", "tile", "seed", "half",
                      steps=dict(help="the page's initial step count (default: the sampler's documented steps, "
                                      "10 for mr_sde; at most --max-steps)"),
                      tile=dict(help="the page's initial tile size in pixels (default or 0: whole image)"),
                      seed=dict(help="the page's initial noise seed (default 0)"),
                      half=dict(help="half precision checked in the page at start (bfloat16 on CPUs that compute it "
                                     "natively, float16 on CUDA)"))
    args = p.parse_args(argv)
    if not args.models:
        p.error("--model is required (a run directory, a saved model or an official checkpoint file)")
    return args


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_args(args) -> Limits:
    from refusion.cli.app_service import Limits

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    for flag, value in (("--max-megapixels", args.max_megapixels), ("--max-steps", args.max_steps),
                        ("--max-samples", args.max_samples),
                        ("--max-upload-mb", args.max_upload_mb), ("--concurrency", args.concurrency),
                        ("--queue-size", args.queue_size)):
        if not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.steps is not None and not 1 <= args.steps <= args.max_steps:
        raise UsageError(f"--steps {args.steps} is outside 1..--max-steps ({args.max_steps})")
    return Limits(max_pixels=int(args.max_megapixels * 1e6), max_steps=args.max_steps, max_samples=args.max_samples)


def load_models(specs: list[ModelSpec], device) -> list[AppModel]:
    """Every --model, loaded as `refusion restore` loads it (refusion.load_model); UsageError naming the
    one that fails."""
    from refusion.cli.app_service import AppModel
    from refusion.inference.model import load_model

    names = [spec.path.stem if spec.path.is_file() else spec.path.name or str(spec.path) for spec in specs]
    names = [str(spec.path) if names.count(name) > 1 else name for spec, name in zip(specs, names)]
    loaded = []
    for spec, name in zip(specs, names):
        try:
            model = load_model(spec.path, options=spec.options, device=device)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # any other failure to load is still a problem with this --model
            raise UsageError(f"cannot load --model {str(spec.path)!r}: {type(exc).__name__}: {exc}") from None
        _check_one_image_model(spec.path, model)
        loaded.append(AppModel(name, model))
    return loaded


# what a request cannot carry: the page takes one image file, not a left/right view pair
_PAGE_GAPS = {"stereo": "restores left/right view pairs, and a request carries one image file"}


def _check_one_image_model(path: Path, model) -> None:
    """UsageError at start (not at every request) for a model the page cannot drive."""
    gap = _PAGE_GAPS.get(model.capabilities.conditioning)
    if gap:
        raise UsageError(f"--model {str(path)!r} ({type(model.network).__name__}) {gap}; restore it with "
                         f"`refusion restore` (view pairs <id>_L/<id>_R)")


# ----------------------------------------------------------------------------------------------
# The page


def _error(message: str, when: str = "Not restored") -> str:
    return f"**{when}:** {message}"


def build_app(service: AppService, defaults: Settings | None = None):
    """The Gradio Blocks of the page (not launched)."""
    # Gradio reads this when it is first imported: here, before the helpers below import it too
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from refusion.cli.app_service import Settings

    defaults = defaults or Settings()
    handlers = _page_handlers(service, defaults)
    with gr.Blocks(title="refusion", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        page = _page_layout(service, defaults, _first_controls(service, defaults))
        _wire_events(demo, page, handlers)
    return demo


def _sde_controls(service: AppService, defaults: Settings, name: str) -> dict:
    """The sampler / steps / seed / posterior samples controls for a model (hidden for a regressor)."""
    entry = service.model(name)
    sde = entry.kind == "sde"
    top = min(entry.full_steps, service.limits.max_steps) if sde else 1
    value = min(defaults.steps or entry.default_steps() or top, top)     # the sampler's documented steps
    steps = dict(minimum=1, maximum=top, value=value) if top > 1 else dict(minimum=0, maximum=1, value=1)
    return {"sampler": dict(choices=list(entry.samplers), value=entry.default_sampler, visible=sde),
            "steps": dict(**steps, visible=sde),
            "seed": dict(visible=sde), "samples": dict(visible=sde), "about": entry.describe(),
            "lens": dict(visible=entry.takes_lens)}


def _first_controls(service: AppService, defaults: Settings) -> dict:
    """The controls the page is built with: the first model's, with the ranges every model admits."""
    names = list(service.models)
    first = _sde_controls(service, defaults, names[0])
    # the server checks a request's values against the controls it was built with: they admit what any
    # model takes (a request is checked against its own model by the service), the page narrows them
    every_sampler = list(dict.fromkeys(s for m in service.models.values() for s in m.samplers))
    most_steps = max(_sde_controls(service, defaults, name)["steps"]["maximum"] for name in names)
    first["sampler"]["choices"] = every_sampler
    first["steps"].update(minimum=min(1, first["steps"]["minimum"]), maximum=most_steps)
    return first


def _page_handlers(service: AppService, defaults: Settings) -> SimpleNamespace:
    """The functions the page's events call: a model chosen, an image uploaded, a sample asked for."""
    import gradio as gr

    from refusion.cli.app_service import AppInputError, preview, read_upload

    # Gradio names each event's API endpoint after its function: the names stay on_model, on_input, ...
    def on_model(name: str):
        c = _sde_controls(service, defaults, name)
        return (gr.Dropdown(**c["sampler"]), gr.Slider(**c["steps"]), gr.Number(**c["seed"]), gr.Slider(**c["samples"]),
                c["about"], gr.Row(**c["lens"]))

    def on_input(path):
        if not path:
            return None, ""
        try:
            image, bit_depth = read_upload(path, service.limits)
        except AppInputError as exc:
            return None, _error(str(exc), "Cannot use this file")
        height, width = image.shape[:2]
        return preview(image), f"{Path(path).name}: {width}x{height}, {bit_depth}-bit. Press **Restore**."

    def on_sample(name, degradation):
        try:
            lq, gt = service.sample(name, degradation)
        except AppInputError as exc:
            return gr.File(), gr.File(), _error(str(exc), "No sample")
        return str(lq), str(gt), ""

    return SimpleNamespace(on_model=on_model, on_input=on_input, on_sample=on_sample,
                           on_restore=_restore_handler(service))


def _restore_handler(service: AppService):
    """The function the Restore button calls: status, before / after, result file, metrics, std map."""
    import gradio as gr

    from refusion.cli.app_service import AppInputError, Settings, metrics_markdown, preview, uncertainty_map

    def on_restore(model_name, lq_path, gt_path, sampler, steps, tile, seed, half, color_fix="off", self_ensemble=False,
                   samples=1, src_lens=None, tgt_lens=None, disparity=None, progress=gr.Progress()):
        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="restoring", unit="steps")

        settings = Settings(sampler=sampler, steps=steps, tile=tile, seed=seed, half=half, color_fix=color_fix,
                            self_ensemble=self_ensemble, samples=samples, src_lens=src_lens, tgt_lens=tgt_lens,
                            disparity=disparity)
        try:
            result = service.restore(model_name, lq_path, settings, gt_path or None, on_step=on_step)
        except AppInputError as exc:
            return _error(str(exc)), None, None, "", None
        except Exception as exc:  # a failing request is reported; the app serves the next one
            traceback.print_exc()
            return _error(f"restoration failed: {type(exc).__name__}: {exc}"), None, None, "", None
        after = preview(result.restored)
        before = preview(result.lq, size=after.shape[:2])
        std = None if result.std is None else preview(uncertainty_map(result.std), size=after.shape[:2])
        return result.summary, (before, after), str(result.path), metrics_markdown(result.metrics), std

    return on_restore


def _page_layout(service: AppService, defaults: Settings, first: dict) -> SimpleNamespace:
    """The page's components, inside the Blocks being built: a title, the inputs and settings on the
    left, the results on the right."""
    import gradio as gr

    gr.Markdown("# refusion: image restoration\nUpload an image (PNG, JPEG, TIFF, BMP, WebP; 8 or 16 bit; "
                f"at most {service.limits.max_pixels / 1e6:g} megapixels) or use a sample photograph, then "
                "press **Restore**.")
    with gr.Row():
        with gr.Column():
            inputs = _input_components(service, defaults, first)
        with gr.Column():
            results = _result_components()
    return SimpleNamespace(**vars(inputs), **vars(results))


def _input_components(service: AppService, defaults: Settings, first: dict) -> SimpleNamespace:
    """The left column: model, upload or sample, ground truth, the input's preview, settings, Restore."""
    import gradio as gr

    from refusion.cli.app_service import COLOR_FIX_CHOICES, SAMPLE_DEGRADATIONS
    from refusion.data.image_io import IMAGE_EXTENSIONS
    from refusion.data.synthetic import SOURCES

    names = list(service.models)
    c = SimpleNamespace()
    c.model = gr.Dropdown(names, value=names[0], label="model", elem_id="model", interactive=len(names) > 1)
    c.about = gr.Markdown(first["about"], elem_id="about")
    c.lq_file = gr.File(label="image to restore", file_types=list(IMAGE_EXTENSIONS), elem_id="lq-file")
    with gr.Row():
        c.sample = gr.Dropdown(list(SOURCES), value="coffee", label="sample photograph")
        c.degradation = gr.Dropdown(list(SAMPLE_DEGRADATIONS), value="noise", label="degraded with")
        c.use_sample = gr.Button("Use sample", elem_id="use-sample")
    c.gt_file = gr.File(label="ground truth, optional (PSNR and LPIPS)", file_types=list(IMAGE_EXTENSIONS),
                        elem_id="gt-file")
    c.lq_view = gr.Image(label="input", interactive=False, format="png", height=240, buttons=["fullscreen"],
                         elem_id="lq-view")
    c.sampler = gr.Dropdown(label="sampler", elem_id="sampler", **first["sampler"])
    c.steps = gr.Slider(label="steps", step=1, elem_id="steps", **first["steps"])
    c.samples = gr.Slider(minimum=1, maximum=max(2, service.limits.max_samples), step=1, value=1,
                          label="posterior samples K (K > 1: the result is their mean, with an uncertainty "
                                "map; a stochastic sampler such as mr_sde; K times the time)",
                          elem_id="samples", **first["samples"])
    c.seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="seed", elem_id="seed", **first["seed"])
    with gr.Row(**first["lens"]) as c.lens_row:      # bokeh models: the image's lens information
        c.src_lens = gr.Textbox(label="source lens", placeholder="Sony50mmf16.0BS", elem_id="src-lens")
        c.tgt_lens = gr.Textbox(label="target lens", placeholder="Canon50mmf1.4BS", elem_id="tgt-lens")
        c.disparity = gr.Textbox(label="disparity (blur strength)", placeholder="35", elem_id="disparity")
    c.tile = gr.Number(value=defaults.tile or 0, precision=0, minimum=0,
                       label="tile size in pixels (0: the whole image at once)", elem_id="tile")
    c.half = gr.Checkbox(value=defaults.half, label="half precision (bfloat16 on CPU, float16 on CUDA)",
                         elem_id="half")
    c.color_fix = gr.Radio(list(COLOR_FIX_CHOICES), value=defaults.color_fix or "off", elem_id="color-fix",
                           label="colour fix: the input's colours under the result's detail (adain: "
                                 "per-channel mean and std; wavelet: low frequencies)")
    c.self_ensemble = gr.Checkbox(value=defaults.self_ensemble, elem_id="self-ensemble",
                                  label="x8 self-ensemble: average over flips and rotations (8x the time)")
    c.run = gr.Button("Restore", variant="primary", elem_id="restore")
    return c


def _result_components() -> SimpleNamespace:
    """The right column: status, before / after slider, result file, uncertainty map, metrics."""
    import gradio as gr

    return SimpleNamespace(
        status=gr.Markdown(elem_id="status"),
        compare=gr.ImageSlider(label="before / after", interactive=False, format="png", elem_id="compare"),
        result_file=gr.File(label="restored image, full resolution", interactive=False, elem_id="result-file"),
        std_map=gr.Image(label="uncertainty: std over the K samples (black 0, yellow 0.1 and above)",
                         interactive=False, format="png", elem_id="std-map"),
        scores=gr.Markdown(elem_id="metrics"))


def _wire_events(demo, page: SimpleNamespace, handlers: SimpleNamespace) -> None:
    """What each event of the page calls, with which components in and out."""
    p, h = page, handlers
    per_model = [p.sampler, p.steps, p.seed, p.samples, p.about, p.lens_row]
    demo.load(h.on_model, inputs=p.model, outputs=per_model, queue=False)
    p.model.change(h.on_model, inputs=p.model, outputs=per_model, queue=False)
    p.lq_file.change(h.on_input, inputs=p.lq_file, outputs=[p.lq_view, p.status], queue=False)
    p.use_sample.click(h.on_sample, inputs=[p.sample, p.degradation], outputs=[p.lq_file, p.gt_file, p.status],
                       queue=False)
    p.run.click(h.on_restore,
                inputs=[p.model, p.lq_file, p.gt_file, p.sampler, p.steps, p.tile, p.seed, p.half, p.color_fix,
                        p.self_ensemble, p.samples, p.src_lens, p.tgt_lens, p.disparity],
                outputs=[p.status, p.compare, p.result_file, p.scores, p.std_map], api_name="restore")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from refusion.cli.app_service import AppService, Settings

    try:
        limits = check_args(args)
        common.set_threads(args.threads)
        device = common.resolve_device(args.device)
    except UsageError as exc:
        print(f"app: error: {exc}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("gradio") is None:   # checked before the models load: that takes a while
        print('app: error: the web app needs Gradio: pip install -e ".[app]" (or pip install gradio)', file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="refusion-app-"))
    # uploads, Gradio's cache and results all stay in workdir (Gradio reads the variable when it is
    # imported, below); nothing phones home; the caller's environment is put back on return
    environment = {"GRADIO_TEMP_DIR": str(workdir / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
                   "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        try:
            models = load_models(args.models, device)
        except UsageError as exc:
            print(f"app: error: {exc}", file=sys.stderr)
            return 2
        if "onnxruntime" in sys.modules:   # diffusers imports it (when installed) while it loads a pipeline
            sys.modules["onnxruntime"].disable_telemetry_events()
        service = AppService(models, limits, workdir, device=device)
        defaults = Settings(steps=args.steps, tile=args.tile, seed=args.seed, half=args.half)
        demo = build_app(service, defaults)
        demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
        if not is_loopback(args.host):
            print(f"app: note: listening on {args.host}: anyone who can reach this address can use the app "
                  f"(there is no login)", file=sys.stderr)
        print(f"app: {len(models)} model(s) on {device}: {', '.join(service.models)}; temporary folder {workdir}",
              flush=True)
        try:
            demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                        max_file_size=int(args.max_upload_mb * 1024 * 1024), allowed_paths=[str(workdir)],
                        ssr_mode=False, mcp_server=False, show_error=False,
                        run_history=False, footer_links=["api", "settings"])   # no run history (nor its hub upload)
        except OSError as exc:  # the port is taken, the address is not this machine's, ...
            print(f"app: error: cannot listen on {args.host}:{args.port} ({exc}); choose another --port or --host",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(workdir, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # Gradio closes its server on it; main() then removes the temporary folder


if __name__ == "__main__":
    sys.exit(main())
