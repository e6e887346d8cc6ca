"""The run directory: what training writes and what inference loads.

```
<run>/recipe.yml            the resolved recipe
<run>/model/                save_pretrained of the network (EMA weights when EMA is on)
<run>/scheduler/            save_pretrained of the IRSDEScheduler (sde runs)
<run>/autoencoder/          save_pretrained of the frozen LatentUNet (latent sde runs)
<run>/checkpoints/step_<8-digit step>/   accelerate state + ema + rng + meta.json (sha256 of every file)
<run>/best/                 weights of the best validation PSNR
<run>/logs/  <run>/metrics.jsonl
```

Every directory is written under a temporary name and renamed into place, so after a kill a
checkpoint or weight folder is either complete or absent; ``meta.json`` lists the sha256 of every
file of a checkpoint and :func:`verify_checkpoint` checks them before anything is loaded. The
weight folders (model/, best/, scheduler/, autoencoder/) carry ``checksums.json`` in the same
form, written inside the temporary folder before it is renamed; :func:`verify_weights_dir` checks
it, and every loader of run weights calls it (folders without one, e.g. older runs, load as before).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from refusion.checksums import (
    first_mismatch,
    write_manifest,
    verify_weights_dir,
    write_weights_manifest,
)
from refusion.errors import RunDirError

CHECKPOINTS = "checkpoints"
META = "meta.json"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = TMP_PREFIX + "old-"
STEP_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, corrupt or belongs to another configuration."""


# --- starting a run -------------------------------------------------------------------------


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an existing run without --resume or --overwrite (changes nothing)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: choose one")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and not (resume or overwrite):
        raise RunDirError(
            f"run directory {str(run_dir)!r} already exists and is not empty; pass --resume to "
            "continue it or --overwrite to delete it and start again")
    if resume and not exists:
        raise RunDirError(f"--resume: run directory {str(run_dir)!r} does not exist or is empty")
    if resume:
        latest_checkpoint(run_dir)  # raises a clear error when there is none


def prepare_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Create the run directory (deleting it first with overwrite) and drop stale temporaries."""
    run_dir = Path(run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Clean up after a kill: half-written ``.tmp-*`` entries were never renamed into place.

    The one exception is ``.tmp-old-X`` without ``X``: a kill between the two renames of
    :func:`publish_dir`; it is the previous complete version and is put back.
    """
    for parent in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        if not parent.is_dir():
            continue
        for stale in sorted(parent.glob(TMP_PREFIX + "*")):
            original = parent / stale.name[len(OLD_PREFIX):]
            if stale.name.startswith(OLD_PREFIX) and not original.exists():
                os.replace(stale, original)
            elif stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so that it is either the old or the new version after a kill."""
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop validation lines written after the checkpoint (they will be redone)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


# --- checkpoints ----------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint; a clear error when there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        raise RunDirError(
            f"--resume: no checkpoint in {str(Path(run_dir) / CHECKPOINTS)!r} (checkpoints are written "
            "every train.checkpoint_every steps); start again with --overwrite")
    return found[-1]




def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Hash every file of the (temporary) checkpoint, fsync them and write meta.json last."""
    write_manifest(ckpt_dir, META, meta)
    _fsync_dir(ckpt_dir)


def verify_checkpoint(ckpt_dir: Path) -> dict:
    """Read meta.json and check the sha256 of every listed file; errors name the file."""
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / META
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} has no {META}: it is incomplete")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(meta_path)!r} is not valid JSON ({exc})") from exc
    for key in ("step", "files"):
        if key not in meta:
            raise CheckpointError(f"{str(meta_path)!r} has no {key!r} entry")
    bad = first_mismatch(ckpt_dir, meta["files"])
    if bad is not None:
        path, actual, expected = bad
        if actual is None:
            raise CheckpointError(f"checkpoint file {str(path)!r} listed in {META} is missing")
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is corrupt: sha256 {actual} != {expected} recorded in "
            f"{META}; delete {str(ckpt_dir)!r} to resume from the previous checkpoint")
    return meta


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temporary folder into place (replacing an older version)."""
    tmp, final = Path(tmp), Path(final)
    _fsync_dir(tmp)
    if final.exists():
        old = final.with_name(OLD_PREFIX + final.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        doomed = old.with_name(TMP_PREFIX + "prune-" + old.name)
        os.replace(old, doomed)  # atomic: a kill during the deletion leaves no partial step_X
        shutil.rmtree(doomed, ignore_errors=True)


# --- random number generator state (own safe format: JSON + safetensors, no pickle) ---------


def save_rng_state(directory: Path, rank: int) -> None:
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    info = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    (Path(directory) / f"rng_{rank}.json").write_text(json.dumps(info))
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    save_file(tensors, str(Path(directory) / f"rng_{rank}.safetensors"))


def load_rng_state(directory: Path, rank: int) -> None:
    json_path = Path(directory) / f"rng_{rank}.json"
    tensor_path = Path(directory) / f"rng_{rank}.safetensors"
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise CheckpointError(f"random state file {str(path)!r} is missing (was the run started with "
                                  "a different number of processes?)")
    info = json.loads(json_path.read_text())
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    tensors = load_file(str(tensor_path))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


# --- weights of the run ---------------------------------------------------------------------


def save_pretrained_atomic(obj, destination: Path) -> None:
    """``obj.save_pretrained`` plus checksums.json into a temporary folder, renamed to ``destination``."""
    destination = Path(destination)
    tmp = destination.with_name(TMP_PREFIX + destination.name)
    shutil.rmtree(tmp, ignore_errors=True)
    obj.save_pretrained(str(tmp))
    write_weights_manifest(tmp)
    publish_dir(tmp, destination)


def load_model_dir(path: Path):
    """Load a network saved with save_pretrained; the class comes from config.json's _class_name.

    The folder's checksums.json, when there is one, is verified first (CorruptWeightsError).
    """
    from refusion.models import MODELS

    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise RunDirError(f"{str(path)!r} holds no config.json: not a saved network")
    verify_weights_dir(path)
    class_name = json.loads(config_path.read_text()).get("_class_name")
    if class_name not in MODELS:
        raise RunDirError(f"{str(config_path)!r}: _class_name {class_name!r} is not a known network; "
                          f"known: {sorted(MODELS)}")
    return MODELS[class_name].from_pretrained(str(path))


def load_autoencoder_run(run_dir: Path):
    """The trained autoencoder of a latent_autoencoder run (its model/ folder), or the autoencoder/ folder
    a latent SDE run or pipeline saved beside its network, frozen in eval mode."""
    run_dir = Path(run_dir)
    model_dir = run_dir if (run_dir / "config.json").is_file() else run_dir / "model"
    if not model_dir.is_dir():
        raise RunDirError(f"latent.autoencoder: {str(run_dir)!r} has no model/ folder (nor a config.json of a "
                          "saved autoencoder); train the autoencoder first (tools/train_latent.py)")
    autoencoder = load_model_dir(model_dir)
    autoencoder.requires_grad_(False)
    return autoencoder.eval()


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
