"""Evaluation report (refusion/evaluation/report.py): tables with intervals and differences, honest plot axes."""
import csv
import json

import matplotlib
import pytest

from refusion.evaluation import report

matplotlib.use("Agg")


def row(method, kind, psnr, psnr_ci, lpips=None, lpips_ci=None, steps=None, nfe=1.0, **extra):
    return {"method": method, "run": method.split(" ")[0], "kind": kind, "sampler": "posterior" if kind == "sde"
            else None, "steps": steps, "nfe": nfe, "psnr": psnr, "ssim": 0.9, "lpips": lpips,
            "seconds_per_image": 0.25, "images": 8, "psnr_ci": psnr_ci, "ssim_ci": [0.85, 0.95], "lpips_ci": lpips_ci,
            **extra}


def interval(mean, low, high):
    return {"mean": mean, "low": low, "high": high, "n": 8}


def test_markdown_gives_each_mean_its_interval_and_the_paired_differences(tmp_path):
    per_image = [{"image": "a", "psnr": 27.0, "ssim": 0.9, "lpips": 0.1, "seconds": 0.2}]
    rows = [row("nafnet", "regressor", 27.31, [26.904, 27.72], 0.1234, [0.1, 0.15], difference=None,
                per_image=per_image),
            row("sde [posterior, 100]", "sde", 26.86, [26.4, 27.3], 0.1012, [0.09, 0.11], steps=100, nfe=100.0,
                difference={"reference": "nafnet", "psnr": interval(-0.45, -0.61, -0.3),
                            "ssim": interval(0.0125, 0.001, 0.02), "lpips": interval(-0.0222, -0.031, -0.0134)},
                per_image=[dict(per_image[0], psnr=26.5)]),
            row("one image", "regressor", 25.0, None, None, None, difference=None)]
    paths = report.write_tables(rows, tmp_path, notes=["a note"])
    lines = paths["md"].read_text().splitlines()
    assert lines[2] == ("| nafnet | regressor | n/a | n/a | 1 | 27.31 [26.90, 27.72] | 0.9000 [0.8500, 0.9500] "
                        "| 0.1234 [0.1000, 0.1500] | 0.250 | 8 |")
    assert lines[4].startswith("| one image | regressor | n/a | n/a | 1 | 25.00 | 0.9000 [0.8500, 0.9500] | n/a |")
    assert "| Method − nafnet | PSNR (dB) | SSIM | LPIPS |" in lines
    assert ("| sde [posterior, 100] | -0.45 [-0.61, -0.30] | +0.0125 [+0.0010, +0.0200] "
            "| -0.0222 [-0.0310, -0.0134] |") in lines
    assert lines[-1] == "- a note"
    saved = json.loads(paths["json"].read_text())
    assert saved["reference"] == "nafnet" and saved["rows"][1]["per_image"][0]["psnr"] == 26.5
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert table[1]["psnr_diff_low"] == "-0.61" and table[0]["psnr_ci_high"] == "27.72" and table[1]["reference"]
    with paths["per_image"].open() as f:
        assert [(r["method"], r["psnr"]) for r in csv.DictReader(f)] == [("nafnet", "27.0"),
                                                                       ("sde [posterior, 100]", "26.5")]


def test_no_reference_no_difference_table(tmp_path):
    paths = report.write_tables([row("nafnet", "regressor", 27.0, [26.0, 28.0], difference=None)], tmp_path)
    assert "Paired differences" not in paths["md"].read_text() and "per_image" not in paths


def span(limits):
    return limits[1] - limits[0]


def test_close_points_do_not_fill_the_psnr_lpips_axes_and_carry_their_bars():
    # two methods 0.002 LPIPS and 0.03 dB apart, with intervals 0.04 LPIPS and 1 dB wide
    rows = [row("input (LQ)", "input", 20.0, [19.0, 21.0], 0.4, [0.38, 0.42]),
            row("a [posterior, 100]", "sde", 27.00, [26.5, 27.5], 0.100, [0.080, 0.120]),
            row("b", "regressor", 27.03, [26.6, 27.4], 0.102, [0.090, 0.115])]
    fig = report.psnr_vs_lpips_figure(rows)
    ax = fig.axes[0]
    assert span(ax.get_xlim()) >= 2 * 1.0 and span(ax.get_ylim()) >= 2 * 0.04
    assert ax.get_xlim()[0] <= 26.5 and ax.get_xlim()[1] >= 27.5 and ax.get_xlim()[1] < 30   # input not plotted
    assert ax.get_ylim()[0] <= 0.080 and ax.get_ylim()[1] >= 0.120
    segments = [tuple(map(tuple, s)) for c in ax.collections for s in c.get_segments()]
    assert ((27.0, 0.080), (27.0, 0.120)) in segments and ((26.5, 0.100), (27.5, 0.100)) in segments


def test_axes_follow_the_points_when_they_are_far_apart_and_floor_without_intervals():
    rows = [row("a [posterior, 100]", "sde", 25.0, [24.9, 25.1], 0.30, [0.29, 0.31]),
            row("b", "regressor", 29.0, [28.9, 29.1], 0.10, [0.09, 0.11])]
    ax = report.psnr_vs_lpips_figure(rows).axes[0]
    assert span(ax.get_xlim()) == pytest.approx(4.2 * (1 + 2 * report.AXIS_MARGIN))
    lone = [row("a [posterior, 100]", "sde", 25.0, None, 0.300, None), row("b", "regressor", 25.01, None, 0.301, None)]
    ax = report.psnr_vs_lpips_figure(lone).axes[0]
    assert span(ax.get_xlim()) == pytest.approx(report.MIN_AXIS_SPAN["psnr"])
    assert span(ax.get_ylim()) == pytest.approx(report.MIN_AXIS_SPAN["lpips"])


def test_steps_axes_are_at_least_twice_the_widest_interval_shown_regressor_bands_included():
    rows = [row("s [posterior, 10]", "sde", 26.00, [25.9, 26.1], 0.200, [0.195, 0.205], steps=10, nfe=10.0),
            row("s [posterior, 100]", "sde", 26.05, [25.95, 26.15], 0.199, [0.194, 0.204], steps=100, nfe=100.0),
            row("nafnet", "regressor", 26.02, [25.2, 26.8], 0.201, [0.17, 0.23])]
    fig = report.steps_vs_quality_figure(rows)
    psnr_ax, lpips_ax = fig.axes
    assert span(psnr_ax.get_ylim()) >= 2 * 1.6 and psnr_ax.get_ylim()[0] <= 25.2 <= 26.8 <= psnr_ax.get_ylim()[1]
    assert span(lpips_ax.get_ylim()) >= 2 * 0.06
    assert report.steps_vs_quality_figure(rows[:1] + rows[2:]) is None     # one step count: nothing to sweep


def test_axes_slide_into_the_metric_range_keeping_their_span():
    near_zero = [row("a", "regressor", 30.0, None, 0.02, [0.0, 0.1])]
    assert report.axis_limits(near_zero, "lpips") == pytest.approx((0.0, 0.2))      # LPIPS is never negative
    near_one = [dict(row("a", "regressor", 30.0, None), ssim=0.99, ssim_ci=[0.97, 1.0])]
    low, high = report.axis_limits(near_one, "ssim")
    assert high == 1.0 and high - low == pytest.approx(0.06)                        # nor is SSIM above 1
