"""The offline synthetic dataset builder and its command line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from refusion.data.paired import PairedImageDataset, find_pairs
from refusion.data.image_io import read_image
from refusion.data.synthetic import SOURCES, build_dataset, verify_dataset

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(size=32, num_train=10, num_val=2, num_test=2)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    manifest = build_dataset(root / "a", "shadow", seed=0, **SMALL)
    return root, manifest


def test_same_seed_gives_byte_identical_dataset(built, tmp_path):
    root, _ = built
    build_dataset(tmp_path / "b", "shadow", seed=0, **SMALL)
    assert _tree(root / "a") == _tree(tmp_path / "b")
    build_dataset(tmp_path / "c", "shadow", seed=1, **SMALL)
    other = _tree(tmp_path / "c")
    assert other.keys() == _tree(root / "a").keys() and other != _tree(root / "a")


def test_manifest_lists_every_file_with_its_hash(built):
    root, manifest = built
    on_disk = json.loads((root / "a" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["task"] == "shadow" and manifest["seed"] == 0 and manifest["size"] == 32
    assert manifest["counts"] == {"train": 10, "val": 2, "test": 2}
    assert manifest["degradation"]["parameters"]["darkness"] == [0.25, 0.6]
    for entry in manifest["files"]:
        for role in ("gt", "lq"):
            data = (root / "a" / entry[role]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry[f"{role}_sha256"]
    assert len(list((root / "a").rglob("*.png"))) == 2 * len(manifest["files"])
    assert verify_dataset(root / "a") == []


def test_splits_are_disjoint_by_source_photo(built):
    root, manifest = built
    sources = {split: {f["source"] for f in manifest["files"] if f["split"] == split} for split in ("train", "val", "test")}
    assert not (sources["train"] & sources["test"]) and not (sources["train"] & sources["val"])
    assert not (sources["val"] & sources["test"])
    assert sources["test"] == {n for n, (s, _, _) in SOURCES.items() if s == "test"}
    for entry in manifest["files"]:
        assert entry["name"].startswith(entry["source"] + "_")


def test_output_is_a_paired_dataset_of_8bit_pngs(built):
    root, _ = built
    dataset = PairedImageDataset(root / "a" / "train" / "gt", root / "a" / "train" / "lq", gt_size=16, seed=0)
    assert len(dataset) == 10
    item = dataset[0]
    assert item["gt"].shape == (3, 16, 16)
    gt = read_image(root / "a" / "test" / "gt" / "coffee_000.png")
    lq = read_image(root / "a" / "test" / "lq" / "coffee_000.png")
    assert gt.shape == (32, 32, 3) and lq.mean() < gt.mean()  # shadows darken
    assert all(np.asarray(read_image(p)).shape == (32, 32, 3) for _, p, _ in find_pairs(root / "a" / "val" / "gt", root / "a" / "val" / "lq"))


def test_gt_crops_are_shared_across_tasks(built, tmp_path):
    root, _ = built
    build_dataset(tmp_path / "noise", "noise", seed=0, **SMALL)
    for split in ("train", "test"):
        assert _tree(root / "a" / split / "gt") == _tree(tmp_path / "noise" / split / "gt")
        assert _tree(root / "a" / split / "lq") != _tree(tmp_path / "noise" / split / "lq")


def test_refuses_to_overwrite_and_validates(built, tmp_path):
    root, _ = built
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        build_dataset(root / "a", "shadow", seed=0, **SMALL)
    with pytest.raises(ValueError, match="unknown task 'fog'"):
        build_dataset(tmp_path / "x", "fog")
    with pytest.raises(ValueError, match="num_train=0"):
        build_dataset(tmp_path / "x", "noise", num_train=0)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def _cli():
    from refusion.cli import dataset
    return dataset


def test_command_line(tmp_path, capsys):
    cli = _cli()
    assert cli.main(["--task", "haze,rain", "--out", str(tmp_path), "--size", "32", "--crops-per-image", "1"]) == 0
    for task in ("haze", "rain"):
        manifest = json.loads((tmp_path / task / "manifest.json").read_text())
        photos = {split: sum(1 for s, _, _ in SOURCES.values() if s == split) for split in ("train", "val", "test")}
        assert manifest["counts"] == photos and manifest["task"] == task
    assert "haze: 9 train / 1 val / 2 test pairs of 32x32" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.parse_args(["--task", "fog", "--out", str(tmp_path)])
    assert cli.parse_args(["--tasks", "all", "--out", "x"]).tasks == ["shadow", "noise", "blur", "haze", "rain", "lowlight", "sr",
                                                                      "bokeh"]


def test_degradation_parameters_replace_the_defaults(built, tmp_path):
    root, _ = built
    one_level = build_dataset(tmp_path / "sigma25", "noise", seed=0, params={"sigma": 25}, **SMALL)
    assert one_level["degradation"]["parameters"] == {"sigma": 25}
    spread = build_dataset(tmp_path / "range", "noise", seed=0, **SMALL)
    assert spread["degradation"]["parameters"] == {"sigma": [10.0, 50.0]}
    # same GT crops, and the LQ noise at one level: its standard deviation is 25/255 wherever nothing clips
    assert _tree(tmp_path / "sigma25" / "test" / "gt") == _tree(root / "a" / "test" / "gt")
    gt = read_image(tmp_path / "sigma25" / "test" / "gt" / "coffee_000.png")
    lq = read_image(tmp_path / "sigma25" / "test" / "lq" / "coffee_000.png")
    inside = (gt > 0.3) & (gt < 0.7)
    assert (lq - gt)[inside].std() * 255 == pytest.approx(25, rel=0.15)
    with pytest.raises(ValueError, match="task 'noise' has no parameter 'sgima'; its parameters are sigma"):
        build_dataset(tmp_path / "x", "noise", params={"sgima": 25}, **SMALL)
    assert not (tmp_path / "x").exists()


def test_command_line_degradation_parameters(tmp_path):
    cli = _cli()
    assert cli.parse_args(["--task", "noise", "--out", "x", "--param", "sigma=25"]).params == {"sigma": 25.0}
    assert cli.parse_args(["--task", "haze", "--out", "x", "--param", "airlight=0.8,0.9",
                           "--param", "depth_weight=0.5"]).params == {"airlight": (0.8, 0.9), "depth_weight": 0.5}
    for bad in ("sigma", "sigma=", "sigma=a", "=3", "sigma=1,2,3"):
        with pytest.raises(SystemExit):
            cli.parse_args(["--task", "noise", "--out", "x", "--param", bad])
    assert cli.main(["--task", "noise", "--out", str(tmp_path / "n"), "--size", "32", "--crops-per-image", "1",
                     "--param", "sigma=25"]) == 0
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["degradation"]["parameters"] == {"sigma": 25.0}
