"""Corrupt or foreign run state is detected and named; nothing is loaded from it or trained over it.

One tiny regressor run (4 steps, checkpoints at 2 and 4) is trained once; every case works on a
copy: each checkpoint file truncated, bit-flipped or deleted, meta.json broken, files missing from
the run directory, checkpoints and weights of another architecture, pickles carrying code where
our safetensors belong, and a flipped bit in the published weights (model/ checksums.json).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refusion.checksums import WEIGHTS_MANIFEST
from refusion.config import recipe_from_dict
from refusion.errors import CorruptWeightsError
from refusion.training import CheckpointError, RunDirError, train
from refusion.training import run_dir as rd
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
STEP4 = "checkpoints/step_00000004"
PWNED = "pwned.txt"


class CodeCarrier:
    """Unpickling this writes a file next to it: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def recipe(data: Path, out: Path, **train_settings):
    return recipe_from_dict(tiny_recipe_dict("regressor", data, out, total_iters=4, checkpoint_every=2,
                                             ema_decay=0.5, **train_settings))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_train=2, n_val=0, size=32)


@pytest.fixture(scope="module")
def pristine(data, tmp_path_factory) -> Path:
    return train(recipe(data, tmp_path_factory.mktemp("runs") / "pristine"))


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def rehash(ckpt: Path) -> None:
    """Recompute meta.json after a change, as someone who edits a checkpoint on purpose would."""
    meta = json.loads((ckpt / rd.META).read_text())
    meta.pop("files")
    rd.write_meta(ckpt, meta)


def resume_error(data: Path, run: Path, **train_settings) -> str:
    before = snapshot(run)
    with pytest.raises((CheckpointError, RunDirError)) as info:
        train(recipe(data, run, **train_settings), resume=True)
    assert snapshot(run) == before, "a refused resume changed the run directory"
    return str(info.value)


# ---------------------------------------------------------------- checkpoint files: checksums


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flip":
        flipped = bytearray(raw)
        flipped[len(raw) // 3] ^= 0x10
        path.write_bytes(bytes(flipped))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
def test_every_checkpoint_file_damaged_is_named(data, pristine, tmp_path, how):
    names = sorted(rd.verify_checkpoint(pristine / STEP4)["files"])
    assert {"model.safetensors", "optimizer.bin", "ema.safetensors", "rng_0.json"} <= set(names)
    for name in names:
        copy = tmp_path / name
        shutil.copytree(pristine, copy)
        _damage(copy / STEP4 / name, how)
        message = resume_error(data, copy)
        path = str(copy / STEP4 / name)
        expected = "is missing" if how == "delete" else "is corrupt: sha256"
        assert f"'{path}'" in message and expected in message, message


def test_following_the_advice_resumes_from_the_previous_checkpoint(data, run, pristine):
    _damage(run / STEP4 / "model.safetensors", "flip")
    message = resume_error(data, run)
    assert f"delete '{run / STEP4}' to resume from the previous checkpoint" in message
    shutil.rmtree(run / STEP4)
    train(recipe(data, run), resume=True)     # redoes steps 3-4 from step 2: the same weights
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(pristine / STEP4 / name)), load_file(str(run / STEP4 / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("content, expected", [
    (b"", "is not valid JSON"),
    (b'{"step": 4, "files": {"model.safe', "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b'{"step": 4}', "has no 'files' entry"),
    (None, "has no meta.json: it is incomplete"),
])
def test_broken_meta_json_is_named(data, run, content, expected):
    meta = run / STEP4 / rd.META
    if content is None:
        meta.unlink()
    else:
        meta.write_bytes(content)
    message = resume_error(data, run)
    assert expected in message and str(run / STEP4) in message, message


def test_newest_checkpoint_corrupt_never_falls_back_silently(data, run):
    # an older complete checkpoint exists, but resuming from it without being told would lose steps
    _damage(run / STEP4 / "optimizer.bin", "truncate")
    assert "optimizer.bin' is corrupt" in resume_error(data, run)


# ---------------------------------------------------------------- a run directory with a missing file


def test_missing_recipe_on_resume_is_named(data, run):
    (run / "recipe.yml").unlink()
    message = resume_error(data, run)
    assert f"'{run / 'recipe.yml'}' is missing" in message


def test_missing_checkpoints_never_start_from_scratch(data, run):
    shutil.rmtree(run / "checkpoints")
    assert "no checkpoint in" in resume_error(data, run)
    with pytest.raises(RunDirError, match="already exists and is not empty; pass --resume .* or --overwrite"):
        train(recipe(data, run))
    assert (run / "model" / "config.json").is_file()  # the trained weights were not replaced


def test_a_run_killed_before_its_first_checkpoint_asks_for_overwrite(data, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step_00000002").mkdir(parents=True)   # a kill in the first write
    (run / "checkpoints" / ".tmp-step_00000002" / "optimizer.bin").write_bytes(b"half")
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        train(recipe(data, run))
    with pytest.raises(RunDirError, match="no checkpoint in"):
        train(recipe(data, run), resume=True)
    assert train(recipe(data, run), overwrite=True) == run
    assert [p.name for p in rd.list_checkpoints(run)] == ["step_00000002", "step_00000004"]


def test_cli_refuses_an_existing_run_without_resume_or_overwrite(data, run, tmp_path, capsys):
    import yaml

    from refusion.cli.train import main

    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict("regressor", data, run, total_iters=6, checkpoint_every=2,
                                                    ema_decay=0.5)))
    before = snapshot(run)
    assert main([str(path)], task="regressor") == 1
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert snapshot(run) == before
    assert main([str(path), "--resume"], task="regressor") == 0
    assert [p.name for p in rd.list_checkpoints(run)][-1] == "step_00000006"


# ---------------------------------------------------------------- another architecture or config


def test_recipe_of_another_config_is_refused(data, run):
    other = tiny_recipe_dict("regressor", data, run, total_iters=4)
    other["model"] = {"name": "Baseline", "args": {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1,
                                                  "dec_blk_nums": [1, 1]}}
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=r"recipe key 'model' differs .*recipe\.yml"):
        train(recipe_from_dict(other), resume=True)
    assert snapshot(run) == before


def test_checkpoint_copied_from_another_architecture_is_named(data, run, tmp_path):
    # a step directory of another run (valid checksums of its own) dropped into this run
    other = train(recipe_from_dict(dict(tiny_recipe_dict("regressor", data, tmp_path / "other", total_iters=2,
                                                         checkpoint_every=2),
                                        model={"name": "NAFNet", "args": {"width": 4, "enc_blk_nums": [1],
                                                                          "middle_blk_num": 1,
                                                                          "dec_blk_nums": [1]}})))
    shutil.rmtree(run / STEP4)
    shutil.copytree(other / "checkpoints/step_00000002", run / STEP4)
    message = resume_error(data, run)
    assert str(run / STEP4) in message and "model.safetensors" in message, message
    assert "size mismatch" in message or "does not match" in message, message


# ---------------------------------------------------------------- pickles where our safetensors belong


def test_pickle_with_code_in_a_checkpoint_is_refused_and_named(data, run):
    ckpt = run / STEP4
    torch.save({"state": CodeCarrier(run / PWNED)}, ckpt / "optimizer.bin")
    rehash(ckpt)   # checksums cannot help: the attacker rewrote them
    message = resume_error(data, run)
    assert not (run / PWNED).exists(), "unpickling ran code"
    assert str(ckpt / "optimizer.bin") in message and "weights_only" in message, message


def test_checkpoint_weights_as_a_pickle_are_refused(data, run):
    ckpt = run / STEP4
    (ckpt / "model.safetensors").unlink()
    torch.save({"w": CodeCarrier(run / PWNED)}, ckpt / "pytorch_model.bin")
    rehash(ckpt)
    message = resume_error(data, run)
    assert not (run / PWNED).exists()
    assert "model.safetensors" in message and str(ckpt) in message, message


def _restore_tool():
    from refusion.cli import restore
    return restore


@pytest.fixture
def image(tmp_path) -> Path:
    import numpy as np

    from refusion.data.image_io import write_image

    path = tmp_path / "images" / "photo.png"
    write_image(path, np.random.default_rng(0).random((16, 16, 3)))
    return path


def _weights(run: Path) -> Path:
    return run / "model" / "diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("case, expected", [
    ("pickle_with_code", "safetensors"),
    ("truncated", "diffusion_pytorch_model.safetensors"),
    ("missing", "diffusion_pytorch_model.safetensors"),
    # a flipped bit in a weight's value: only the checksums of model/checksums.json can see it
    ("bit_flip", "diffusion_pytorch_model.safetensors' is corrupt: sha256"),
    ("recipe_with_object_tag", "recipe.yml"),
    ("config_of_another_width", "model"),
])
def test_damaged_or_hostile_run_weights_are_refused_by_restore(run, image, tmp_path, capsys, case, expected):
    weights = _weights(run)
    if case == "pickle_with_code":
        weights.unlink()
        torch.save({"w": CodeCarrier(run / PWNED)}, weights.with_suffix(".bin"))
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif case == "missing":
        weights.unlink()
    elif case == "bit_flip":
        raw = bytearray(weights.read_bytes())
        raw[-5] ^= 0x40
        weights.write_bytes(bytes(raw))
    elif case == "recipe_with_object_tag":
        (run / "recipe.yml").write_text(f"task: !!python/object/apply:os.system ['touch {run / PWNED}']\n")
    else:
        config = json.loads((run / "model" / "config.json").read_text())
        config["width"] = 16
        (run / "model" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    code = _restore_tool().main([str(image), "-o", str(out), "--model", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "restore: error:" in err and expected in err, err
    assert not (run / PWNED).exists()
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- checksums of the published weights


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_published_weights_carry_the_sha256_of_every_file(pristine):
    manifest = json.loads((pristine / "model" / WEIGHTS_MANIFEST).read_text())
    files = sorted(p.name for p in (pristine / "model").iterdir() if p.name != WEIGHTS_MANIFEST)
    assert sorted(manifest["files"]) == files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert all(manifest["files"][name] == _sha256(pristine / "model" / name) for name in files)


@pytest.mark.parametrize("name", ["config.json", "diffusion_pytorch_model.safetensors"])
def test_a_flipped_bit_in_run_weights_is_named_by_every_loader(run, name):
    from refusion.inference.loading import load_network
    from refusion.inference.model import load_model

    path = run / "model" / name
    expected = _sha256(path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01             # one low bit: a valid file with a slightly different value
    path.write_bytes(bytes(raw))
    found = _sha256(path)
    message = (f"weight file '{path}' is corrupt: sha256 {found} found, {expected} expected (recorded in "
               f"'{run / 'model' / WEIGHTS_MANIFEST}')")
    loaders = [lambda: rd.load_model_dir(run / "model"), lambda: rd.load_autoencoder_run(run),
               lambda: load_network(run / "model"), lambda: load_model(run).network]
    for load in loaders:
        with pytest.raises(CorruptWeightsError) as info:
            load()
        assert message in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, rd.RunDirError)


@pytest.mark.parametrize("damage, expected", [
    ("delete_listed", "diffusion_pytorch_model.safetensors' listed in"),
    ("manifest_cut", "checksums.json' is corrupt: not a JSON object with a 'files' mapping"),
    ("manifest_list", "checksums.json' is corrupt: not a JSON object with a 'files' mapping"),
])
def test_a_broken_weights_manifest_or_missing_listed_file_is_named(run, damage, expected):
    model = run / "model"
    if damage == "delete_listed":
        (model / "diffusion_pytorch_model.safetensors").unlink()
    elif damage == "manifest_cut":
        raw = (model / WEIGHTS_MANIFEST).read_bytes()
        (model / WEIGHTS_MANIFEST).write_bytes(raw[: len(raw) // 2])
    else:
        (model / WEIGHTS_MANIFEST).write_text('{"files": ["config.json"]}')
    with pytest.raises(CorruptWeightsError, match=expected.replace(".", r"\.")):
        rd.load_model_dir(model)


def test_weights_without_a_manifest_still_load(run):
    (run / "model" / WEIGHTS_MANIFEST).unlink()       # e.g. a run written before checksums existed
    assert type(rd.load_model_dir(run / "model")).__name__ == "NAFNet"
