"""Two "machines" on this host (docs/scaling.md): the multi-node accelerate launch trains what one machine does.

Each machine is its own `accelerate launch --num_machines 2 --machine_rank R` with one process (CPU,
gloo, rendezvous at 127.0.0.1); the reference is the usual 2-process launch on one machine. The
final weights must be equal bit for bit: the two runs have the same two ranks, each rank the same
seed (seed + rank) and the same share of the data, and gloo's all-reduce of two ranks adds the same
two gradients in the same order whether the ranks share a machine or not. One thread per process,
so that no reduction inside a convolution changes its order either. Bits, not a tolerance, because
the code guarantees them on one host: every process builds its network afresh (torch's allocator
aligns each tensor to 64 bytes, so the same kernels run) and never computes on weights read from a
file mapping (tests/same_results.py says why that matters).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import set_seed
from safetensors.torch import load_file

from refusion.config import load_recipe
from refusion.models import build_model

from test_multiprocess import free_port
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240   # one machine waiting forever for the other fails here, not in CI
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
COMMON = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def write_recipe(tmp_path: Path, data: Path, name: str) -> Path:
    recipe = tiny_recipe_dict("sde", data, tmp_path / name, total_iters=3, checkpoint_every=3)
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_two_machines_train_the_weights_of_one_machine(tmp_path):
    data = make_pairs(tmp_path / "pairs")
    script = str(ROOT / "tools" / "train_sde.py")
    one = subprocess.run([*COMMON, "--num_machines", "1", "--main_process_port", str(free_port()), script,
                          str(write_recipe(tmp_path, data, "one_machine"))],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-3000:]

    port, recipe = str(free_port()), str(write_recipe(tmp_path, data, "two_machines"))
    machines = [subprocess.Popen([*COMMON, "--num_machines", "2", "--machine_rank", str(rank),
                                  "--main_process_ip", "127.0.0.1", "--main_process_port", port, script, recipe],
                                 cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    try:
        outputs = [machine.communicate(timeout=TIMEOUT_S) for machine in machines]
    finally:
        for machine in machines:
            machine.kill()
    for rank, (machine, (_, err)) in enumerate(zip(machines, outputs)):
        assert machine.returncode == 0, f"machine {rank}:\n{err[-3000:]}"

    reference, multi = weights(tmp_path / "one_machine"), weights(tmp_path / "two_machines")
    assert reference.keys() == multi.keys()
    for name in reference:
        assert torch.equal(reference[name], multi[name]), name
    # the weights moved: the comparison is between two trainings, not two initialisations
    recipe = load_recipe(recipe)
    set_seed(recipe.seed)
    initial = build_model(recipe.model.name, **recipe.model.args).state_dict()
    assert any(not torch.equal(initial[name], reference[name]) for name in reference)
    meta = json.loads((tmp_path / "two_machines" / "checkpoints" / "step_00000003" / "meta.json").read_text())
    assert meta["num_processes"] == 2 and meta["step"] == 3 and "rng_1.json" in meta["files"]
