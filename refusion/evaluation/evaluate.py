"""Evaluate trained runs (SDE with chosen samplers/step counts, and regressors) on the same test pairs.

`evaluate_runs` restores every test image with every method, measures PSNR/SSIM (BasicSR protocol),
LPIPS when its weights are installed, seconds per image and network evaluations, and writes the
tables, plots and image grid of `refusion.evaluation.report` into one folder.

A stereo network (StereoNAFNet) restores the test set's ``<id>_L`` / ``<id>_R`` views together, in one
pass, and each view is scored as an image of its own, so its rows compare with those of a method that
restores each view alone. Seeds and network evaluations (NFE) count per pass: per image, or per pair.

Every row keeps its per-image scores; the report gives each mean a bootstrap interval over the images and
the paired difference of each row to a reference row (refusion.evaluation.statistics). Under
``accelerate launch`` the passes are split between the processes (refusion.inference.processes), pass i
keeps seed ``seed + i`` whichever process runs it, and the main process alone writes the report.
"""
from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from refusion.evaluation import metrics
from refusion.data.lens import lens_info_for, read_lens_metadata
from refusion.data.paired import find_pairs, stereo_groups
from refusion.data.image_io import read_image, write_image
from refusion.evaluation.report import plot_psnr_vs_lpips, plot_steps_vs_quality, save_image_grid, write_tables
from refusion.evaluation.statistics import CONFIDENCE, RESAMPLES, SEED, add_intervals
from refusion.inference.model import LoadedModel, load_model
from refusion.inference.processes import gather_in_order, process_device, process_share, process_state
from refusion.inference.restorer import check_settings, restore_image
from refusion.inference.settings import RestoreSettings
from refusion.inference.workers import map_workers, worker_models

INPUT_LABEL = "input (LQ)"
FEW_IMAGES = 10   # below this a percentile bootstrap interval is known to undercover
# each method's scores are gathered once every process has restored its share: the first done waits for
# the others, up to about one pass (a large image on a CPU can outlast torch's 30-minute default)
WAIT_LIMIT = timedelta(hours=24)


@dataclass(frozen=True)
class Method:
    """One row of the results table: a run; for SDE runs the sampler, step count and number of posterior
    samples averaged (``samples`` K > 1: the mean of K); for regressors whether the x8 self-ensemble is on."""

    run_dir: Path
    kind: str  # "sde" | "regressor"
    sampler: str | None = None
    steps: int | None = None
    samples: int = 1
    self_ensemble: bool = False

    @property
    def variant(self) -> str | None:
        """What sets this row apart from the plain restoration of its run and setting."""
        if self.samples > 1:
            return f"mean of {self.samples}"
        return "self-ensemble x8" if self.self_ensemble else None

    @property
    def label(self) -> str:
        settings = [self.sampler, str(self.steps)] if self.kind == "sde" else []
        settings += [self.variant] if self.variant else []
        return f"{self.run_dir.name} [{', '.join(settings)}]" if settings else self.run_dir.name


DEFAULT_SPEC = "default"


def parse_sampler_specs(specs: Sequence[str]) -> list[tuple[str, int, int]]:
    """'posterior:100' -> ('posterior', 100, 1); 'mr_sde:10:mean4' -> ('mr_sde', 10, 4), the mean of 4
    posterior samples per image; 'default' -> ('default', 0, 1): each model's own sampler at its default
    steps (a distilled student at its K); errors name the bad entry."""
    out = []
    for spec in specs:
        if spec == DEFAULT_SPEC:
            out.append((DEFAULT_SPEC, 0, 1))
            continue
        parts = spec.split(":")
        name, steps, mean = (parts + ["", ""])[:3]
        samples = mean[4:] if mean.startswith("mean") else ""
        if (len(parts) > 3 or not name or not steps.isdigit() or int(steps) < 1
                or (mean and (not samples.isdigit() or int(samples) < 2))):
            raise ValueError(f"sampler spec {spec!r} must look like NAME:STEPS or NAME:STEPS:meanK (K >= 2 posterior "
                             f"samples averaged per image), e.g. posterior:100 or mr_sde:10:mean4, or 'default' "
                             f"(each model's own sampler and steps)")
        out.append((name, int(steps), int(samples) if mean else 1))
    return out


def resolve_reference(reference: str | bool | None, methods: Sequence[Method]) -> str | None:
    """The label of the row paired differences are taken against.

    None: the first regressor, else no differences; False: no differences; a string: a row's label
    (``"input (LQ)"``, ``"shadow [posterior, 100]"``) or the run name of exactly one row.
    """
    if reference is False:
        return None
    if reference is None or reference is True:
        return next((m.label for m in methods if m.kind == "regressor"), None)
    labels = [INPUT_LABEL] + [m.label for m in methods]
    if reference in labels:
        return reference
    by_run = ([INPUT_LABEL] if reference == "input" else []) + [m.label for m in methods if m.run_dir.name == reference]
    if len(by_run) == 1:
        return by_run[0]
    if by_run:
        raise ValueError(f"reference {reference!r} names several rows ({'; '.join(by_run)}): give one row's label")
    raise ValueError(f"reference {reference!r} matches no row; rows: {'; '.join(labels)}")


def load_methods(run_dirs: Sequence[Path], sampler_specs: Sequence[tuple[str, int, int]], *, device: str,
                 self_ensemble: bool = False, options: Mapping[Path, Path] | None = None,
                 state=None) -> tuple[list[Method], dict[Path, LoadedModel]]:
    """Every model loaded once (refusion.load_model: runs, saved pipelines and regressors, imported official
    folders, official checkpoint files with their ``options``), and the rows: every SDE model with every
    (sampler, steps, samples); every regressor, and with ``self_ensemble`` its x8 self-ensemble as a second row."""
    methods, loaded = [], {}
    for run_dir in map(Path, run_dirs):
        # an official checkpoint is imported into the shared cache by one process, then read by all
        with state.main_process_first() if state is not None else contextlib.nullcontext():
            loaded[run_dir] = load_model(run_dir, options=(options or {}).get(run_dir), device=device)
        model = loaded[run_dir]
        if model.kind == "sde":
            for s, n, k in sampler_specs:
                own = s == DEFAULT_SPEC         # the model's own sampler at its default steps
                methods.append(Method(run_dir, "sde", model.defaults.sampler if own else s,
                                      model.default_steps() if own else n, k))
        else:
            methods.append(Method(run_dir, "regressor"))
            methods += [Method(run_dir, "regressor", self_ensemble=True)] if self_ensemble else []
    return methods, loaded


class _CallCounter:
    """Counts network evaluations of a module, whatever the sampler does: each forward call counts the
    images in its batch (K posterior samples run as one batch: K evaluations)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.count += args[0].shape[0] if args and torch.is_tensor(args[0]) else 1

    def close(self):
        self._handle.remove()


@dataclass
class _Restorer:
    """Restores one (1, C, H, W) tensor at a time with a method through the one restore path
    (refusion.inference.restorer.restore_image); ``model``: its run, loaded once and shared by the methods
    of that run; ``settings``: the method's settings, checked against the model before any image."""

    method: Method
    model: LoadedModel
    settings: RestoreSettings

    @classmethod
    def checked(cls, method: Method, model: LoadedModel, lenses) -> "_Restorer":
        """Refuse, before anything is restored, what this method cannot do on this test set."""
        if model.capabilities.conditioning == "lens" and lenses is None:
            raise ValueError(f"{method.run_dir} is a bokeh model ({type(model.network).__name__}): pass the test "
                             f"set's lens metadata (lens=PATH, --lens-meta PATH: lines 'id, src_lens, tgt_lens, "
                             f"disparity')")
        wanted = RestoreSettings(sampler=method.sampler, steps=method.steps, samples=method.samples,
                                 self_ensemble=method.self_ensemble)
        try:
            return cls(method, model, check_settings(model, wanted, lens_later=True))
        except ValueError as exc:
            raise ValueError(f"{method.label!r}: {exc}") from None

    @property
    def network(self):
        return self.model.network

    @property
    def is_stereo(self) -> bool:
        return self.model.capabilities.conditioning == "stereo"

    def __call__(self, lq: torch.Tensor, seed: int, lens=None) -> torch.Tensor:
        """``lens``: the image's lens information, used by bokeh networks only. A mean of K draws its K
        samples' seeds from the one generator seeded with ``seed``."""
        takes_lens = self.model.capabilities.conditioning == "lens"
        settings = self.settings.replace(seed=seed if self.model.kind == "sde" else None,
                                         lens_info=lens if takes_lens else None)
        return restore_image(self.model, lq, settings).image


def evaluate_runs(
    run_dirs: Sequence[str | Path],
    test_gt: str | Path,
    test_lq: str | Path,
    out_dir: str | Path,
    *,
    samplers: Sequence[str] = ("posterior:100",),
    options: Mapping[str | Path, str | Path] | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_images: int | None = None,
    crop_border: int = 0,
    test_y_channel: bool = False,
    lpips_net: str = "alex",
    grid_images: int = 3,
    progress: bool = True,
    lens: str | Path | None = None,
    reference: str | bool | None = None,
    self_ensemble: bool = False,
    workers: int | None = None,
) -> dict | None:
    """Evaluate every method on the same pairs; write tables, plots, grid and restored images.

    ``run_dirs``: anything refusion.load_model takes as a path (runs, saved pipelines and regressors,
    imported official folders, official checkpoint files); ``options``: the option file of each checkpoint
    file among them ({checkpoint: option file}).
    ``lens``: the test set's lens metadata (a meta.txt, refusion.data.lens), needed when a run is a bokeh
    model; every test image must have an entry (checked before any restoration).
    ``reference``: the row every other row is compared with image by image (resolve_reference: a row's
    label or a run name; None picks the first regressor, else no comparison; False: none).
    ``samplers``: "NAME:STEPS", or "NAME:STEPS:meanK" for the mean of K posterior samples per image
    (refusion.sample_posterior). ``self_ensemble``: each regressor also gets a row with its x8
    self-ensemble (refusion.restore(..., self_ensemble=True)).
    ``workers``: images restored at once, each with its own copy of the models (None: on the CPU one per
    CPU of the process's budget, at most 4, as `refusion restore` does; refusion.inference.workers). The
    scores do not depend on it, up to float32 rounding of LPIPS sums (thread counts differ).

    Under ``accelerate launch`` each process restores its share of the images and writes their PNGs; the
    scores are gathered and the main process writes the report and returns the result; the other
    processes return None.
    """
    out_dir = Path(out_dir)
    state = process_state(device, timeout=WAIT_LIMIT)
    device = process_device(device, state)
    test = _read_test_set(test_gt, test_lq, max_images, lens, grid_images)
    methods, loaded = load_methods([Path(r) for r in run_dirs], parse_sampler_specs(samplers), device=device,
                                   self_ensemble=self_ensemble, state=state,
                                   options={Path(k): Path(v) for k, v in (options or {}).items()})
    reference = resolve_reference(reference, methods)
    restorers = [_Restorer.checked(m, loaded[m.run_dir], test.lenses) for m in methods]
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = test.pairs
    score = _scorer(crop_border, test_y_channel, lpips_net, test)
    done = [(i, {"image": name, **score(test.lqs[name], test.gts[name]), "seconds": 0.0})
            for i, (name, _, _) in process_share(pairs, state)]
    rows = [_row(INPUT_LABEL, "input", "input", None, None, 0, gather_in_order(done), test.order)]
    largest = max(lq.shape[0] * lq.shape[1] for lq in test.lqs.values())
    restorer_sets, threads = worker_models(restorers, jobs=len(pairs), largest_pixels=largest, workers=workers,
                                           cpu=torch.device(device).type == "cpu")   # one list of copies per worker
    restored = {}
    for m, method in enumerate(methods):
        row, grid = _evaluate_method(m, method, restorer_sets, threads, test, score, seed=seed, device=device,
                                     out_dir=out_dir, state=state, progress=progress)
        rows.append(row)
        restored.update({(method.label, name): img for name, img in grid.items()})
    if not state.is_main_process:
        return None
    notes = _notes(test, reference, score, test_lq=test_lq, seed=seed, workers=len(restorer_sets), threads=threads)
    add_intervals(rows, reference, groups=test.scenes)
    artefacts = write_tables(rows, out_dir, notes=notes)
    artefacts["psnr_vs_lpips"] = plot_psnr_vs_lpips(rows, out_dir / "psnr_vs_lpips.png")
    artefacts["steps_vs_quality"] = plot_steps_vs_quality(rows, out_dir / "steps_vs_quality.png")
    grid_pairs = [pair for pair in pairs if pair[0] in test.grid_names]
    artefacts["grid"] = _grid(grid_pairs, methods, rows, test.lqs, test.gts, restored, out_dir / "grid.png")
    return {"rows": rows, "artefacts": {k: v for k, v in artefacts.items() if v is not None}, "notes": notes,
            "reference": reference}


def _read_test_set(test_gt, test_lq, max_images, lens, grid_images: int) -> "_TestSet":
    """The test pairs, their images and (with ``lens``, a meta.txt) every image's lens information."""
    pairs = find_pairs(test_gt, test_lq)[: max_images or None]
    if not pairs:
        raise ValueError(f"no test pairs in {test_gt} / {test_lq}")
    lenses = None
    if lens is not None:
        table = read_lens_metadata(lens)
        lenses = {name: lens_info_for(table, name, source=lens, image=str(lq)) for name, _, lq in pairs}
    return _TestSet(pairs, {name: read_image(lq) for name, _, lq in pairs},
                    {name: read_image(gt) for name, gt, _ in pairs}, lenses, {name for name, _, _ in _spread(pairs, grid_images)})


@dataclass
class _TestSet:
    """The test pairs as read once: names in order, LQ and GT images, lens information, the grid's images."""

    pairs: list
    lqs: dict
    gts: dict
    lenses: dict | None
    grid_names: set

    @property
    def order(self) -> dict[str, int]:
        return {name: i for i, (name, _, _) in enumerate(self.pairs)}

    @property
    def scenes(self) -> dict[str, str] | None:
        return _scene_groups([name for name, _, _ in self.pairs])


def _scorer(crop_border: int, test_y_channel: bool, lpips_net: str, test: _TestSet) -> "_Scorer":
    """The scorer, with LPIPS only when its weights load (the reason is kept for the notes)."""
    first = test.gts[test.pairs[0][0]]
    try:
        metrics.lpips(first, first, net=lpips_net)
    except metrics.LPIPSUnavailable as err:
        return _Scorer(crop_border, test_y_channel, None, requested=lpips_net, reason=str(err))
    return _Scorer(crop_border, test_y_channel, lpips_net, requested=lpips_net)


def _evaluate_method(m: int, method: Method, restorer_sets, threads, test: _TestSet, score, *, seed: int, device,
                     out_dir: Path, state, progress: bool) -> tuple[dict, dict]:
    """One row: every pass of this process restored (its PNGs written), the scores gathered from all
    processes; and the grid's images of this method."""
    jobs = _jobs(test.pairs, stereo=restorer_sets[0][m].is_stereo)
    counted = [(own[m], _CallCounter(own[m].network)) for own in restorer_sets]
    share = process_share(jobs, state)
    bar = tqdm(total=len(share), desc=method.label, disable=not (progress and state.is_main_process), leave=False)

    def one_pass(worker, item):
        (own_restorer, counter), (index, names) = worker, item
        # a stereo network restores the two views of a pair in one pass, left then right on channels
        lq = torch.from_numpy(np.concatenate([test.lqs[n] for n in names], axis=2)).permute(2, 0, 1)[None].to(device)
        calls, start = counter.count, time.perf_counter()
        out = own_restorer(lq, seed + index, test.lenses and test.lenses[names[0]])
        seconds = time.perf_counter() - start
        views = np.split(out[0].permute(1, 2, 0).float().cpu().numpy(), len(names), axis=2)
        records, grid = [], {}
        for name, img in zip(names, views):
            records.append({"image": name, **score(img, test.gts[name]), "seconds": seconds / len(names)})
            if name in test.grid_names:
                grid[name] = img
            _save_png(out_dir / "images" / _slug(method.label) / f"{name}.png", img)
        return index, (records, counter.count - calls, grid)

    with bar:
        done = map_workers(one_pass, share, counted, threads=threads, on_result=lambda _: bar.update())
    for _, counter in counted:
        counter.close()
    passes = gather_in_order(done)   # every process takes part; only the main one uses the result
    nfe = sum(calls for _, calls, _ in passes) / len(passes)
    row = _row(method.label, method.run_dir.name, method.kind, method.sampler, method.steps, nfe,
               [r for records, _, _ in passes for r in records], test.order, variant=method.variant)
    return row, {name: img for _, _, grid in passes for name, img in grid.items()}


def _notes(test: _TestSet, reference, score, *, test_lq, seed: int, workers: int, threads) -> list[str]:
    lpips = f"LPIPS: {score.requested}" + (f" unavailable ({score.reason})" if score.reason else "")
    return [f"PSNR/SSIM: BasicSR protocol, crop_border={score.crop_border}, test_y_channel={score.test_y_channel}; "
            + lpips,
            f"{len(test.pairs)} test pairs from {test_lq}; seeds from {seed}, one per network pass (image, or stereo "
            f"view pair)",
            _interval_note(len(test.pairs), reference, test.scenes),
            f"{workers} image(s) restored at once per process, {threads or torch.get_num_threads()} torch "
            f"thread(s) each; s / image is one image's own wall time"]


def _jobs(pairs, *, stereo: bool) -> list[tuple[str, ...]]:
    """Image names per network pass: each image alone, or for a stereo network its <id>_L / <id>_R pair
    (a test set with a view that has no partner is a ValueError naming it)."""
    names = [name for name, _, _ in pairs]
    if not stereo:
        return [(name,) for name in names]
    return [(i + "_L", i + "_R") for i in stereo_groups(names, {name: lq for name, _, lq in pairs})]


@dataclass(frozen=True)
class _Scorer:
    """PSNR, SSIM and (when ``lpips_net`` is set) LPIPS of one restored image against its ground truth;
    ``requested``: the LPIPS network asked for, ``reason``: why LPIPS is unavailable."""

    crop_border: int
    test_y_channel: bool
    lpips_net: str | None
    requested: str = "alex"
    reason: str | None = None

    def __call__(self, img: np.ndarray, gt: np.ndarray) -> dict:
        kw = dict(crop_border=self.crop_border, test_y_channel=self.test_y_channel)
        return {"psnr": metrics.psnr(img, gt, **kw), "ssim": metrics.ssim(img, gt, **kw),
                "lpips": metrics.lpips(img, gt, net=self.lpips_net) if self.lpips_net else None}


def _row(label, run, kind, sampler, steps, nfe, records: list[dict], order: dict[str, int], *,
         variant: str | None = None) -> dict:
    """A results row: the means of the per-image records, which it keeps in test-pair order."""
    records = sorted(records, key=lambda r: order[r["image"]])
    mean = lambda key: float(np.mean([r[key] for r in records]))  # noqa: E731
    return {
        "method": label, "run": run, "kind": kind, "sampler": sampler, "steps": steps, "variant": variant, "nfe": nfe,
        "psnr": mean("psnr"), "ssim": mean("ssim"), "lpips": mean("lpips") if records[0]["lpips"] is not None else None,
        "seconds_per_image": mean("seconds"), "images": len(records), "per_image": records,
    }


def _scene_groups(names: list[str]) -> dict[str, str] | None:
    """View -> pair id when the test set is stereo (every image one view of a complete <id>_L/<id>_R pair):
    the two views show one scene, so the bootstrap resamples them together; else None."""
    try:
        stereo_groups(names)
    except ValueError:
        return None
    return {name: name[:-2] for name in names}


def _interval_note(n: int, reference: str | None, scenes: dict[str, str] | None) -> str:
    units = len(set(scenes.values())) if scenes else n
    if units < 2:
        return (f"one test {'scene' if scenes else 'image'}: no confidence intervals or paired differences with "
                "intervals (a bootstrap over one is degenerate); the table gives its scores")
    what = f"the {n} test images" + (f", resampled by scene ({units} stereo pairs, both views together)"
                                     if scenes else "")
    note = (f"[low, high]: {CONFIDENCE:.0%} percentile-bootstrap intervals of the mean over {what} "
            f"({RESAMPLES:,} resamples, seed {SEED}); an interval is left out where a score is infinite")
    if reference is not None:
        note += f"; differences to {reference} resample both rows' images jointly"
    if units < FEW_IMAGES:
        note += (f"; with fewer than {FEW_IMAGES} {'scenes' if scenes else 'images'} these intervals are too "
                 "narrow (a bootstrap only recombines what it was given): read them as the spread of those images")
    return note


def _grid(pairs, methods, rows, lqs, gts, restored, path: Path) -> Path:
    """LQ | regressors | each SDE sampler (and mean of K) at its largest step count | GT, one row per image."""
    by_label = {r["method"]: r for r in rows}
    chosen = [m for m in methods if m.kind == "regressor"]
    best: dict[tuple, Method] = {}
    for m in methods:
        if m.kind == "sde":
            key = (m.run_dir, m.sampler, m.samples)
            if key not in best or by_label[m.label]["steps"] > by_label[best[key].label]["steps"]:
                best[key] = m
    chosen += list(best.values())
    grid_rows = []
    for name, _, _ in pairs:
        cols = [("LQ", lqs[name])] + [(_short(m), restored[(m.label, name)]) for m in chosen] + [("GT", gts[name])]
        grid_rows.append((name, cols))
    return save_image_grid(grid_rows, path)


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over the list (the grid shows several source photographs)."""
    if count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def _short(m: Method) -> str:
    short = m.run_dir.name if m.kind != "sde" else f"{m.run_dir.name}\n{m.sampler} x{m.steps}"
    return f"{short}\n{m.variant}" if m.variant else short


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_")


def _save_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, img, bit_depth=8)
