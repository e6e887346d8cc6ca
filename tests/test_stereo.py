"""Stereo pairs end to end: <id>_L / <id>_R pairing, identical crops and flips for both views,
StereoNAFNet training, restore of pairs, and the official stereo network imported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import refusion
from refusion.cli import restore as restore_cli
from refusion.cli.train import main as train_main
from refusion.config import RecipeError, recipe_from_dict
from refusion.data.image_io import read_image, write_image
from refusion.data.inputs import join_views, split_views
from refusion.data.paired import PairedImageDataset, find_stereo_pairs, stereo_groups
from refusion.evaluation.evaluate import evaluate_runs
from refusion.official.importer import import_official
from test_training import one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

DATA = Path(__file__).parent / "data"
TINY_STEREO = {"name": "StereoNAFNet", "args": {"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1,
                                                "dec_blk_nums": [1]}}


def make_stereo_pairs(root: Path, n: int = 2, size: int = 40, seed: int = 0) -> Path:
    """GT/LQ views with right = 0.5 * left exactly, so any mismatch between the views shows."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n):
            gt_left = rng.random((size, size, 3)).astype(np.float32)
            lq_left = np.clip(gt_left + 0.1 * rng.standard_normal(gt_left.shape), 0, 1).astype(np.float32)
            for kind, left in (("gt", gt_left), ("lq", lq_left)):
                folder = root / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                write_image(folder / f"{i:04d}_L.png", left, bit_depth=16)
                write_image(folder / f"{i:04d}_R.png", left * 0.5, bit_depth=16)
    return root


def test_pairs_and_their_errors(tmp_path):
    root = make_stereo_pairs(tmp_path)
    pairs = find_stereo_pairs(root / "train/gt", root / "train/lq")
    assert [p[0] for p in pairs] == ["0000", "0001"]
    assert [p.name for p in pairs[0][1]] == ["0000_L.png", "0000_R.png"]
    with pytest.raises(ValueError, match=r"without their partner view: 'a_L'"):
        stereo_groups(["a_L", "b_L", "b_R"])
    with pytest.raises(ValueError, match=r"not named as a stereo view .*'photo'"):
        stereo_groups(["photo", "b_L", "b_R"])


def test_crops_and_flips_cut_both_views_alike_and_a_mirror_swaps_them(tmp_path):
    root = make_stereo_pairs(tmp_path)
    dataset = PairedImageDataset(root / "train/gt", root / "train/lq", gt_size=24, use_flip=True, seed=0,
                                 stereo=True)
    relations = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for item in (dataset[0], dataset[1]):
            assert item["gt"].shape == (6, 24, 24) and item["lq"].shape == (6, 24, 24)
            for key in ("gt", "lq"):
                left, right = item[key][:3], item[key][3:]
                if torch.allclose(right, 0.5 * left, atol=1e-4):
                    relations.add("as read")
                elif torch.allclose(left, 0.5 * right, atol=1e-4):
                    relations.add("mirrored")        # hflip: the mirrored right view is the new left
                else:
                    raise AssertionError("the views were cropped or flipped differently")
    assert relations == {"as read", "mirrored"}
    with pytest.raises(ValueError, match="use_rot with stereo=True"):
        PairedImageDataset(root / "train/gt", root / "train/lq", use_rot=True, stereo=True)


def test_each_lq_view_stays_with_the_gt_view_of_its_side_through_crops_and_flips(tmp_path):
    # four distinguishable images per pair: independent GT_L and GT_R, and LQ_v = 1 - GT_v for each view v.
    # Whatever crop and flip an item draws, its LQ must be 1 - its GT channel for channel: the LQ left view
    # cut and flipped as the GT left view, and never the other side's LQ.
    rng = np.random.default_rng(3)
    views = {}
    for i in range(2):
        for v in "LR":
            gt = rng.integers(0, 256, size=(36, 44, 3), dtype=np.uint8)
            views[(i, v)] = gt
            for kind, image in (("gt", gt), ("lq", 255 - gt)):
                (tmp_path / kind).mkdir(exist_ok=True)
                write_image(tmp_path / kind / f"{i:04d}_{v}.png", image)
    dataset = PairedImageDataset(tmp_path / "gt", tmp_path / "lq", gt_size=20, use_flip=True, seed=1, stereo=True)
    windows = lambda a: np.lib.stride_tricks.sliding_window_view(a, (20, 20, 3)).reshape(-1, 20, 20, 3)  # noqa: E731
    mirrored_seen = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for index in range(2):
            item = dataset[index]
            torch.testing.assert_close(item["lq"], 1 - item["gt"], rtol=0, atol=1e-6)
            # the GT left view is a window of GT_L (as read) or, mirrored, of the flipped GT_R
            left = np.rint(item["gt"][:3].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            found = {mirrored for mirrored, source in ((False, views[(index, "L")]), (True, views[(index, "R")][:, ::-1]))
                     for unflipped in (left, left[::-1]) if (windows(source) == unflipped).all(axis=(1, 2, 3)).any()}
            assert len(found) == 1
            mirrored_seen |= found
    assert mirrored_seen == {False, True}


def test_split_and_join_views_are_inverse():
    x = torch.rand(2, 6, 5, 7)
    views = split_views(x)
    assert views.shape == (4, 3, 5, 7) and torch.equal(views[0], x[0, :3]) and torch.equal(views[2], x[0, 3:])
    torch.testing.assert_close(join_views(*views.chunk(2)), x)


def stereo_recipe(data: Path, out: Path) -> dict:
    recipe = tiny_recipe_dict("sde", data, out)
    recipe["model"] = TINY_STEREO
    recipe["data"]["train"].update({"stereo": True, "use_rot": False})
    recipe["data"]["val"] = {"gt": str(data / "val/gt"), "lq": str(data / "val/lq"), "stereo": True}
    recipe["validation"] = {"every": 2, "num_inference_steps": 3, "max_images": 2}
    return recipe


def test_recipe_checks_that_stereo_data_and_network_go_together(tmp_path):
    data = make_stereo_pairs(tmp_path)
    recipe = stereo_recipe(data, tmp_path / "run")
    recipe_from_dict(recipe)
    recipe["data"]["train"]["stereo"] = False
    with pytest.raises(RecipeError, match="data.train.stereo is False but model.name is 'StereoNAFNet'"):
        recipe_from_dict(recipe)
    recipe["data"]["train"].update({"stereo": True, "use_rot": True})
    with pytest.raises(RecipeError, match="data.train.use_rot with stereo pairs"):
        recipe_from_dict(recipe)


def test_train_validate_and_restore_pairs(tmp_path, capsys):
    data = make_stereo_pairs(tmp_path / "pairs")
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(stereo_recipe(data, tmp_path / "run")))
    assert train_main([str(path)]) == 0
    metrics = [yaml.safe_load(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["images"] == 4                       # 2 pairs: both views scored
    out = tmp_path / "out"
    args = [str(data / "val/lq"), "-o", str(out), "--model", str(tmp_path / "run"), "--steps", "3", "--no-progress"]
    assert restore_cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000_L.png", "0000_R.png", "0001_L.png", "0001_R.png"]
    pipe = refusion.load_pipeline(tmp_path / "run")
    left, right = (read_image(data / "val/lq" / f"0000_{v}.png") for v in "LR")
    stacked = torch.from_numpy(np.concatenate([left, right], axis=2)).permute(2, 0, 1)[None]
    expected = pipe(stacked, num_inference_steps=3, output_type="pt", progress=False,
                    generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_allclose(read_image(out / "0000_R.png"), expected[3:].permute(1, 2, 0).numpy(), atol=1e-4)
    check_evaluation_scores_both_views(pipe, tmp_path / "run", data / "val", tmp_path / "report")
    assert restore_cli.main(args[:2] + [str(tmp_path / "out3")] + args[3:] + ["--self-ensemble"]) == 2
    assert "epipolar" in capsys.readouterr().err and not (tmp_path / "out3").exists()   # refused before any pair
    (data / "val/lq" / "0001_R.png").unlink()                  # a view without its partner: usage error
    assert restore_cli.main(args[:2] + [str(tmp_path / "out2")] + args[3:]) == 2
    assert "0001_L.png" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    (data / "val/gt" / "0001_R.png").unlink()
    with pytest.raises(ValueError, match="0001_L"):              # evaluation: the same view without partner
        evaluate_runs([tmp_path / "run"], data / "val/gt", data / "val/lq", tmp_path / "report2",
                      samplers=["mr_sde:3"], progress=False)


def check_evaluation_scores_both_views(pipe, run: Path, val: Path, out: Path) -> None:
    """evaluate_runs restores each pair in one pass (seed + pair index) and scores each view as an image."""
    result = evaluate_runs([run], val / "gt", val / "lq", out, samplers=["mr_sde:3"], seed=5, progress=False)
    row = next(r for r in result["rows"] if r["kind"] == "sde")
    assert row["images"] == 4 and row["nfe"] == 3              # 4 views; 3 network calls per pair
    psnrs = []
    for index, pair in enumerate(("0000", "0001")):
        left, right = (read_image(val / "lq" / f"{pair}_{v}.png") for v in "LR")
        stacked = torch.from_numpy(np.concatenate([left, right], axis=2)).permute(2, 0, 1)[None]
        restored = pipe(stacked, num_inference_steps=3, sampler="mr_sde", output_type="pt", progress=False,
                        generator=torch.Generator().manual_seed(5 + index)).images[0].permute(1, 2, 0).numpy()
        for view, img in zip("LR", np.split(restored, 2, axis=2)):
            psnrs.append(refusion.metrics.psnr(img, read_image(val / "gt" / f"{pair}_{view}.png")))
            assert (out / "images" / "run__mr_sde__3" / f"{pair}_{view}.png").is_file()
    assert row["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-6)


def test_the_official_stereo_network_imports_and_matches_the_official_output(tmp_path):
    weights = tmp_path / "stereo.pth"
    torch.save(torch.load(DATA / "variants" / "net_cnafnet_stereo_small.pt", weights_only=True), weights)
    result = import_official(tmp_path / "ssr", weights=weights,
                             sde={"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005})
    assert result.network == "StereoNAFNet"
    pipe = refusion.load_pipeline(tmp_path / "ssr")
    r = dict(np.load(DATA / "variants" / "net_cnafnet_stereo_small.npz"))
    with torch.no_grad():
        got = pipe.unet(torch.from_numpy(r["x_t"]), torch.from_numpy(r["cond"]), 55)
    np.testing.assert_allclose(got.numpy(), r["output_t_int"], atol=2e-5, rtol=0)
