"""Evaluation artefacts: result tables (markdown, CSV, JSON), plots and image grids.

Pure presentation: every function takes already computed numbers or images and writes files.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLUMNS = ("method", "kind", "sampler", "steps", "nfe", "psnr", "ssim", "lpips", "seconds_per_image", "images")
METRIC_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4}
# the smallest axis span a plot may show per metric: with one image there is no interval to bound the
# zoom, and these keep differences far below what matters (a hundredth of a dB) from filling an axis
MIN_AXIS_SPAN = {"psnr": 0.5, "ssim": 0.01, "lpips": 0.01}
AXIS_MARGIN = 0.05  # of the span, on each side
METRIC_RANGE = {"psnr": (None, None), "ssim": (None, 1.0), "lpips": (0.0, None)}  # an axis slides inside these


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_interval(mean, interval, digits: int, sign: str = "") -> str:
    """'27.31 [26.90, 27.72]'; the mean alone when the interval is undefined."""
    if mean is None:
        return "n/a"
    text = f"{mean:{sign}.{digits}f}"
    if interval is not None and interval[0] is not None:
        text += f" [{interval[0]:{sign}.{digits}f}, {interval[1]:{sign}.{digits}f}]"
    return text


def _table_cell(row: dict, column: str) -> str:
    if column in METRIC_DIGITS:
        return _with_interval(row.get(column), row.get(f"{column}_ci"), METRIC_DIGITS[column])
    return _fmt(row.get(column), 3 if column == "seconds_per_image" else 0)


def reference_of(rows: Sequence[dict]) -> str | None:
    """The method the rows' paired differences are taken against (None without differences)."""
    return next((r["difference"]["reference"] for r in rows if r.get("difference")), None)


def difference_lines(rows: Sequence[dict]) -> list[str]:
    """The markdown table of paired differences (row - reference) with their intervals; [] without a reference."""
    reference = reference_of(rows)
    if reference is None:
        return []
    lines = [f"Paired differences to **{reference}** (row − reference; mean over the same images, 95% bootstrap "
             "interval with the images resampled jointly):", "",
             f"| Method − {reference} | PSNR (dB) | SSIM | LPIPS |", "|---|---|---|---|"]
    for row in rows:
        diff = row.get("difference")
        if not diff:
            continue
        cells = [_with_interval(diff[k]["mean"], [diff[k]["low"], diff[k]["high"]], METRIC_DIGITS[k], "+")
                 if k in diff else "n/a" for k in METRIC_DIGITS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return lines


def _csv_fields(row: dict) -> dict:
    fields = {c: row.get(c) for c in COLUMNS}
    diff = row.get("difference") or {}
    fields["reference"] = diff.get("reference")
    for key in METRIC_DIGITS:
        low, high = row.get(f"{key}_ci") or (None, None)
        fields.update({f"{key}_ci_low": low, f"{key}_ci_high": high})
        d = diff.get(key) or {}
        fields.update({f"{key}_diff": d.get("mean"), f"{key}_diff_low": d.get("low"),
                       f"{key}_diff_high": d.get("high")})
    return fields


def write_tables(rows: Sequence[dict], out_dir: Path, *, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write results.md, results.csv, results.json and, when rows carry ``per_image`` lists, per_image.csv.

    Rows hold the keys of COLUMNS, optionally ``<metric>_ci`` ([low, high] or None), ``difference``
    (statistics.add_intervals) and ``per_image`` ([{"image", "psnr", "ssim", "lpips", "seconds"}]).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json"}
    header = ["Method", "Kind", "Sampler", "Steps", "NFE", "PSNR (dB) ↑", "SSIM ↑", "LPIPS ↓", "s / image", "Images"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_table_cell(row, c) for c in COLUMNS) + " |" for row in rows]
    differences = difference_lines(rows)
    text = "\n".join(lines) + "\n" + ("\n" + "\n".join(differences) + "\n" if differences else "")
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    paths["md"].write_text(text)
    fields = [_csv_fields(row) for row in rows]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields[0]) if fields else list(COLUMNS))
        writer.writeheader()
        writer.writerows(fields)
    if any(row.get("per_image") for row in rows):
        paths["per_image"] = out_dir / "per_image.csv"
        with paths["per_image"].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["method", "image", "psnr", "ssim", "lpips", "seconds"])
            writer.writeheader()
            writer.writerows({"method": row["method"], **image} for row in rows for image in row.get("per_image", ()))
    paths["json"].write_text(json.dumps({"rows": list(rows), "notes": list(notes), "reference": reference_of(rows)},
                                        indent=2))
    return paths


def _bar(row: dict, key: str) -> tuple[float, float]:
    """(below, above) the mean: the error bar of a row's interval, (0, 0) when it has none."""
    interval = row.get(f"{key}_ci")
    if not interval or interval[0] is None:
        return 0.0, 0.0
    return row[key] - interval[0], interval[1] - row[key]


def axis_limits(rows: Sequence[dict], key: str) -> tuple[float, float]:
    """Limits of an axis showing ``key`` of ``rows``: their points and bars plus a margin, widened about
    the middle to at least twice the widest interval shown and at least MIN_AXIS_SPAN[key], so that
    an axis never magnifies differences the intervals cannot resolve; then slid, span unchanged, into
    the metric's range (METRIC_RANGE)."""
    lows = [r[key] - _bar(r, key)[0] for r in rows]
    highs = [r[key] + _bar(r, key)[1] for r in rows]
    widest = max(h - lo for lo, h in zip(lows, highs))
    low, high = min(lows), max(highs)
    span = max((high - low) * (1 + 2 * AXIS_MARGIN), 2 * widest, MIN_AXIS_SPAN[key])
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    floor, ceiling = METRIC_RANGE[key]
    shift = max(0.0, floor - low) if floor is not None else 0.0          # LPIPS never below 0
    shift -= max(0.0, high - ceiling) if ceiling is not None else 0.0    # SSIM never above 1
    return low + shift, high + shift


def psnr_vs_lpips_figure(rows: Sequence[dict]):
    """Fidelity (PSNR, right is better) against perceptual distance (LPIPS, down is better), with each
    row's intervals as error bars; None without LPIPS.

    Methods are told apart by a legend rather than text next to the points: sampler settings of one
    run often land within a few hundredths of a dB of each other. The degraded input is given in
    the title, not plotted, so that it does not squeeze the methods into one corner.
    """
    points = [r for r in rows if r.get("lpips") is not None and r.get("psnr") is not None]
    methods = [r for r in points if r["kind"] != "input"]
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in methods:
        ax.errorbar(r["psnr"], r["lpips"], xerr=np.transpose([_bar(r, "psnr")]), yerr=np.transpose([_bar(r, "lpips")]),
                    fmt="o" if r["kind"] == "sde" else "s", markersize=7, alpha=0.8, capsize=3, label=r["method"])
    title = "Fidelity vs perceptual quality (o: SDE, s: regressor; bars: 95% intervals)"
    inputs = [r for r in points if r["kind"] == "input"]
    if inputs:
        title += f"\ninput (LQ): PSNR {inputs[0]['psnr']:.2f} dB, LPIPS {inputs[0]['lpips']:.4f}"
    ax.set_xlim(*axis_limits(methods, "psnr"))
    ax.set_ylim(*axis_limits(methods, "lpips"))
    ax.set_xlabel("PSNR (dB) — higher is better")
    ax.set_ylabel("LPIPS — lower is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def steps_vs_quality_figure(rows: Sequence[dict]):
    """PSNR and LPIPS (with their intervals) against network evaluations, one line per (SDE run,
    sampler), regressors as dashed lines with their interval shaded; None without a step-count sweep."""
    curves: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "sde":
            name = f"{r['run']} / {r['sampler']}" + (f" / {r['variant']}" if r.get("variant") else "")
            curves.setdefault(name, []).append(r)
    curves = {k: sorted(v, key=lambda r: r["nfe"]) for k, v in curves.items()}
    if not any(len(v) > 1 for v in curves.values()):
        return None  # no step-count sweep to show
    regressors = [r for r in rows if r["kind"] == "regressor"]
    has_lpips = any(r.get("lpips") is not None for v in curves.values() for r in v)
    ncols = 2 if has_lpips else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    metrics = [("psnr", "PSNR (dB) ↑")] + ([("lpips", "LPIPS ↓")] if has_lpips else [])
    for ax, (key, label) in zip(axes[0], metrics):
        shown = []
        for name, pts in curves.items():
            pts = [p for p in pts if p.get(key) is not None]
            if not pts:
                continue
            ax.errorbar([p["nfe"] for p in pts], [p[key] for p in pts], yerr=np.transpose([_bar(p, key) for p in pts]),
                        marker="o", capsize=3, label=name)
            shown += pts
        for r in [r for r in regressors if r.get(key) is not None]:
            ax.axhline(r[key], linestyle="--", linewidth=1, color="gray")
            below, above = _bar(r, key)
            if below or above:
                ax.axhspan(r[key] - below, r[key] + above, color="gray", alpha=0.15, linewidth=0)
            ax.annotate(r["method"], (1, r[key]), fontsize=8, color="gray")
            shown.append(r)
        ax.set_ylim(*axis_limits(shown, key))
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Sampling steps vs quality (bars and bands: 95% intervals; dashed: regressors)")
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path | None:
    if fig is None:
        return None
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_psnr_vs_lpips(rows: Sequence[dict], path: Path) -> Path | None:
    """psnr_vs_lpips_figure written to ``path``; None (nothing written) without LPIPS."""
    return _save(psnr_vs_lpips_figure(rows), path)


def plot_steps_vs_quality(rows: Sequence[dict], path: Path) -> Path | None:
    """steps_vs_quality_figure written to ``path``; None (nothing written) without a step-count sweep."""
    return _save(steps_vs_quality_figure(rows), path)


def _zoom_box(h: int, w: int) -> tuple[int, int, int, int]:
    """A centred box of a quarter of each side: the zoomed crop shown under each image."""
    bh, bw = max(h // 4, 8), max(w // 4, 8)
    y0, x0 = (h - bh) // 2, (w - bw) // 2
    return y0, x0, bh, bw


def save_image_grid(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: Path, *,
                    zoom_boxes: Sequence[tuple[int, int, int, int]] | None = None) -> Path:
    """Side-by-side grid: one row per image (title, [(column label, HWC float image)]), each with a zoomed crop:
    ``zoom_boxes[i]`` (top, left, height, width) for row i, by default a centred quarter of each side."""
    ncols = max(len(cols) for _, cols in rows)
    fig, axes = plt.subplots(2 * len(rows), ncols, figsize=(2.6 * ncols, 2 * 2.6 * len(rows)), squeeze=False)
    for i, (title, cols) in enumerate(rows):
        for j in range(ncols):
            top, bottom = axes[2 * i][j], axes[2 * i + 1][j]
            top.axis("off")
            bottom.axis("off")
            if j >= len(cols):
                continue
            label, img = cols[j]
            img = np.clip(img, 0, 1)
            y0, x0, bh, bw = zoom_boxes[i] if zoom_boxes else _zoom_box(*img.shape[:2])
            top.imshow(img)
            top.add_patch(plt.Rectangle((x0, y0), bw, bh, fill=False, edgecolor="yellow", linewidth=1))
            top.set_title(f"{label}" if j else f"{title}\n{label}", fontsize=8)
            bottom.imshow(img[y0:y0 + bh, x0:x0 + bw], interpolation="nearest")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
