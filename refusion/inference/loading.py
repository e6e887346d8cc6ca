"""Reading networks and their settings from training runs and saved directories.

- :func:`read_run_task`: the ``task:`` of a run directory's recipe.yml.
- :func:`load_network`: a network saved with ``save_pretrained`` (safetensors only, checksums
  verified, non-finite weights refused), copied out of the file mapping.
- :func:`run_train_patch`, :func:`default_tlc`: the TLC sizes a run or an imported folder asks for.

Which kind of model a folder holds is decided in one place, refusion.inference.model.load_model; what a
network can do is declared by the network (refusion.models.capabilities).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from refusion.checksums import verify_weights_dir

__all__ = ["WEIGHTS_NAME", "read_run_task", "load_network", "own_memory", "weights_dir", "run_train_patch",
           "INFERENCE_FILE", "read_inference_defaults", "default_tlc"]

def read_run_task(run_dir: Path) -> str:
    """The ``task:`` of a training run directory's recipe.yml (sde | regressor | latent_autoencoder | distill:
    a distilled student, an sde model)."""
    recipe_path = run_dir / "recipe.yml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{recipe_path} not found: {run_dir} is neither a training run directory "
                                f"(recipe.yml, model/) nor a saved pipeline (model_index.json)")
    try:
        with open(recipe_path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)            # safe loader: object tags are refused
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{recipe_path}: cannot read the recipe ({type(exc).__name__}: {exc})") from exc
    task = recipe.get("task") if isinstance(recipe, dict) else None
    if task not in ("sde", "regressor", "latent_autoencoder", "distill"):
        raise ValueError(f"{recipe_path}: task must be sde, regressor, latent_autoencoder or distill, got {task!r}")
    return task


WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def load_network(model_dir: Path):
    """A network saved with save_pretrained: config.json "_class_name" picks the class in MODELS.

    Weights are read from safetensors only (a pickled .bin/.pt beside them is never opened);
    unreadable, truncated or mismatched weights and non-finite values are a ValueError naming the
    file. A checksums.json in the folder is verified first (a flipped bit raises
    refusion.errors.CorruptWeightsError, a ValueError naming the file).
    """
    from refusion.models import MODELS

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: expected a network saved with save_pretrained")
    verify_weights_dir(model_dir)
    try:
        with open(config_path, encoding="utf-8") as f:
            class_name = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{config_path}: not a readable network config ({exc})") from exc
    if class_name not in MODELS:
        raise ValueError(f"{config_path}: _class_name {class_name!r} is not a refusion network; "
                         f"known: {sorted(MODELS)}")
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file() and not weights.with_name(WEIGHTS_NAME + ".index.json").is_file():
        raise FileNotFoundError(f"{weights} is missing: weights are read from safetensors only "
                                f"(pickled .bin/.pt files are never loaded)")
    try:
        net = MODELS[class_name].from_pretrained(str(model_dir), use_safetensors=True)
    except Exception as exc:  # truncated file, wrong shapes for the config, ...: name the files
        raise ValueError(f"cannot load the {class_name} network from {weights} with {config_path}: "
                         f"{type(exc).__name__}: {exc}") from exc
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{weights}: tensor {name!r} holds NaN or Inf values (corrupt weights)")
    return own_memory(net.eval())


def own_memory(module: torch.nn.Module) -> torch.nn.Module:
    """Copy loaded weights out of the file mapping into freshly allocated (aligned) memory.

    safetensors tensors can sit at odd offsets of a memory-mapped file; CPU kernels then take
    other vectorisation paths and round differently, so a loaded network would not reproduce the
    saved one bit for bit. The copy also detaches the weights from the file on disk.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
    return module


def weights_dir(run_dir: Path, weights: str) -> Path:
    """model/ (final, EMA when on) or best/ (best validation PSNR) of a run directory."""
    if weights not in ("model", "best"):
        raise ValueError(f"weights must be 'model' (final weights) or 'best' (best validation PSNR), got {weights!r}")
    return run_dir / weights


def run_train_patch(path: Path) -> int | None:
    """data.train.gt_size of a run directory's recipe (the TLC training size), when there is one."""
    try:
        with open(Path(path) / "recipe.yml", encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
        size = recipe["data"]["train"]["gt_size"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return int(size) if isinstance(size, int) else None


# written by `refusion import` beside an imported regressor: how the official model is meant to run
INFERENCE_FILE = "inference.json"


def read_inference_defaults(folder: Path) -> dict:
    """``inference.json`` of a model folder ({} when absent), e.g. {"tlc": [256, 256]}."""
    path = Path(folder) / INFERENCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    tlc = data.get("tlc")
    if tlc is not None and not (isinstance(tlc, list) and len(tlc) == 2 and all(isinstance(v, int) and v > 0 for v in tlc)):
        raise ValueError(f"{path}: 'tlc' must be null or [height, width] of the training patch, got {tlc!r}")
    return data


def default_tlc(path: Path) -> tuple[int, int] | None:
    """The TLC training size a model folder asks for (an imported NAFNetLocal / BaselineLocal), else None."""
    tlc = read_inference_defaults(path).get("tlc")
    return tuple(tlc) if tlc else None
