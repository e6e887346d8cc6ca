"""Evaluate trained runs (SDE with chosen samplers/step counts, and regressors) on the same test pairs.

`evaluate_runs` restores every test image with every method, measures PSNR/SSIM (BasicSR protocol),
LPIPS when its weights are installed, seconds per image and network evaluations, and writes the
tables, plots and image grid of `refusion.evaluation.report` into one folder.

A stereo network (StereoNAFNet) restores the test set's ``<id>_L`` / ``<id>_R`` views together, in one
pass, and each view is scored as an image of its own, so its rows compare with those of a method that
restores each view alone. Seeds and network evaluations (NFE) count per pass: per image, or per pair.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from refusion.evaluation import metrics
from refusion.data.lens import lens_info_for, read_lens_metadata
from refusion.data.paired import find_pairs, stereo_groups
from refusion.data.image_io import read_image, write_image
from refusion.evaluation.report import plot_psnr_vs_lpips, plot_steps_vs_quality, save_image_grid, write_tables


@dataclass(frozen=True)
class Method:
    """One row of the results table: a run, and for SDE runs the sampler and step count."""

    run_dir: Path
    kind: str  # "sde" | "regressor"
    sampler: str | None = None
    steps: int | None = None

    @property
    def label(self) -> str:
        name = self.run_dir.name
        return name if self.kind != "sde" else f"{name} [{self.sampler}, {self.steps}]"


def run_kind(run_dir: Path) -> str:
    """'sde' or 'regressor', read from the run's resolved recipe (or a saved pipeline folder)."""
    recipe = run_dir / "recipe.yml"
    if recipe.is_file():
        task = yaml.safe_load(recipe.read_text()).get("task")
        if task == "sde":
            return "sde"
        if task == "regressor":
            return "regressor"
        raise ValueError(f"{recipe}: task {task!r} cannot restore images; evaluate sde or regressor runs")
    if (run_dir / "model_index.json").is_file():
        return "sde"
    raise FileNotFoundError(f"{run_dir} is neither a training run (no recipe.yml) nor a saved pipeline (no model_index.json)")


def parse_sampler_specs(specs: Sequence[str]) -> list[tuple[str, int]]:
    """'posterior:100' -> ('posterior', 100); errors name the bad entry."""
    out = []
    for spec in specs:
        name, sep, steps = spec.partition(":")
        if not sep or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"sampler spec {spec!r} must look like NAME:STEPS, e.g. posterior:100")
        out.append((name, int(steps)))
    return out


def build_methods(run_dirs: Sequence[Path], sampler_specs: Sequence[tuple[str, int]]) -> list[Method]:
    methods = []
    for run_dir in run_dirs:
        kind = run_kind(Path(run_dir))
        if kind == "sde":
            methods += [Method(Path(run_dir), "sde", s, n) for s, n in sampler_specs]
        else:
            methods.append(Method(Path(run_dir), "regressor"))
    return methods


class _CallCounter:
    """Counts forward calls of a module (network evaluations), whatever the sampler does."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.count += 1

    def close(self):
        self._handle.remove()


@dataclass
class _Restorer:
    """Loads a run once and restores one (1,3,H,W) tensor at a time."""

    method: Method
    device: str
    network: torch.nn.Module = field(init=False)

    def __post_init__(self):
        from refusion.inference.pipeline import load_pipeline
        from refusion.inference.loading import load_regressor

        if self.method.kind == "sde":
            self.pipe = load_pipeline(self.method.run_dir, device=self.device)
            self.network = self.pipe.unet
        else:
            self.network = load_regressor(self.method.run_dir).to(self.device).eval()

    @property
    def is_stereo(self) -> bool:
        from refusion.inference.loading import is_stereo

        return is_stereo(self.network)

    @property
    def takes_lens_info(self) -> bool:
        from refusion.inference.pipeline import takes_lens_info

        return takes_lens_info(self.network)

    def __call__(self, lq: torch.Tensor, seed: int, lens=None) -> torch.Tensor:
        """``lens``: the image's lens information, used by bokeh networks only."""
        from refusion.inference.restoration import restore

        if self.method.kind == "sde":
            generator = torch.Generator(device=self.device).manual_seed(seed)
            return self.pipe(lq, num_inference_steps=self.method.steps, sampler=self.method.sampler,
                             generator=generator, output_type="pt", progress=False,
                             lens_info=lens if self.takes_lens_info else None).images
        return restore(lq, model=self.network, progress=False)


def evaluate_runs(
    run_dirs: Sequence[str | Path],
    test_gt: str | Path,
    test_lq: str | Path,
    out_dir: str | Path,
    *,
    samplers: Sequence[str] = ("posterior:100",),
    seed: int = 0,
    device: str = "cpu",
    max_images: int | None = None,
    crop_border: int = 0,
    test_y_channel: bool = False,
    lpips_net: str = "alex",
    grid_images: int = 3,
    progress: bool = True,
    lens: str | Path | None = None,
) -> dict:
    """Evaluate every method on the same pairs; write tables, plots, grid and restored images.

    ``lens``: the test set's lens metadata (a meta.txt, refusion.data.lens), needed when a run is a bokeh
    model; every test image must have an entry (checked before any restoration).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = build_methods([Path(r) for r in run_dirs], parse_sampler_specs(samplers))
    pairs = find_pairs(test_gt, test_lq)[: max_images or None]
    if not pairs:
        raise ValueError(f"no test pairs in {test_gt} / {test_lq}")
    lenses = None
    if lens is not None:
        table = read_lens_metadata(lens)
        lenses = {name: lens_info_for(table, name, source=lens, image=str(lq)) for name, _, lq in pairs}
    gts = {name: read_image(gt) for name, gt, _ in pairs}
    lqs = {name: read_image(lq) for name, _, lq in pairs}

    lpips_reason = None
    try:
        metrics.lpips(gts[pairs[0][0]], gts[pairs[0][0]], net=lpips_net)
    except metrics.LPIPSUnavailable as err:
        lpips_reason = str(err)

    rows, restored = [], {}
    for method in methods:
        restorer = _Restorer(method, device)
        if restorer.takes_lens_info and lenses is None:
            raise ValueError(f"{method.run_dir} is a bokeh model ({type(restorer.network).__name__}): pass the test "
                             f"set's lens metadata (lens=PATH, --lens-meta PATH: lines 'id, src_lens, tgt_lens, "
                             f"disparity')")
        jobs = _jobs(pairs, stereo=restorer.is_stereo)
        counter = _CallCounter(restorer.network)
        scores = {"psnr": [], "ssim": [], "lpips": []}
        seconds = 0.0
        bar = tqdm(jobs, desc=method.label, disable=not progress, leave=False)
        for index, names in enumerate(bar):
            # a stereo network restores the two views of a pair in one pass, left then right on channels
            lq = torch.from_numpy(np.concatenate([lqs[n] for n in names], axis=2)).permute(2, 0, 1)[None].to(device)
            start = time.perf_counter()
            out = restorer(lq, seed + index, lenses and lenses[names[0]])
            seconds += time.perf_counter() - start
            views = np.split(out[0].permute(1, 2, 0).float().cpu().numpy(), len(names), axis=2)
            for name, img in zip(names, views):
                restored[(method.label, name)] = img
                gt = gts[name]
                scores["psnr"].append(metrics.psnr(img, gt, crop_border=crop_border, test_y_channel=test_y_channel))
                scores["ssim"].append(metrics.ssim(img, gt, crop_border=crop_border, test_y_channel=test_y_channel))
                if lpips_reason is None:
                    scores["lpips"].append(metrics.lpips(img, gt, net=lpips_net))
                _save_png(out_dir / "images" / _slug(method.label) / f"{name}.png", img)
        counter.close()
        rows.append({
            "method": method.label, "run": method.run_dir.name, "kind": method.kind,
            "sampler": method.sampler, "steps": method.steps, "nfe": counter.count / len(jobs),
            "psnr": float(np.mean(scores["psnr"])), "ssim": float(np.mean(scores["ssim"])),
            "lpips": float(np.mean(scores["lpips"])) if scores["lpips"] else None,
            "seconds_per_image": seconds / len(pairs), "images": len(pairs),
        })
    lq_row = _input_row(pairs, lqs, gts, crop_border, test_y_channel, lpips_net if lpips_reason is None else None)
    rows.insert(0, lq_row)

    notes = [f"PSNR/SSIM: BasicSR protocol, crop_border={crop_border}, test_y_channel={test_y_channel}; "
             f"LPIPS: {lpips_net}" + (f" unavailable ({lpips_reason})" if lpips_reason else ""),
             f"{len(pairs)} test pairs from {test_lq}; seeds from {seed}, one per network pass (image, or stereo view pair)"]
    artefacts = write_tables(rows, out_dir, notes=notes)
    artefacts["psnr_vs_lpips"] = plot_psnr_vs_lpips(rows, out_dir / "psnr_vs_lpips.png")
    artefacts["steps_vs_quality"] = plot_steps_vs_quality(rows, out_dir / "steps_vs_quality.png")
    artefacts["grid"] = _grid(_spread(pairs, grid_images), methods, rows, lqs, gts, restored, out_dir / "grid.png")
    return {"rows": rows, "artefacts": {k: v for k, v in artefacts.items() if v is not None}, "notes": notes}


def _jobs(pairs, *, stereo: bool) -> list[tuple[str, ...]]:
    """Image names per network pass: each image alone, or for a stereo network its <id>_L / <id>_R pair
    (a test set with a view that has no partner is a ValueError naming it)."""
    names = [name for name, _, _ in pairs]
    if not stereo:
        return [(name,) for name in names]
    return [(i + "_L", i + "_R") for i in stereo_groups(names, {name: lq for name, _, lq in pairs})]


def _input_row(pairs, lqs, gts, crop_border, test_y_channel, lpips_net) -> dict:
    """The degraded input itself as a reference row."""
    names = [n for n, _, _ in pairs]
    kw = dict(crop_border=crop_border, test_y_channel=test_y_channel)
    return {
        "method": "input (LQ)", "run": "input", "kind": "input", "sampler": None, "steps": None, "nfe": 0,
        "psnr": float(np.mean([metrics.psnr(lqs[n], gts[n], **kw) for n in names])),
        "ssim": float(np.mean([metrics.ssim(lqs[n], gts[n], **kw) for n in names])),
        "lpips": float(np.mean([metrics.lpips(lqs[n], gts[n], net=lpips_net) for n in names])) if lpips_net else None,
        "seconds_per_image": 0.0, "images": len(names),
    }


def _grid(pairs, methods, rows, lqs, gts, restored, path: Path) -> Path:
    """LQ | regressors | the best-PSNR setting of each SDE sampler | GT, one row per image."""
    by_label = {r["method"]: r for r in rows}
    chosen = [m for m in methods if m.kind == "regressor"]
    best: dict[tuple, Method] = {}
    for m in methods:
        if m.kind == "sde":
            key = (m.run_dir, m.sampler)
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
    return m.run_dir.name if m.kind != "sde" else f"{m.run_dir.name}\n{m.sampler} x{m.steps}"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_")


def _save_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, img, bit_depth=8)
