"""refusion evaluate applies the PSNR/SSIM protocol it is given (``crop_border``, ``test_y_channel``) to
every row: each per-image score equals the metric called directly, with those settings, on the images
the row compares (the LQ input for the input row, the written PNG for a method's row)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from refusion.data.image_io import read_image, write_image
from refusion.evaluation import metrics
from refusion.evaluation.evaluate import INPUT_LABEL, evaluate_runs
from refusion.models import NAFNet

SIZE, BORDER = 32, 4


def write_protocol_pairs(root: Path, count: int = 2) -> Path:
    """GT and LQ whose scores depend on both settings: a large error on every channel in the outer
    ``BORDER`` pixels (crop_border drops it) and, inside, an error on the blue channel only (BT.601 luma
    weighs blue 24.966/255, far below the 1/3 it has in the RGB mean)."""
    rng = np.random.default_rng(5)
    inner = np.zeros((SIZE, SIZE), bool)
    inner[BORDER:-BORDER, BORDER:-BORDER] = True
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(count):
        gt = np.stack([0.5 + 0.35 * np.sin(rng.uniform(2, 6) * (xx + c * yy) + rng.uniform(0, 6)) for c in range(3)], -1)
        lq = gt.copy()
        lq[~inner] += rng.normal(0, 0.25, size=(int((~inner).sum()), 3))
        lq[inner, 2] += rng.normal(0, 0.08, size=int(inner.sum()))
        for kind, image in (("gt", gt), ("lq", lq)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            write_image(root / kind / f"img{i}.png", np.clip(image, 0, 1).astype(np.float32))
    return root


def save_regressor_run(run: Path) -> Path:
    """A regressor run folder without training: its recipe's task and an untrained tiny NAFNet's weights
    (its outputs differ from the GT everywhere, which is all the scores need)."""
    torch.manual_seed(0)
    NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).save_pretrained(run / "model")
    (run / "recipe.yml").write_text("task: regressor\n")
    return run


@pytest.mark.parametrize("crop_border, test_y_channel", [(BORDER, True), (BORDER, False)])
def test_rows_score_with_the_given_crop_border_and_y_channel_as_the_metrics_do(tmp_path, crop_border, test_y_channel):
    pairs = write_protocol_pairs(tmp_path / "pairs")
    run = save_regressor_run(tmp_path / "nafnet")
    names = sorted(p.stem for p in (pairs / "gt").iterdir())
    gts = {n: read_image(pairs / "gt" / f"{n}.png") for n in names}
    lqs = {n: read_image(pairs / "lq" / f"{n}.png") for n in names}
    settings = dict(crop_border=crop_border, test_y_channel=test_y_channel)

    # the images are built so that each setting changes both scores; else this test could not tell
    for metric in (metrics.psnr, metrics.ssim):
        for n in names:
            given = metric(lqs[n], gts[n], **settings)
            assert given != pytest.approx(metric(lqs[n], gts[n], crop_border=BORDER - crop_border,
                                                 test_y_channel=test_y_channel), rel=1e-3)
            assert given != pytest.approx(metric(lqs[n], gts[n], crop_border=crop_border,
                                                 test_y_channel=not test_y_channel), rel=1e-3)

    result = evaluate_runs([run], pairs / "gt", pairs / "lq", tmp_path / "report", progress=False, workers=1,
                           grid_images=1, **settings)
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {INPUT_LABEL, "nafnet"}
    restored = {n: read_image(tmp_path / "report/images/nafnet" / f"{n}.png") for n in names}
    for label, images in ((INPUT_LABEL, lqs), ("nafnet", restored)):
        records = {r["image"]: r for r in rows[label]["per_image"]}
        assert sorted(records) == names
        for n in names:
            assert records[n]["psnr"] == pytest.approx(metrics.psnr(images[n], gts[n], **settings), rel=1e-9)
            assert records[n]["ssim"] == pytest.approx(metrics.ssim(images[n], gts[n], **settings), rel=1e-9)
        assert rows[label]["psnr"] == pytest.approx(np.mean([metrics.psnr(images[n], gts[n], **settings)
                                                             for n in names]), rel=1e-9)
    assert f"crop_border={crop_border}, test_y_channel={test_y_channel}" in result["notes"][0]
