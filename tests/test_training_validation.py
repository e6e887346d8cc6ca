"""What validation during training records: the best PSNR and best/ across a resume, and the metric
the latent autoencoder's validation scores (the latent-replacement reconstruction)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refusion.config import recipe_from_dict
from refusion.data.image_io import read_image, write_image
from refusion.data.paired import PairedImageDataset
from refusion.evaluation.metrics import psnr
from refusion.training import train
from refusion.training.run_dir import list_checkpoints, load_model_dir, verify_checkpoint
from same_results import assert_same_state
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

BEST_WEIGHTS = "best/diffusion_pytorch_model.safetensors"


def _validations(run: Path) -> dict[int, float]:
    return {r["step"]: r["psnr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_resume_keeps_the_best_psnr_and_best_weights_of_the_uninterrupted_run(tmp_path):
    data = make_pairs(tmp_path / "pairs", n_train=4, n_val=2, size=32)

    def recipe(out: str):
        settings = tiny_recipe_dict("regressor", data, tmp_path / out, total_iters=6, checkpoint_every=2)
        # validation asks for the identity on the LQ images while training learns to lift the shadow
        # off them: every update moves the network away from the validation target, so the first
        # validation is the best and every later one scores lower than the best remembered so far
        settings["data"]["val"] = {"gt": str(data / "val/lq"), "lq": str(data / "val/lq")}
        settings["validation"]["every"] = 2
        return recipe_from_dict(settings)

    whole = train(recipe("whole"))
    split = train(recipe("split"), stop_at_step=2)     # stops right after the validation that set best/
    assert [p.name for p in list_checkpoints(split)] == ["step_00000002"] and (split / "best").is_dir()
    train(recipe("split"), resume=True)

    scores = _validations(whole)
    assert sorted(scores) == [2, 4, 6]
    # the case this test is about: the validations after the resume score below the remembered best
    assert scores[2] > max(scores[4], scores[6]), scores
    assert _validations(split) == scores   # resume is exact: the same validations at the same steps

    # the best PSNR the run carries (checkpoint meta.json) is the uninterrupted run's: the step-2 score
    for run in (whole, split):
        assert verify_checkpoint(run / "checkpoints/step_00000006")["best_psnr"] == scores[2]

    # best/ of the resumed run is bitwise the uninterrupted run's, and both hold the step-2 weights
    # (no EMA here: best/ saves the trained weights, as the step-2 checkpoint does): a lower
    # validation after the resume did not replace it
    best_whole, best_split = load_file(str(whole / BEST_WEIGHTS)), load_file(str(split / BEST_WEIGHTS))
    # bits, not a tolerance: resume is exact (the resumed network is built afresh and the checkpoint
    # copied into it, so the same kernels run on the same bits), and best/ is a copy of step 2's weights
    assert_same_state(best_split, best_whole)                     # best/ after resume vs uninterrupted
    assert_same_state(best_whole, load_file(str(whole / "checkpoints/step_00000002/model.safetensors")))
    # and the final weights differ from best/ (else the comparison above could not see a replaced best/)
    final = load_file(str(split / "model/diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(final[k], best_split[k]) for k in final)


def test_latent_autoencoder_validation_scores_the_gt_latent_decoded_with_the_lq_skips(tmp_path):
    data = make_pairs(tmp_path / "pairs", n_train=4, n_val=1, size=32)
    # one validation pair whose LQ is the inverted GT: the LQ's skips carry a very different image
    # than the GT's, so decoding with one or the other changes the score by whole dB
    gt_image = read_image(data / "val/gt/img0.png")
    for kind, image in (("gt", gt_image), ("lq", 1.0 - gt_image)):
        (tmp_path / "val" / kind).mkdir(parents=True)
        write_image(tmp_path / "val" / kind / "pair.png", np.ascontiguousarray(image, dtype=np.float32))
    settings = tiny_recipe_dict("latent_autoencoder", data, tmp_path / "ae", total_iters=4, checkpoint_every=4)
    settings["optimizer"]["lr"] = 1e-2   # a few large steps: a decoder that uses its skips, not its init
    settings["data"]["val"] = {"gt": str(tmp_path / "val/gt"), "lq": str(tmp_path / "val/lq")}
    run = train(recipe_from_dict(settings))
    (record,) = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    assert record["step"] == 4 and record["images"] == 1

    # the network validated at step 4 is the one saved in model/ (no EMA); the scores are computed
    # here with the network itself, clamped to [0, 1] and with the PSNR the validation reports
    net = load_model_dir(run / "model").eval()
    pair = PairedImageDataset(tmp_path / "val/gt", tmp_path / "val/lq")[0]
    gt, lq = pair["gt"][None], pair["lq"][None]
    with torch.no_grad():
        latent_gt, skips_gt = net.encode(gt)
        _, skips_lq = net.encode(lq)
        score = {name: psnr(net.decode(latent_gt, skips).float().clamp(0, 1)[0], gt[0], 0, False, "CHW")
                 for name, skips in (("lq skips", skips_lq), ("gt skips", skips_gt))}
    # the two candidates are far apart, so matching one of them says which one validation computes
    assert abs(score["lq skips"] - score["gt skips"]) > 1.0, score
    assert record["psnr"] == pytest.approx(score["lq skips"], abs=1e-6), (record, score)
