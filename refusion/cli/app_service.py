"""What the web app does for one request, without the web: read the upload, restore it, score it.

`refusion app` (refusion/cli/app.py) puts a Gradio page around `AppService`; everything here is
plain Python and numpy so it is tested without a server. Every problem with what a person sent
(not an image, too large, a setting out of bounds) raises `AppInputError` with a message meant for
the page; the service itself keeps working for the next request.

Options of a request (`Settings`): sampler, steps, seed, tile size, half precision, colour fix, x8
self-ensemble, and for SDE models K posterior samples (refusion.sample_posterior): with K > 1 the result
is their mean and `Restored.std` their per-pixel std (`uncertainty_map` draws it).

Files: uploads stay where the web server put them; results and sample photographs are written
under the service's own folder (a temporary folder that `refusion app` removes on exit).
"""
from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from refusion.data.image_io import ImageReadError, image_bit_depth, read_image, write_image
from refusion.inference.model import LoadedModel

PREVIEW_SIDE = 1024            # longest side of the images shown in the page (the download is full size)
TILE_OVERLAP = 32             # pixels shared by neighbouring tiles (a quarter of tiles smaller than 128)
RESULT_MAX_AGE_S = 120         # result folders older than this are removed (the web server keeps its own copy)
SAMPLE_DEGRADATIONS = ("none", "noise", "blur", "haze", "rain", "lowlight", "shadow")
COLOR_FIX_CHOICES = ("off", "adain", "wavelet")   # the page's colour fix control; "off" is color_fix=None

StepCallback = Callable[[int, int], None]


class AppInputError(ValueError):
    """A request the app refuses; the message is shown in the page as it is."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: image size (pixels, before decoding), SDE sampling steps and posterior samples."""

    max_pixels: int = 25_000_000
    max_steps: int = 100
    max_samples: int = 8

    def __post_init__(self):
        for name in ("max_pixels", "max_steps", "max_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class AppModel:
    """A model the page offers: its name in the page and the model as refusion.load_model loaded it."""

    name: str
    model: LoadedModel

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def takes_lens(self) -> bool:
        """A bokeh model: every request carries the image's lens information."""
        return self.model.capabilities.conditioning == "lens"

    @property
    def samplers(self) -> tuple[str, ...]:
        return self.model.samplers

    @property
    def default_sampler(self) -> str | None:
        return self.model.defaults.sampler

    @property
    def full_steps(self) -> int | None:
        return self.model.full_steps

    def default_steps(self, sampler: str | None = None) -> int | None:
        return self.model.default_steps(sampler)

    def describe(self) -> str:
        return f"{self.name}: {self.model.describe()}"


@dataclass
class Settings:
    """The page's controls for one request; None means the model's default."""

    sampler: str | None = None
    steps: int | None = None
    tile: int | None = None
    seed: int = 0
    half: bool = False
    color_fix: str | None = None           # "adain" / "wavelet"; None or "off": no colour fix
    self_ensemble: bool = False
    samples: int = 1                       # sde: K posterior samples; K > 1 gives their mean and std
    src_lens: str | None = None            # bokeh models: the image's lens information (refusion.data.lens)
    tgt_lens: str | None = None
    disparity: str | float | None = None


@dataclass
class Restored:
    lq: np.ndarray                      # float32 HWC, as read
    restored: np.ndarray                # float32 HWC
    path: Path                          # the full-resolution result file
    bit_depth: int
    seconds: float
    summary: str
    metrics: dict[str, dict[str, float | str | None]] = field(default_factory=dict)
    std: np.ndarray | None = None       # float32 HWC std over the posterior samples (K > 1)


def read_upload(path: str | Path | None, limits: Limits, what: str = "image") -> tuple[np.ndarray, int]:
    """(float32 HWC RGB image, bit depth 8/16) of an uploaded file, or AppInputError naming the file (by
    its name: the page never shows server paths) and the problem."""
    if path is None or str(path) == "":
        raise AppInputError(f"no {what}: upload an image file (PNG, JPEG, TIFF, BMP, WebP) or pick a sample photograph")
    name = Path(path).name
    try:
        image = read_image(path, max_pixels=limits.max_pixels)
        bit_depth = image_bit_depth(path)
    except ImageReadError as exc:
        raise AppInputError(f"{what} {name!r} was refused: {_limit_hint(exc.reason, limits)}") from None
    except MemoryError:
        raise AppInputError(f"{what} {name!r} is too large to decode in this machine's memory") from None
    return image, bit_depth


def _limit_hint(reason: str, limits: Limits) -> str:
    # the reader's hint names its Python argument; a person using the page needs the command's flag
    marker = "; pass a larger max_pixels="
    if marker in reason:
        reason = reason.split(marker)[0] + f"; the app accepts images up to {limits.max_pixels / 1e6:g} megapixels " \
                                           f"(refusion app --max-megapixels)"
    return reason


def preview(image: np.ndarray, side: int = PREVIEW_SIDE, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 copy for the page: longest side at most ``side`` (or exactly ``size`` = (H, W))."""
    from PIL import Image

    array = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    height, width = array.shape[:2]
    if size is None:
        scale = min(1.0, side / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.LANCZOS))


class AppService:
    """Models, limits and the working folder of one app; ``restore`` serves one request."""

    def __init__(self, models: list[AppModel], limits: Limits, workdir: str | Path, device=None):
        if not models:
            raise ValueError("AppService needs at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.models = {m.name: m for m in models}
        self.limits = limits
        self.workdir = Path(workdir)
        self.device = device

    # -- inputs ------------------------------------------------------------------------------
    def model(self, name: str | None) -> AppModel:
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise AppInputError(f"unknown model {name!r}; loaded: {', '.join(self.models)}")
        return self.models[name]

    def check_settings(self, entry: AppModel, settings: Settings) -> Settings:
        """Settings with defaults filled in, or AppInputError for a value out of bounds."""
        tile = _as_int(settings.tile, "tile size", allow_none=True)
        if tile is not None and tile <= 0:
            tile = None                                     # 0 in the page: the whole image at once
        seed = _as_int(settings.seed if settings.seed is not None else 0, "seed")
        if not 0 <= seed < 2 ** 63:
            raise AppInputError(f"seed must be between 0 and 2**63 - 1, got {seed}")
        common = dict(tile=tile, seed=seed, half=bool(settings.half), color_fix=_color_fix(settings.color_fix),
                      self_ensemble=bool(settings.self_ensemble))
        if entry.kind == "regressor":
            return Settings(**common)
        sampler = settings.sampler or entry.default_sampler
        if sampler not in entry.samplers:
            raise AppInputError(f"sampler {sampler!r} is not offered by {entry.name}; choose one of "
                                f"{', '.join(entry.samplers)}")
        steps = _as_int(settings.steps, "steps", allow_none=True)
        if steps is None or steps <= 0:           # the sampler's documented step count (10 for mr_sde)
            steps = min(entry.default_steps(sampler), self.limits.max_steps)
        if steps > self.limits.max_steps:
            raise AppInputError(f"{steps} steps asked for; this app allows at most {self.limits.max_steps} "
                                f"(refusion app --max-steps)")
        if steps > entry.full_steps:
            raise AppInputError(f"{steps} steps asked for; {entry.name} has {entry.full_steps} trained steps, "
                                f"choose at most that many")
        samples = _as_int(settings.samples if settings.samples is not None else 1, "posterior samples")
        if samples < 1:
            raise AppInputError(f"posterior samples must be at least 1, got {samples}")
        if samples > self.limits.max_samples:
            raise AppInputError(f"{samples} posterior samples asked for; this app allows at most "
                                f"{self.limits.max_samples} (refusion app --max-samples)")
        lens = _lens_fields(entry, settings)
        return Settings(sampler=sampler, steps=steps, samples=samples, **lens, **common)

    # -- one request -------------------------------------------------------------------------
    def restore(self, model_name: str | None, lq_path, settings: Settings | None = None, gt_path=None, *,
                on_step: StepCallback | None = None) -> Restored:
        """Restore the image file ``lq_path``; with ``gt_path``, score it. ``on_step(done, total)``
        follows the sampling steps. AppInputError for anything the page should report."""
        entry = self.model(model_name)
        settings = self.check_settings(entry, settings or Settings())
        lq, bit_depth = read_upload(lq_path, self.limits, "image")
        gt = None
        if gt_path:
            gt, _ = read_upload(gt_path, self.limits, "ground truth")
        start = time.perf_counter()
        try:
            restored, std = self._run(entry, lq, settings, on_step)
        except (ValueError, FloatingPointError) as exc:     # the library's refusals name the setting
            raise AppInputError(f"{entry.name} could not restore this image: {exc}") from None
        except MemoryError:
            raise AppInputError("out of memory restoring this image: set a tile size (e.g. 512) or "
                                "upload a smaller image") from None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise AppInputError("out of memory restoring this image: set a tile size (e.g. 512) or "
                                    f"upload a smaller image ({exc})") from None
            raise
        seconds = time.perf_counter() - start
        name = Path(lq_path).name
        path = self._write_result(name, restored, bit_depth)
        metrics = self._metrics(lq, restored, gt) if gt is not None else {}
        height, width = lq.shape[:2]
        how = (f"sampler {settings.sampler}, {settings.steps} steps, seed {settings.seed}" if entry.kind == "sde"
               else "one network pass")
        if std is not None:
            how += f", the mean of {settings.samples} posterior samples (largest std {float(std.max()):.3f})"
        extras = [f"tiles of {settings.tile} px" if settings.tile else None, _half_note(entry) if settings.half else None,
                  "x8 self-ensemble" if settings.self_ensemble else None,
                  f"colour fix {settings.color_fix}" if settings.color_fix else None]
        summary = (f"restored {name} ({width}x{height}, {bit_depth}-bit) with {entry.name} in {seconds:.1f} s: "
                   + ", ".join([how] + [e for e in extras if e]))
        return Restored(lq=lq, restored=restored, path=path, bit_depth=bit_depth,
                        seconds=seconds, summary=summary, metrics=metrics, std=std)

    def _run(self, entry: AppModel, lq: np.ndarray, settings: Settings, on_step: StepCallback | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """(restored float32 HWC, the std over the posterior samples or None), through the one restore path."""
        from refusion.inference.restorer import restore_image
        from refusion.inference.settings import RestoreSettings

        overlap = min(TILE_OVERLAP, settings.tile // 4) if settings.tile else TILE_OVERLAP
        sde = entry.kind == "sde"
        lens = _lens_of(settings) if entry.takes_lens else None
        wanted = RestoreSettings(sampler=settings.sampler if sde else None, steps=settings.steps if sde else None,
                                 seed=settings.seed if sde else None, samples=settings.samples if sde else 1,
                                 tile=settings.tile, overlap=overlap, half=settings.half, lens_info=lens,
                                 self_ensemble=settings.self_ensemble, color_fix=settings.color_fix)
        result = restore_image(entry.model, lq, wanted, callback=on_step)
        return result.hwc(), None if result.std is None else result.hwc("std")

    def _write_result(self, name: str, restored: np.ndarray, bit_depth: int) -> Path:
        results = self.workdir / "results"
        self._prune(results)
        stem, suffix = Path(name).stem or "image", Path(name).suffix.lower()
        suffix = suffix if suffix in (".tif", ".tiff") else ".png"      # JPEG/BMP/WebP in: lossless PNG out
        folder = results / uuid.uuid4().hex
        return write_image(folder / f"{stem}_restored{suffix}", restored, bit_depth=bit_depth)

    @staticmethod
    def _prune(results: Path) -> None:
        if not results.is_dir():
            return
        now = time.time()
        for folder in results.iterdir():
            try:
                if now - folder.stat().st_mtime > RESULT_MAX_AGE_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass

    def _metrics(self, lq: np.ndarray, restored: np.ndarray, gt: np.ndarray) -> dict:
        from refusion.evaluation import metrics
        from refusion.evaluation.lpips_weights import LPIPSUnavailable

        if gt.shape != restored.shape:   # the result still comes back; the table says why it is empty
            return {"note": {"reason": f"no PSNR / LPIPS: the ground truth is {gt.shape[1]}x{gt.shape[0]} but the "
                                       f"result is {restored.shape[1]}x{restored.shape[0]}; upload the matching "
                                       f"clean image"}}
        rows: dict[str, dict[str, float | str | None]] = {}
        candidates = {"input": lq, "restored": restored} if lq.shape == gt.shape else {"restored": restored}
        lpips_note = None
        for label, image in candidates.items():
            row: dict[str, float | str | None] = {"psnr": metrics.psnr(image, gt), "lpips": None}
            if lpips_note is None:
                try:
                    row["lpips"] = metrics.lpips(image, gt, device=self.device)
                except LPIPSUnavailable as exc:
                    lpips_note = str(exc)
                except RuntimeError as exc:    # AlexNet's pooling needs about 31x31 pixels
                    lpips_note = (f"LPIPS could not be computed on a {gt.shape[1]}x{gt.shape[0]} image "
                                  f"({type(exc).__name__}: {exc})")
            rows[label] = row
        if lpips_note:
            rows["note"] = {"reason": f"LPIPS unavailable: {lpips_note}"}
        return rows

    # -- sample photographs ------------------------------------------------------------------
    def sample(self, name: str, degradation: str = "noise", seed: int = 0) -> tuple[Path, Path]:
        """(degraded input, clean ground truth) PNG files of a bundled photograph."""
        from refusion.data import degradations, synthetic

        if name not in synthetic.SOURCES:
            raise AppInputError(f"unknown sample photograph {name!r}; choose one of {', '.join(synthetic.SOURCES)}")
        if degradation not in SAMPLE_DEGRADATIONS:
            raise AppInputError(f"unknown degradation {degradation!r}; choose one of {', '.join(SAMPLE_DEGRADATIONS)}")
        try:
            clean = synthetic.load_source(name).astype(np.float32) / 255.0
        except RuntimeError as exc:
            raise AppInputError(str(exc)) from None
        folder = self.workdir / "samples"
        gt_path = folder / f"{name}.png"
        if not gt_path.is_file():
            write_image(gt_path, clean)
        if degradation == "none":
            return gt_path, gt_path
        lq_path = folder / f"{name}_{degradation}.png"
        if not lq_path.is_file():
            lq = degradations.degrade(degradation, clean, np.random.default_rng(seed))
            write_image(lq_path, lq)
        return lq_path, gt_path


def _half_note(entry: AppModel) -> str:
    """What half precision did: the library runs float32 on a CPU that only emulates bfloat16."""
    from refusion.inference.capability import bf16_reason, native_bf16
    from refusion.inference.precision import half_dtype

    device = entry.model.device
    if half_dtype(device) == torch.bfloat16 and not native_bf16(device):
        return f"half precision asked for but not used ({bf16_reason(device)}); float32"
    return "half precision"


def uncertainty_map(std: np.ndarray) -> np.ndarray:
    """The page's picture of a (H, W, C) std: the channel mean, colour-mapped on the fixed scale of
    `refusion restore --save-std` (black 0 to light yellow at DEFAULT_STD_MAX and above), float RGB."""
    from refusion.cli.restore_posterior import DEFAULT_STD_MAX, std_colormap

    return std_colormap(std, DEFAULT_STD_MAX)


def _lens_of(settings: Settings):
    """The encoded lens information of a request (refusion.data.lens.lens_info); AppInputError naming the field."""
    from refusion.data.lens import LensMetadataError, lens_info

    try:
        return lens_info(settings.src_lens, settings.tgt_lens, settings.disparity, where="the page")
    except LensMetadataError as exc:
        raise AppInputError(str(exc)) from None


def _lens_fields(entry: AppModel, settings: Settings) -> dict:
    """The lens fields of a request to a bokeh model, checked (all three needed); none for other models."""
    if not entry.takes_lens:
        return {}
    fields = {"src_lens": settings.src_lens, "tgt_lens": settings.tgt_lens, "disparity": settings.disparity}
    labels = {"src_lens": "source lens", "tgt_lens": "target lens", "disparity": "disparity"}    # the page's
    missing = [labels[name] for name, value in fields.items() if value in (None, "")]
    if missing:
        raise AppInputError(f"{entry.name} is a bokeh model: give the image's lens information ({', '.join(missing)} "
                            f"missing), e.g. source lens Sony50mmf16.0BS, target lens Canon50mmf1.4BS, disparity 35")
    _lens_of(Settings(**fields))
    return fields


def _color_fix(value) -> str | None:
    """The library's color_fix of the page's choice ("off", "", None: no fix); AppInputError for another value."""
    if value in (None, "", "off"):
        return None
    if value not in COLOR_FIX_CHOICES:
        raise AppInputError(f"colour fix {value!r} is not offered; choose one of {', '.join(COLOR_FIX_CHOICES)}")
    return value


def _as_int(value, what: str, allow_none: bool = False) -> int | None:
    if value is None or value == "":
        if allow_none:
            return None
        raise AppInputError(f"{what} is missing")
    if isinstance(value, bool):
        raise AppInputError(f"{what} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{what} must be a whole number, got {value!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise AppInputError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def metrics_markdown(metrics: dict) -> str:
    """The PSNR / LPIPS table for the page."""
    if not metrics:
        return "Upload a ground truth (the clean image) to see PSNR and LPIPS."
    rows = {label: row for label, row in metrics.items() if label != "note"}
    lines = ["| image | PSNR (dB) ↑ | LPIPS ↓ |", "|---|---|---|"] if rows else []
    for label, row in rows.items():
        lp = "n/a" if row["lpips"] is None else f"{row['lpips']:.4f}"
        lines.append(f"| {label} | {row['psnr']:.2f} | {lp} |")
    if "note" in metrics:
        lines += ["", metrics["note"]["reason"]]
    return "\n".join(lines).strip()
