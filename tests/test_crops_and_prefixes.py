"""Random crops reach every valid offset (the bottom/right edge included), and checkpoints saved from
a compiled model wrapped in DistributedDataParallel (either order) load.

Crops: an image whose pixels encode their own row and column, so each crop's top-left pixel says
where it was cut. With k valid offsets per axis and D draws, an offset is missed with probability
(1 - 1/k)^D; the draw counts below make that < 1e-8 per offset on correct code (the seeds are fixed),
while an off-by-one in the span (never drawing the last offset) fails with certainty.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from refusion.data.paired import PairedImageDataset
from refusion.models import NAFNet
from refusion.official.checkpoints import extract_state_dict, load_official

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, a shared CPU

DATA = Path(__file__).parent / "data"
SMALL = dict(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


# ------------------------------------------------------------------ random crops
def coordinate_image(height: int, width: int) -> np.ndarray:
    """uint8 HxWx3 with R = 10 * row, G = 10 * column, B = 128."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([10 * rows, 10 * cols, np.full_like(rows, 128)], axis=-1).astype(np.uint8)


def write_pair(root: Path, gt: np.ndarray, lq: np.ndarray) -> tuple[Path, Path]:
    for kind, image in (("gt", gt), ("lq", lq)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / kind / "a.png")
    return root / "gt", root / "lq"


def offset_of(item_image: torch.Tensor) -> tuple[int, int]:
    """(top, left) of a crop of coordinate_image, read off its top-left pixel."""
    r, g = (int(round(float(v) * 255)) for v in item_image[:2, 0, 0])
    return r // 10, g // 10


@pytest.mark.parametrize("seeded", [True, False])
def test_random_crops_draw_every_offset_including_the_last(tmp_path, seeded):
    height, width, size = 11, 13, 8                     # 4 valid tops (0..3), 6 valid lefts (0..5)
    image = coordinate_image(height, width)
    gt, lq = write_pair(tmp_path, image, image)
    dataset = PairedImageDataset(gt, lq, gt_size=size, seed=7 if seeded else None)
    torch.manual_seed(0)
    seen = set()
    for epoch in range(200):                             # (5/6)^200 = 1.5e-16 per left offset
        dataset.set_epoch(epoch)
        item = dataset[0]
        top, left = offset_of(item["gt"])
        assert 0 <= top <= height - size and 0 <= left <= width - size, (top, left)
        assert torch.equal(item["gt"], item["lq"])
        seen.add((top, left))
    tops, lefts = {t for t, _ in seen}, {s for _, s in seen}
    assert tops == set(range(height - size + 1)) and lefts == set(range(width - size + 1)), (tops, lefts)


def test_super_resolution_crops_reach_the_last_lq_offset_with_aligned_gt(tmp_path):
    """scale 2: LQ crops of gt_size / 2 at every LQ offset, the GT crop at twice the offset."""
    scale, size = 2, 8
    lq_image = coordinate_image(7, 9)                    # LQ crop 4: tops 0..3, lefts 0..5
    gt_image = np.repeat(np.repeat(lq_image, scale, 0), scale, 1)
    gt, lq = write_pair(tmp_path, gt_image, lq_image)
    dataset = PairedImageDataset(gt, lq, gt_size=size, scale=scale, seed=1)
    seen = set()
    for epoch in range(200):
        dataset.set_epoch(epoch)
        item = dataset[0]
        top, left = offset_of(item["lq"])
        assert offset_of(item["gt"]) == (top, left)       # the GT pixel at 2*offset repeats LQ's
        torch.testing.assert_close(item["gt"], item["lq"].repeat_interleave(2, 1).repeat_interleave(2, 2))
        seen.add((top, left))
    assert {t for t, _ in seen} == set(range(4)) and {s for _, s in seen} == set(range(6)), seen


def test_synthetic_random_crop_windows_reach_the_last_offset_and_the_largest_side(monkeypatch):
    """refusion.data.synthetic.random_crop: window side in [size, min(h, w, 4 size)], left in
    [0, w - side], top in [0, h - side], every end point reachable."""
    from refusion.data import synthetic

    size, height, width = 8, 10, 11
    rng_photo = np.random.default_rng(0)
    photo = rng_photo.integers(60, 200, size=(height, width, 3), dtype=np.uint8)   # never redrawn as flat
    boxes = []
    original = Image.Image.resize

    def recording_resize(self, new_size, resample=None, box=None, *args, **kwargs):
        boxes.append(tuple(int(v) for v in box))
        return original(self, new_size, resample, box, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    rng = np.random.default_rng(3)
    for _ in range(400):
        crop = synthetic.random_crop(photo, size, rng)
        assert crop.shape == (size, size, 3)
    sides = {right - left for left, _, right, _ in boxes}
    assert sides == {8, 9, 10}, sides                    # size .. min(h, w): the largest included
    for side in sides:
        lefts = {b[0] for b in boxes if b[2] - b[0] == side}
        tops = {b[1] for b in boxes if b[2] - b[0] == side}
        assert lefts == set(range(width - side + 1)) and tops == set(range(height - side + 1)), (side, lefts, tops)
    assert all(b[2] <= width and b[3] <= height and b[3] - b[1] == b[2] - b[0] for b in boxes)


# ------------------------------------------------------------------ compiled + DDP checkpoints
@pytest.fixture(scope="module")
def official_sd():
    return torch.load(DATA / "net_nafnet_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def wrapped_state_dicts(official_sd, tmp_path_factory):
    """State dicts of the real wrappers: torch.compile(DDP(net)) and DDP(torch.compile(net)), under a
    one-process gloo group (a file store: no port)."""
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        store = tmp_path_factory.mktemp("process_group") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        def net():
            model = NAFNet(**SMALL)
            model.load_state_dict(official_sd)
            return model

        ddp = nn.parallel.DistributedDataParallel
        return {
            "compile(ddp(net))": torch.compile(ddp(net())).state_dict(),
            "ddp(compile(net))": ddp(torch.compile(net())).state_dict(),
        }
    finally:
        if started:
            dist.destroy_process_group()


@pytest.mark.parametrize("wrapper, prefix", [("compile(ddp(net))", "_orig_mod.module."),
                                             ("ddp(compile(net))", "module._orig_mod.")])
@pytest.mark.parametrize("container", ["bare", "params", "state_dict"])
def test_compiled_ddp_checkpoints_load(wrapped_state_dicts, official_sd, tmp_path, wrapper, prefix, container):
    sd = wrapped_state_dicts[wrapper]
    assert set(sd) == {prefix + k for k in official_sd}  # what the wrappers really write
    obj = sd if container == "bare" else {container: sd}
    assert set(extract_state_dict(obj)) == set(official_sd)
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = load_official(NAFNet(**SMALL), path)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in official_sd.items())


@pytest.mark.parametrize("prefixes", list(itertools.permutations(["module.", "_orig_mod.", "module."])))
def test_any_stack_of_wrapper_prefixes_is_stripped(official_sd, prefixes):
    """Nested wrappers (DDP of compile of DDP ...) stack their prefixes in any order."""
    sd = {"".join(prefixes) + k: v for k, v in official_sd.items()}
    assert extract_state_dict({"params": sd}).keys() == official_sd.keys()


def test_prefix_is_stripped_only_at_the_start(official_sd):
    """A key that merely contains 'module.' inside keeps it: only wrapper prefixes are removed."""
    sd = {"module.encoders.module.x": torch.zeros(1), "_orig_mod.a_orig_mod.b": torch.zeros(1)}
    assert set(extract_state_dict(sd)) == {"encoders.module.x", "a_orig_mod.b"}
