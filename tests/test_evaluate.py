"""refusion evaluate: per-image scores, intervals and differences to a reference row, and the same table
from two processes (`accelerate launch`, see FACTS: accelerate on CPU) as from one."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from refusion.cli import evaluate as evaluate_cli
from refusion.evaluation.evaluate import INPUT_LABEL, Method, evaluate_runs, parse_sampler_specs, resolve_reference
from refusion.evaluation.statistics import mean_interval, paired_difference
from refusion.inference.processes import gather_in_order, process_share
from refusion.inference.workers import map_workers
from refusion.training import train
from same_results import assert_close_records, assert_same_folders
from test_multiprocess import free_port
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ["mr_sde:2", "mr_ode:2"]       # mr_sde draws noise: a wrong seed for an image changes its scores
METHODS = [Method(Path("runs/sde"), "sde", "mr_sde", 2), Method(Path("runs/sde"), "sde", "mr_ode", 2),
           Method(Path("runs/nafnet"), "regressor")]


def test_reference_defaults_to_the_first_regressor_and_accepts_labels_or_one_rows_run_name():
    assert resolve_reference(None, METHODS) == "nafnet"
    assert resolve_reference(None, METHODS[:2]) is None and resolve_reference(False, METHODS) is None
    assert resolve_reference("sde [mr_ode, 2]", METHODS) == "sde [mr_ode, 2]"
    assert resolve_reference("input", METHODS) == INPUT_LABEL == resolve_reference(INPUT_LABEL, METHODS)


def test_a_reference_that_matches_no_row_or_several_is_refused_with_the_rows():
    with pytest.raises(ValueError, match=r"'dehaze' matches no row; rows: input \(LQ\); sde \[mr_sde, 2\]; "
                                         r"sde \[mr_ode, 2\]; nafnet"):
        resolve_reference("dehaze", METHODS)
    with pytest.raises(ValueError, match=r"'sde' names several rows \(sde \[mr_sde, 2\]; sde \[mr_ode, 2\]\)"):
        resolve_reference("sde", METHODS)


def test_sampler_specs_and_labels_of_posterior_means_and_self_ensembles():
    assert parse_sampler_specs(["posterior:100", "mr_sde:10:mean4"]) == [("posterior", 100, 1), ("mr_sde", 10, 4)]
    for bad in ("mr_sde", "mr_sde:0", "mr_sde:10:mean1", "mr_sde:10:mean", "mr_sde:10:avg4", "mr_sde:10:mean4:x"):
        with pytest.raises(ValueError, match=f"sampler spec '{bad}' must look like NAME:STEPS or NAME:STEPS:meanK"):
            parse_sampler_specs([bad])
    assert Method(Path("runs/sde"), "sde", "mr_sde", 10, 4).label == "sde [mr_sde, 10, mean of 4]"
    assert Method(Path("runs/nafnet"), "regressor", self_ensemble=True).label == "nafnet [self-ensemble x8]"
    assert Method(Path("runs/nafnet"), "regressor").label == "nafnet" and METHODS[0].label == "sde [mr_sde, 2]"


def test_one_process_takes_every_item_with_its_index_and_gathering_orders_by_index():
    assert process_share(["a", "b", "c"]) == [(0, "a"), (1, "b"), (2, "c")]
    assert gather_in_order([(2, "c"), (0, "a"), (1, "b")]) == ["a", "b", "c"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A tiny SDE run and a tiny NAFNet run (two training steps each) and three test pairs."""
    root = tmp_path_factory.mktemp("evaluate")
    data = make_pairs(root / "pairs", n_train=2, n_val=3, size=32)
    for task, name in (("sde", "sde"), ("regressor", "nafnet")):
        recipe = root / f"{name}.yml"
        recipe.write_text(yaml.safe_dump(tiny_recipe_dict(task, data, root / "runs" / name, total_iters=2)))
        train(str(recipe))
    return root


def evaluate(runs: Path, out: Path, **kwargs) -> dict:
    return evaluate_runs([runs / "runs/sde", runs / "runs/nafnet"], runs / "pairs/val/gt", runs / "pairs/val/lq",
                         out, samplers=SAMPLERS, progress=False, lpips_net="alex", **kwargs)


@pytest.mark.slow
def test_rows_keep_per_image_scores_intervals_and_paired_differences(runs, tmp_path):
    result = evaluate(runs, tmp_path / "report", reference="sde [mr_ode, 2]")
    saved = json.loads((tmp_path / "report/results.json").read_text())
    assert saved["reference"] == result["reference"] == "sde [mr_ode, 2]"
    rows = {row["method"]: row for row in saved["rows"]}
    assert list(rows) == [INPUT_LABEL, "sde [mr_sde, 2]", "sde [mr_ode, 2]", "nafnet"]
    ref = [p["psnr"] for p in rows["sde [mr_ode, 2]"]["per_image"]]
    for row in rows.values():
        assert [p["image"] for p in row["per_image"]] == ["img0", "img1", "img2"]
        psnr = [p["psnr"] for p in row["per_image"]]
        assert row["psnr"] == pytest.approx(np.mean(psnr), abs=1e-12)
        assert row["lpips"] == pytest.approx(np.mean([p["lpips"] for p in row["per_image"]]), abs=1e-12)
        assert row["psnr_ci"] == [mean_interval(psnr).low, mean_interval(psnr).high]
        if row["method"] != "sde [mr_ode, 2]":
            assert row["difference"]["psnr"] == paired_difference(psnr, ref).as_dict()
    assert rows["sde [mr_ode, 2]"]["difference"] is None
    table = (tmp_path / "report/results.md").read_text()
    assert "| Method − sde [mr_ode, 2] |" in table and "10,000 resamples" in table
    # each image's PNG is the one scored: its PSNR recomputed from the file
    from refusion.data.image_io import read_image
    from refusion.evaluation import metrics

    png = read_image(tmp_path / "report/images/nafnet/img1.png")
    assert metrics.psnr(png, read_image(runs / "pairs/val/gt/img1.png")) == rows["nafnet"]["per_image"][1]["psnr"]


@pytest.mark.slow
def test_one_image_says_the_interval_is_degenerate(runs, tmp_path):
    result = evaluate(runs, tmp_path / "report", max_images=1)
    assert result["reference"] == "nafnet" and all(row["psnr_ci"] is None for row in result["rows"])
    table = (tmp_path / "report/results.md").read_text()
    assert "one test image: no confidence intervals" in table
    assert not re.search(r"\d \[", table.split("- PSNR/SSIM")[0])     # no '27.31 [..., ...]' anywhere


@pytest.mark.slow
def test_cli_refuses_an_unknown_reference_before_restoring_anything(runs, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [str(runs / "runs/sde"), str(runs / "runs/nafnet"), "--gt", str(runs / "pairs/val/gt"), "--lq",
            str(runs / "pairs/val/lq"), "--out", str(out), "--samplers", *SAMPLERS]
    assert evaluate_cli.main(argv + ["--reference", "dehaze"]) == 2
    assert "matches no row; rows: input (LQ); sde [mr_sde, 2]; sde [mr_ode, 2]; nafnet" in capsys.readouterr().err
    assert not out.exists()


def without_timings(rows: list[dict]) -> list[dict]:
    return [{**{k: v for k, v in row.items() if k != "seconds_per_image"},
             "per_image": [{k: v for k, v in p.items() if k != "seconds"} for p in row["per_image"]]} for row in rows]


@pytest.mark.slow
def test_workers_give_the_table_of_one(runs, tmp_path, monkeypatch):
    # one torch thread per image in both: three workers on a budget of three CPUs, one worker on one
    # thread (LPIPS and the networks sum in an order that follows the thread count)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    import refusion.evaluation.evaluate as evaluation

    pools = []

    def spy(fn, items, workers, **kwargs):
        pools.append((len(workers), kwargs.get("threads"), len({id(w[0].network) for w in workers})))
        return map_workers(fn, items, workers, **kwargs)
    monkeypatch.setattr(evaluation, "map_workers", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = evaluate(runs, tmp_path / "one", seed=7, workers=1)
        three = evaluate(runs, tmp_path / "three", seed=7, workers=3)
        assert torch.get_num_threads() == 1                            # the caller's count is left as it was
    finally:
        torch.set_num_threads(before)
    assert pools == [(1, None, 1)] * 3 + [(3, 1, 3)] * 3    # per method: the workers, their threads, networks
    # the workers' networks are deep copies, other instances: the same table and images within tolerance
    assert_close_records(without_timings(three["rows"]), without_timings(one["rows"]))
    assert [row["nfe"] for row in three["rows"]] == [0, 2, 2, 1]
    assert_same_folders(tmp_path / "three/images/nafnet", tmp_path / "one/images/nafnet")


@pytest.mark.slow
def test_two_processes_give_the_table_of_one(runs, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    # one thread in every process: LPIPS, a float32 network, sums in an order that follows the thread count
    args = ["evaluate", str(runs / "runs/sde"), str(runs / "runs/nafnet"), "--gt", str(runs / "pairs/val/gt"),
            "--lq", str(runs / "pairs/val/lq"), "--samplers", *SAMPLERS, "--seed", "7", "--threads", "1", "--out"]
    one = subprocess.run([sys.executable, "-m", "refusion", *args, str(tmp_path / "one")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "refusion"]
    two = subprocess.run(launch + args + [str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "terminate called" not in two.stderr          # the processes ended together, none aborted at exit
    assert two.stdout.count("| Method |") == 1                       # the main process alone reports
    rows = {name: json.loads((tmp_path / name / "results.json").read_text())["rows"] for name in ("one", "two")}
    assert_close_records(without_timings(rows["two"]), without_timings(rows["one"]))   # networks of other processes
    assert [row["images"] for row in rows["two"]] == [3] * 4
    folders = sorted((tmp_path / "two/images").iterdir())             # both processes wrote their images
    assert len(folders) == 3
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["img0.png", "img1.png", "img2.png"]


@pytest.mark.slow
def test_rows_for_the_mean_of_k_samples_and_the_self_ensemble(runs, tmp_path):
    import refusion
    from refusion.data.image_io import read_image
    from refusion.evaluation import metrics

    result = evaluate_runs([runs / "runs/sde", runs / "runs/nafnet"], runs / "pairs/val/gt", runs / "pairs/val/lq",
                           tmp_path / "report", samplers=["mr_sde:2:mean3"], self_ensemble=True, seed=4,
                           max_images=2, progress=False)
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == [INPUT_LABEL, "sde [mr_sde, 2, mean of 3]", "nafnet", "nafnet [self-ensemble x8]"]
    assert rows["sde [mr_sde, 2, mean of 3]"]["nfe"] == 3 * 2 and rows["nafnet [self-ensemble x8]"]["nfe"] == 8
    assert rows["nafnet [self-ensemble x8]"]["difference"]["reference"] == "nafnet"
    lq, gt = (read_image(runs / f"pairs/val/{kind}/img1.png") for kind in ("lq", "gt"))
    mean = refusion.sample_posterior(lq, model=str(runs / "runs/sde"), num_samples=3, steps=2, sampler="mr_sde",
                                     generator=torch.Generator().manual_seed(4 + 1), progress=False).mean
    want = metrics.psnr(mean[0].permute(1, 2, 0).numpy(), gt)
    assert rows["sde [mr_sde, 2, mean of 3]"]["per_image"][1]["psnr"] == pytest.approx(want, abs=1e-9)
    ensembled = refusion.restore(lq, model=str(runs / "runs/nafnet"), self_ensemble=True, progress=False)
    want = metrics.psnr(ensembled, gt)
    assert rows["nafnet [self-ensemble x8]"]["per_image"][1]["psnr"] == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_a_mean_of_k_equal_samples_is_refused_before_any_restoration(runs, tmp_path):
    """A DenoisingSDE model with its deterministic ode sampler would give K equal samples (it starts from the
    noisy image itself), so the row is refused before the first row is restored."""
    from refusion.inference.pipeline import RefusionPipeline
    from refusion.models.unconditional_nafnet import UnconditionalNAFNet
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    net = UnconditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    RefusionPipeline(unet=net, scheduler=DenoisingSDEScheduler(noise_level=25)).save_pretrained(tmp_path / "dsde")
    with pytest.raises(ValueError, match=r"'dsde \[ode, 2, mean of 3\]'.*deterministic"):
        evaluate_runs([tmp_path / "dsde"], runs / "pairs/val/gt", runs / "pairs/val/lq",
                      tmp_path / "report", samplers=["sde:2", "ode:2:mean3"], progress=False)
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_the_views_of_a_stereo_test_set_are_resampled_by_scene(runs, tmp_path):
    import shutil

    for kind in ("gt", "lq"):                       # img0..img3 renamed as the views of two scenes
        (tmp_path / kind).mkdir()
        for i, name in enumerate(("0_L", "0_R", "1_L", "1_R")):
            shutil.copy(runs / f"pairs/val/{kind}/img{i % 3}.png", tmp_path / kind / f"{name}.png")
    result = evaluate_runs([runs / "runs/nafnet"], tmp_path / "gt", tmp_path / "lq", tmp_path / "report",
                           progress=False, lpips_net="alex")
    row = result["rows"][1]
    psnr = [p["psnr"] for p in row["per_image"]]
    scenes = mean_interval(psnr, groups=["0", "0", "1", "1"])
    assert row["psnr_ci"] == [scenes.low, scenes.high] != [mean_interval(psnr).low, mean_interval(psnr).high]
    assert "resampled by scene (2 stereo pairs, both views together)" in " ".join(result["notes"])
