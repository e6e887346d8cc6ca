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


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_tables(rows: Sequence[dict], out_dir: Path, *, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write results.md, results.csv and results.json; rows hold the keys of COLUMNS."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json"}
    digits = {"psnr": 2, "ssim": 4, "lpips": 4, "seconds_per_image": 3}
    header = ["Method", "Kind", "Sampler", "Steps", "NFE", "PSNR (dB) ↑", "SSIM ↑", "LPIPS ↓", "s / image", "Images"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt(row.get(c), digits.get(c, 0)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    paths["md"].write_text(text)
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in COLUMNS})
    paths["json"].write_text(json.dumps({"rows": list(rows), "notes": list(notes)}, indent=2))
    return paths


def plot_psnr_vs_lpips(rows: Sequence[dict], path: Path) -> Path | None:
    """Scatter of fidelity (PSNR, right is better) against perceptual distance (LPIPS, down is better).

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
        ax.scatter(r["psnr"], r["lpips"], marker="o" if r["kind"] == "sde" else "s", s=60, alpha=0.8,
                   label=r["method"])
    title = "Fidelity vs perceptual quality (o: SDE, s: regressor)"
    inputs = [r for r in points if r["kind"] == "input"]
    if inputs:
        title += f"\ninput (LQ): PSNR {inputs[0]['psnr']:.2f} dB, LPIPS {inputs[0]['lpips']:.4f}"
    ax.set_xlabel("PSNR (dB) — higher is better")
    ax.set_ylabel("LPIPS — lower is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_steps_vs_quality(rows: Sequence[dict], path: Path) -> Path | None:
    """PSNR and LPIPS against network evaluations, one line per (SDE run, sampler)."""
    curves: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "sde":
            curves.setdefault(f"{r['run']} / {r['sampler']}", []).append(r)
    curves = {k: sorted(v, key=lambda r: r["nfe"]) for k, v in curves.items()}
    if not any(len(v) > 1 for v in curves.values()):
        return None  # no step-count sweep to show
    regressors = [r for r in rows if r["kind"] == "regressor"]
    has_lpips = any(r.get("lpips") is not None for v in curves.values() for r in v)
    ncols = 2 if has_lpips else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    metrics = [("psnr", "PSNR (dB) ↑")] + ([("lpips", "LPIPS ↓")] if has_lpips else [])
    for ax, (key, label) in zip(axes[0], metrics):
        for name, pts in curves.items():
            xs = [p["nfe"] for p in pts if p.get(key) is not None]
            ys = [p[key] for p in pts if p.get(key) is not None]
            ax.plot(xs, ys, marker="o", label=name)
        for r in regressors:
            if r.get(key) is not None:
                ax.axhline(r[key], linestyle="--", linewidth=1, color="gray")
                ax.annotate(r["method"], (1, r[key]), fontsize=8, color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Sampling steps vs quality (dashed: regressors)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _zoom_box(h: int, w: int) -> tuple[int, int, int, int]:
    """A centred box of a quarter of each side: the zoomed crop shown under each image."""
    bh, bw = max(h // 4, 8), max(w // 4, 8)
    y0, x0 = (h - bh) // 2, (w - bw) // 2
    return y0, x0, bh, bw


def save_image_grid(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: Path) -> Path:
    """Side-by-side grid: one row per image (title, [(column label, HWC float image)]), each with a zoomed crop."""
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
            y0, x0, bh, bw = _zoom_box(*img.shape[:2])
            top.imshow(img)
            top.add_patch(plt.Rectangle((x0, y0), bw, bh, fill=False, edgecolor="yellow", linewidth=1))
            top.set_title(f"{label}" if j else f"{title}\n{label}", fontsize=8)
            bottom.imshow(img[y0:y0 + bh, x0:x0 + bw], interpolation="nearest")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
