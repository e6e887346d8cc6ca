"""refusion posterior-figure: input, regressor, SDE sample, mean of K, std and GT side by side."""
import numpy as np
import pytest
from PIL import Image

from refusion.cli import posterior_figure
from refusion.data.image_io import write_image
from test_restore_posterior import make_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_the_zoom_box_is_the_most_detailed_quarter():
    gt = np.full((64, 48, 3), 0.5)
    gt[40:56, 4:16] = np.random.default_rng(0).random((16, 12, 3))      # the only texture
    top, left, height, width = posterior_figure.detail_box(gt)
    assert (height, width) == (16, 12) and abs(top - 40) <= 2 and abs(left - 4) <= 2


def test_the_figure_has_a_row_per_image_and_a_column_per_result(tmp_path, capsys):
    runs = {task: make_run(tmp_path / task, task) for task in ("sde", "regressor")}
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        gt = rng.random((24, 32, 3))
        write_image(tmp_path / "gt" / f"{name}.png", gt)
        write_image(tmp_path / "lq" / f"{name}.png", np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1))
    args = ["--sde", str(runs["sde"]), "--regressor", str(runs["regressor"]), "--gt", str(tmp_path / "gt"),
            "--lq", str(tmp_path / "lq"), "--samples", "3", "--steps", "2", "--sampler", "mr_sde", "--threads", "1"]
    out = tmp_path / "fig.png"
    assert posterior_figure.main(args + ["--out", str(out), "--self-ensemble"]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    width, height = Image.open(out).size
    plain = tmp_path / "plain.png"
    assert posterior_figure.main(args + ["--out", str(plain), "--images", "b"]) == 0
    plain_width, plain_height = Image.open(plain).size
    assert width / plain_width == pytest.approx(7 / 6, rel=0.02)       # LQ, reg, (reg x8), sample, mean, std, GT
    assert height / plain_height == pytest.approx(2, rel=0.02)         # two images, one image
    assert posterior_figure.main(args + ["--out", str(tmp_path / "x.png"), "--images", "nope"]) == 2
    assert "--images nope: no such test pair" in capsys.readouterr().err
