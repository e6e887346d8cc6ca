"""Bokeh end to end: EBB!-style lens information (refusion.data.lens) through the dataset, training, the
pipeline (lens_info=), `refusion restore`, evaluation and the synthetic bokeh task; the official latent-bokeh
checkpoint imported and restoring."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import refusion
from refusion.cli import evaluate as evaluate_cli
from refusion.cli import import_official as import_cli
from refusion.cli import restore as restore_cli
from refusion.config import RecipeError, load_recipe
from refusion.data import degradations
from refusion.data.image_io import read_image
from refusion.data.lens import (
    LensInfo, LensMetadataError, lens_batch, lens_info, lens_value, read_lens_metadata,
)
from refusion.data.paired import PairedImageDataset
from refusion.data.synthetic import build_dataset, verify_dataset
from refusion.inference.pipeline import RefusionPipeline
from refusion.models import BokehNAFNet, ConditionalNAFNet, LatentUNet
from refusion.schedulers.ir_sde import IRSDEScheduler
from refusion.training.engine import train
from refusion.training.objectives import sde_objective

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TINY = {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_bokeh(seed: int = 0, **kwargs) -> BokehNAFNet:
    torch.manual_seed(seed)
    net = BokehNAFNet(**{**TINY, **kwargs}).eval()
    with torch.no_grad():   # beta/gamma start at zero (skip-init): give the blocks, and so the lens, a say
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bokeh") / "data"
    build_dataset(root, "bokeh", seed=0, size=32, num_train=6, num_val=2, num_test=2)
    return root


# ------------------------------------------------------------------ the metadata format


def test_lens_names_encode_as_the_official_code_does():
    # official lenstr2tensor: 'Canon50mmf' -> '-', 'Sony50mmf' -> '', 'BS' -> '', then x10 for lenses
    assert lens_value("Sony50mmf1.8BS") == pytest.approx(18.0)
    assert lens_value("Canon50mmf1.4BS") == pytest.approx(-14.0)
    assert lens_value("Sony50mmf16.0BS") == pytest.approx(160.0)
    assert lens_value("Canon50mmf1.8") == pytest.approx(-18.0)
    assert lens_value("-1.4") == lens_value(-1.4) == pytest.approx(-14.0)
    assert lens_info("Sony50mmf1.8BS", "Sony50mmf16.0BS", "35") == pytest.approx((18.0, 160.0, 35.0))


def test_meta_txt_is_read_by_id(tmp_path):
    meta = tmp_path / "meta.txt"
    meta.write_text("00000, Sony50mmf1.8BS, Sony50mmf16.0BS, 35\n\n# a comment\n00001.src.jpg, Canon50mmf1.4BS, "
                    "Sony50mmf1.8BS, 22\n")
    table = read_lens_metadata(meta)
    assert table == {"00000": LensInfo(18.0, 160.0, 35.0), "00001": pytest.approx(LensInfo(-14.0, 18.0, 22.0))}


@pytest.mark.parametrize("line, message", [
    ("00000, Sony50mmf1.8BS, 35", "meta.txt:2: expected 'id, src_lens, tgt_lens, disparity' (4 comma-separated"),
    ("00000, Nikon50mmf1.8, Sony50mmf1.8BS, 35", "meta.txt:2 (id '00000'): src_lens: unknown lens 'Nikon50mmf1.8'"),
    ("00000, Sony50mmf1.8BS, Sony50mmf0BS, 35", "tgt_lens: f-number 0 is out of range: expected 0 < N <= 64"),
    ("00000, Sony50mmf1.8BS, Sony50mmf128BS, 35", "tgt_lens: f-number 128 is out of range"),
    ("00000, 0, Sony50mmf1.8BS, 35", "src_lens: lens '0' is out of range"),
    ("00000, Sony50mmf1.8BS, Sony50mmf16.0BS, -3", "disparity: disparity '-3' is out of range: expected a finite number >= 0"),
    ("00000, Sony50mmf1.8BS, Sony50mmf16.0BS, nan", "disparity 'nan' is out of range"),
    ("00000, Sony50mmf1.8BS, Sony50mmf16.0BS, far", "disparity 'far' is not a number"),
    ("00001, Sony50mmf1.8BS, Sony50mmf16.0BS, 3", "meta.txt:2: id '00001' is listed twice"),
])
def test_bad_metadata_names_the_file_line_and_key(tmp_path, line, message):
    meta = tmp_path / "meta.txt"
    meta.write_text(f"00001, Sony50mmf16.0BS, Sony50mmf1.8BS, 10\n{line}\n")
    with pytest.raises(LensMetadataError) as info:
        read_lens_metadata(meta)
    assert message in str(info.value) and str(meta) in str(info.value)


def test_lens_batch_shapes_and_refusals():
    assert lens_batch([18.0, 160.0, 35.0], 2).tolist() == [[18.0, 160.0, 35.0]] * 2
    assert lens_batch([torch.tensor([18.0, -14.0]), 160.0, torch.tensor([1.0, 2.0])], 2).tolist() == \
        [[18.0, 160.0, 1.0], [-14.0, 160.0, 2.0]]
    assert lens_batch(np.array([[1, 2, 3], [4, 5, 6]]), 2).shape == (2, 3)
    with pytest.raises(LensMetadataError, match=r"shape \(3, 3\), got \(2, 3\)"):
        lens_batch(torch.zeros(2, 3), 3)
    with pytest.raises(LensMetadataError, match="NaN or Inf"):
        lens_batch([1.0, float("nan"), 2.0], 1)


# ------------------------------------------------------------------ the synthetic task and the dataset


def test_synthetic_bokeh_writes_the_metadata_of_every_pair(dataset, tmp_path):
    for split in ("train", "val", "test"):
        names = sorted(p.stem for p in (dataset / split / "lq").iterdir())
        table = read_lens_metadata(dataset / split / "meta.txt")
        assert sorted(table) == names
        assert all(info.src_lens != info.tgt_lens and info.disparity >= 10 for info in table.values())
    assert verify_dataset(dataset) == []
    (dataset / "val" / "meta.txt").write_text("chelsea_000, Sony50mmf1.8BS, Sony50mmf16.0BS, 1\n")
    try:
        assert verify_dataset(dataset) == ["val/meta.txt"]
    finally:
        build_dataset(tmp_path / "again", "bokeh", seed=0, size=32, num_train=6, num_val=2, num_test=2)
        (dataset / "val" / "meta.txt").write_bytes((tmp_path / "again" / "val" / "meta.txt").read_bytes())
    assert verify_dataset(dataset) == []


def test_synthetic_bokeh_renders_lq_with_the_source_lens_and_gt_with_the_target_lens(tmp_path, monkeypatch):
    # by definition each pair is one scene (sharp crop, subject) through two lenses at one disparity: LQ
    # through the meta.txt line's src_lens, GT through its tgt_lens. The sharp crops and subject masks are
    # recorded as build_dataset draws them (in pair order), and both sides recomputed with render_lens.
    scenes, subjects = [], []
    draw_subject = degradations._subject_mask
    monkeypatch.setattr(degradations, "_subject_mask", lambda *a: subjects.append(draw_subject(*a)) or subjects[-1])
    render_pair = degradations.RENDERINGS["bokeh"]
    monkeypatch.setitem(degradations.RENDERINGS, "bokeh",
                        lambda image, rng, **kw: scenes.append(np.array(image, np.float64)) or render_pair(image, rng, **kw))
    root = tmp_path / "data"
    manifest = build_dataset(root, "bokeh", seed=1, size=64, num_train=4, num_val=2, num_test=2)
    files = manifest["files"]
    assert len(scenes) == len(subjects) == len(files)
    # meta.txt lines: "<id>, src_lens, tgt_lens, disparity" (the lens names, which render_lens takes)
    lines = {(split, line.split(",")[0]): [x.strip() for x in line.split(",")] for split in ("train", "val", "test")
             for line in (root / split / "meta.txt").read_text().splitlines() if line.strip()}
    telling = 0
    for entry, sharp, subject in zip(files, scenes, subjects):
        _, src, tgt, disparity = lines[(entry["split"], Path(entry["name"]).stem)]
        assert src != tgt and {src, tgt} <= set(degradations.BOKEH_LENSES)
        want_lq = degradations.render_lens(sharp, subject, src, float(disparity))
        want_gt = degradations.render_lens(sharp, subject, tgt, float(disparity))
        # the PNGs hold 8-bit roundings of the renders
        np.testing.assert_allclose(read_image(root / entry["lq"]), want_lq, rtol=0, atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(read_image(root / entry["gt"]), want_gt, rtol=0, atol=0.5 / 255 + 1e-6)
        telling += float(np.abs(want_lq - want_gt).max()) > 2 / 255
    assert telling >= len(files) // 2   # most pairs tell the two lenses apart, so a swap cannot pass


def test_render_lens_blurs_the_background_by_aperture_and_keeps_the_subject():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 3)).astype(np.float32)
    subject = np.zeros((64, 64))
    subject[24:40, 24:40] = 1.0
    detail = lambda img: float(np.abs(np.diff(img[:16], axis=1)).mean())  # noqa: E731  (background rows)
    sharp = degradations.render_lens(image, subject, "Sony50mmf16.0BS", 20)
    wide = degradations.render_lens(image, subject, "Sony50mmf1.8BS", 20)
    wider = degradations.render_lens(image, subject, "Sony50mmf1.8BS", 60)
    assert detail(wider) < detail(wide) < 0.5 * detail(sharp)
    np.testing.assert_allclose(wide[26:38, 26:38], image[26:38, 26:38], atol=1e-6)   # the subject stays sharp
    canon = degradations.render_lens(image, subject, "Canon50mmf1.8BS", 20)
    assert not np.allclose(canon, wide)   # the lens's own circle of confusion


def test_dataset_items_carry_the_lens_information_through_crops(dataset):
    meta = dataset / "train" / "meta.txt"
    ds = PairedImageDataset(dataset / "train" / "gt", dataset / "train" / "lq", gt_size=16, use_flip=True,
                            use_rot=True, lens=meta, seed=0)
    table = read_lens_metadata(meta)
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batch = next(iter(loader))
    assert batch["lens_info"].shape == (3, 3) and batch["lens_info"].dtype == torch.float32
    for name, row in zip(batch["name"], batch["lens_info"]):
        assert row.tolist() == pytest.approx(list(table[name]))


def test_lens_swap_serves_all_in_focus_pairs_the_other_way_round_half_the_time(dataset):
    """The official use_swap: only a pair with an all-in-focus lens (ihc_000: Sony f/16 source) is ever
    swapped, then exactly (GT <-> LQ, src <-> tgt lens); every other draw is that of the plain dataset."""
    folders = (dataset / "train" / "gt", dataset / "train" / "lq")
    common = dict(gt_size=16, use_flip=True, use_rot=True, lens=dataset / "train" / "meta.txt", seed=0)
    plain, swapping = PairedImageDataset(*folders, **common), PairedImageDataset(*folders, **common, lens_swap=True)
    swaps = {}
    for epoch in range(8):
        plain.set_epoch(epoch), swapping.set_epoch(epoch)
        for index in range(len(plain)):
            a, b = plain[index], swapping[index]
            swapped = not torch.equal(a["gt"], b["gt"])
            if swapped:
                assert torch.equal(b["gt"], a["lq"]) and torch.equal(b["lq"], a["gt"])
                assert b["lens_info"].tolist() == a["lens_info"][[1, 0, 2]].tolist()
            else:
                assert torch.equal(b["lq"], a["lq"]) and torch.equal(b["lens_info"], a["lens_info"])
            swaps.setdefault(a["name"], []).append(swapped)
    assert 0 < sum(swaps.pop("ihc_000")) < 8
    assert not any(any(flags) for flags in swaps.values())
    with pytest.raises(ValueError, match="lens_swap .* needs lens=meta.txt"):
        PairedImageDataset(*folders, lens_swap=True)
    with pytest.raises(RecipeError, match="data.val.lens_swap"):
        _quickstart(dataset, dataset / "unused", "data.val.lens_swap=true")


def test_a_pair_without_lens_information_is_named(dataset, tmp_path):
    meta = tmp_path / "meta.txt"
    meta.write_text("".join(line + "\n" for line in (dataset / "train" / "meta.txt").read_text().splitlines()[1:]))
    first = sorted((dataset / "train" / "lq").iterdir())[0]
    with pytest.raises(LensMetadataError) as info:
        PairedImageDataset(dataset / "train" / "gt", dataset / "train" / "lq", lens=meta)
    assert str(meta) in str(info.value) and str(first) in str(info.value)


# ------------------------------------------------------------------ objective and pipeline


def test_the_objective_feeds_each_sample_its_own_lens_information():
    net = tiny_bokeh()
    seen = {}
    net.register_forward_hook(lambda module, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    torch.manual_seed(1)
    batch = {"gt": torch.rand(2, 3, 16, 16), "lq": torch.rand(2, 3, 16, 16),
             "lens_info": torch.tensor([[18.0, 160.0, 35.0], [-14.0, 18.0, 50.0]])}
    sched = IRSDEScheduler()
    train_cfg = load_recipe(ROOT / "recipes" / "quickstart_bokeh.yml", check_paths=False).train
    torch.manual_seed(2)
    loss, _ = sde_objective(net, batch, sched, train_cfg)
    assert [v.tolist() for v in seen["lens_info"]] == [[18.0, -14.0], [160.0, 18.0], [35.0, 50.0]]
    torch.manual_seed(2)
    other, _ = sde_objective(net, {**batch, "lens_info": batch["lens_info"].flip(0)}, sched, train_cfg)
    assert loss.item() != other.item()   # the lens information changes the prediction, and so the loss


def test_pipeline_batches_lens_information_per_image():
    pipe = RefusionPipeline(unet=tiny_bokeh(), scheduler=IRSDEScheduler(sampler="posterior"))
    torch.manual_seed(0)
    lq = torch.rand(2, 3, 16, 16)
    lens = torch.tensor([[18.0, 160.0, 35.0], [-14.0, 18.0, 50.0]])
    run = lambda x, info, seeds: pipe(x, num_inference_steps=4, lens_info=info, output_type="pt", progress=False,  # noqa: E731
                                      generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    both = run(lq, lens, [5, 6])
    alone = [run(lq[i:i + 1], lens[i], [5 + i]) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-5, rtol=0)
    swapped = run(lq, lens.flip(0), [5, 6])
    assert (swapped - both).abs().max() > 1e-3
    tiled = pipe(lq, num_inference_steps=4, lens_info=lens, output_type="pt", progress=False, tile_size=8,
                 tile_overlap=4, generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    assert (tiled - both).abs().mean() < 0.05      # tiles see the image's own lens information


def test_lens_information_is_required_by_the_bokeh_network_and_refused_elsewhere():
    lq = torch.rand(1, 3, 16, 16)
    bokeh = RefusionPipeline(unet=tiny_bokeh(), scheduler=IRSDEScheduler())
    with pytest.raises(ValueError, match=r"BokehNAFNet embeds the lens information of every image: pass lens_info="):
        bokeh(lq, num_inference_steps=2, progress=False)
    torch.manual_seed(0)
    plain = RefusionPipeline(unet=ConditionalNAFNet(img_channel=3, **TINY), scheduler=IRSDEScheduler())
    with pytest.raises(ValueError, match="the noise network is a ConditionalNAFNet, which takes no lens information"):
        plain(lq, num_inference_steps=2, lens_info=[18.0, 160.0, 35.0], progress=False)
    with pytest.raises(ValueError, match=r"lens_info must hold \[src_lens, tgt_lens, disparity\] for each of the 1"):
        refusion.sample(lq, steps=2, model=tiny_bokeh(), lens_info=torch.zeros(2, 3), progress=False)


# ------------------------------------------------------------------ train, restore, evaluate


def _quickstart(dataset: Path, out: Path, *extra: str):
    sets = [f"data.train.{k}={dataset}/train/{v}" for k, v in (("gt", "gt"), ("lq", "lq"), ("lens", "meta.txt"))]
    sets += [f"data.val.{k}={dataset}/val/{v}" for k, v in (("gt", "gt"), ("lq", "lq"), ("lens", "meta.txt"))]
    sets += [f"output_dir={out}", "train.total_iters=3", "train.checkpoint_every=3", "train.batch_size=2",
             "data.train.gt_size=16", "validation.every=3", "validation.num_inference_steps=2",
             "validation.max_images=1", "logging.trackers=[]", "model.args.width=8",
             "model.args.enc_blk_nums=[1,1]", "model.args.dec_blk_nums=[1,1]", *extra]
    return load_recipe(ROOT / "recipes" / "quickstart_bokeh.yml", sets)


def test_quickstart_bokeh_trains_restores_and_evaluates(dataset, tmp_path, capsys):
    run = train(_quickstart(dataset, tmp_path / "run"))
    assert (run / "metrics.jsonl").read_text().count("psnr") == 1
    pipe = refusion.load_pipeline(run)
    assert isinstance(pipe.unet, BokehNAFNet)
    test_lq, meta = dataset / "test" / "lq", dataset / "test" / "meta.txt"
    common = ["--model", str(run), "--steps", "2", "--no-progress"]
    assert restore_cli.main([str(test_lq), "-o", str(tmp_path / "out"), "--lens-meta", str(meta), *common]) == 0
    names = sorted(p.name for p in test_lq.iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    # the file restores each image with its own line: the same as the python call with that line
    first = names[0]
    info = read_lens_metadata(meta)[Path(first).stem]
    expected = pipe(read_image(test_lq / first), num_inference_steps=2, lens_info=info, output_type="np",
                    progress=False, generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_allclose(read_image(tmp_path / "out" / first), expected, atol=1.5 / 255)
    # per-image flags
    flags = ["--src-lens", "Sony50mmf16.0BS", "--tgt-lens", "Canon50mmf1.4BS", "--disparity", "30"]
    assert restore_cli.main([str(test_lq / first), "-o", str(tmp_path / "flags"), *flags, *common]) == 0
    assert (tmp_path / "flags" / first).is_file()
    capsys.readouterr()
    # missing or bad lens information: a usage error naming the file / key, nothing written
    assert restore_cli.main([str(test_lq), "-o", str(tmp_path / "none"), *common]) == 2
    assert "is a bokeh model (BokehNAFNet): it needs the lens information" in capsys.readouterr().err
    partial = tmp_path / "partial.txt"
    partial.write_text(meta.read_text().splitlines()[0] + "\n")
    assert restore_cli.main([str(test_lq), "-o", str(tmp_path / "none"), "--lens-meta", str(partial), *common]) == 2
    err = capsys.readouterr().err
    assert f"lens metadata {str(partial)!r} has no entry for image {str(test_lq / names[1])!r}" in err
    bad = [*flags[:-1], "-2"]
    assert restore_cli.main([str(test_lq), "-o", str(tmp_path / "none"), *bad, *common]) == 2
    assert "command line: disparity: disparity '-2' is out of range" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    # evaluation scores with the test set's lens information
    report = tmp_path / "report"
    assert evaluate_cli.main([str(run), "--gt", str(dataset / "test" / "gt"), "--lq", str(test_lq), "--out",
                              str(report), "--samplers", "posterior:2", "--lens-meta", str(meta)]) == 0
    rows = {row["run"]: row for row in json.loads((report / "results.json").read_text())["rows"]}
    assert rows[run.name]["images"] == 2 and np.isfinite(rows[run.name]["psnr"])
    assert evaluate_cli.main([str(run), "--gt", str(dataset / "test" / "gt"), "--lq", str(test_lq), "--out",
                              str(tmp_path / "r2"), "--samplers", "posterior:2"]) == 2
    assert "is a bokeh model (BokehNAFNet): pass the test set's lens metadata" in capsys.readouterr().err


def test_the_official_two_phase_formulation_trains_and_restores_on_latents(dataset, tmp_path):
    """recipes/bokeh_latent_unet.yml then recipes/bokeh.yml (the SDE on the autoencoder's latents),
    shrunk to a few steps: lens information reaches the latent noise network."""
    paths = [f"data.{split}.{k}={dataset}/{split}/{k}" for split in ("train", "val") for k in ("gt", "lq")]
    small = ["train.total_iters=2", "train.checkpoint_every=2", "train.batch_size=2", "data.train.gt_size=16",
             "validation.every=2", "validation.max_images=1", "logging.trackers=[]", "data.num_workers=0"]
    ae = train(load_recipe(ROOT / "recipes" / "bokeh_latent_unet.yml", [
        *paths, *small, f"output_dir={tmp_path / 'ae'}", "model.args.ch=4", "model.args.ch_mult=[1,2]"]))
    sde = train(load_recipe(ROOT / "recipes" / "bokeh.yml", [
        *paths, *small, f"output_dir={tmp_path / 'sde'}", f"latent.autoencoder={ae}",
        f"data.train.lens={dataset}/train/meta.txt", f"data.val.lens={dataset}/val/meta.txt",
        "validation.num_inference_steps=2", "model.args.width=8", "model.args.enc_blk_nums=[1]",
        "model.args.middle_blk_num=1", "model.args.dec_blk_nums=[1]"]))
    pipe = refusion.load_pipeline(sde)
    assert pipe.autoencoder.config.embed_dim == pipe.unet.config.img_channel == 4
    out = tmp_path / "out"
    assert restore_cli.main([str(dataset / "test" / "lq"), "-o", str(out), "--model", str(sde), "--steps", "2",
                             "--lens-meta", str(dataset / "test" / "meta.txt"), "--no-progress"]) == 0
    assert len(list(out.iterdir())) == 2


# ------------------------------------------------------------------ the official checkpoint


def test_official_latent_bokeh_checkpoint_imports_matches_and_restores(dataset, tmp_path):
    """Official-format weights (the official network's reference, tests/data/variants) + a 4-channel latent
    autoencoder + the official test option file's structure -> a folder that restores with lens metadata."""
    weights = tmp_path / "latent-reffusion-bokeh.pth"
    torch.save(torch.load(DATA / "variants" / "net_cnafnet_bokeh_small.pt", weights_only=True), weights)
    torch.manual_seed(0)
    ae = tmp_path / "latent-bokeh.pth"
    torch.save(LatentUNet(in_ch=3, out_ch=3, ch=4, ch_mult=[1, 2], embed_dim=4).state_dict(), ae)
    options = tmp_path / "refusion.yml"   # the official bokeh test file, with the reference network's sizes
    options.write_text((DATA / "official_options" / "latent-bokeh_refusion_test.yml").read_text()
                       .replace("width: 8", "width: 16").replace("enc_blk_nums: [1, 1]", "enc_blk_nums: [1, 2]"))
    out = tmp_path / "imported"
    assert import_cli.main([str(out), "--weights", str(weights), "--latent-weights", str(ae),
                            "--options", str(options)]) == 0
    assert "--lens-meta" in (out / "README.md").read_text()
    pipe = refusion.load_pipeline(out)
    r = dict(np.load(DATA / "variants" / "net_cnafnet_bokeh_small.npz"))
    with torch.no_grad():
        got = pipe.unet(torch.from_numpy(r["x_t"]), torch.from_numpy(r["cond"]), torch.from_numpy(r["t_vec"]),
                        lens_info=[torch.from_numpy(r[k]) for k in ("src_lens", "tgt_lens", "disparity")])
    np.testing.assert_allclose(got.numpy(), r["output_t_vec"], atol=2e-5, rtol=0)
    restored = tmp_path / "restored"
    assert restore_cli.main([str(dataset / "test" / "lq"), "-o", str(restored), "--model", str(out), "--steps", "3",
                             "--lens-meta", str(dataset / "test" / "meta.txt"), "--no-progress"]) == 0
    assert len(list(restored.iterdir())) == 2
