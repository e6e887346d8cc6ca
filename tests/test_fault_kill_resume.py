"""Kill anywhere, lose nothing: SIGKILL a training process at random moments and resume it.

Every training attempt is a real process running the command line of tools/train_regressor.py.
Starting Python and importing torch costs 10-20 s on a loaded machine, so the processes are forked
from a "zygote": a helper process that imports the package once and forks one child per attempt.
The zygote itself never computes (fork-safe); each child runs ``cli.main`` and is killed by the test
with SIGKILL, either after a random delay or as soon as a checkpoint's temporary directory appears
(a kill in the middle of writing a checkpoint).

After every kill: each complete checkpoint verifies (sha256 of every file) and its weights load, the
newest complete checkpoint never goes backwards, and the run's model/ folder is complete or
recoverable. Each following attempt resumes from the newest complete checkpoint (its log says
which). The final weights are bitwise those of an uninterrupted run.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from refusion.training.run_dir import OLD_PREFIX, list_checkpoints, load_model_dir, verify_checkpoint
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
TOTAL_ITERS = 40
CHECKPOINT_EVERY = 2
MIN_KILLS = 12          # the test is meaningless with fewer; the loop normally reaches MAX_KILLS
MAX_KILLS = 24

ZYGOTE = r"""
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
from refusion.cli.train import main
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = main(job["argv"], task="regressor")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status)
    print(json.dumps({"signal": os.WTERMSIG(status) if killed else None,
                      "code": None if killed else os.WEXITSTATUS(status)}), flush=True)
"""


class Zygote:
    """A process that forks one training process per request (see the module docstring)."""

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "ready"

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        assert line[0] == "pid", line
        return int(line[1])

    def result(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def wait_for_temporary_checkpoint(ckpt_root: Path, pid: int, limit_s: float) -> bool:
    """Poll until a checkpoint temporary directory exists (True) or the child is gone / time is up."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if any(name.startswith(".tmp-step_") for name in os.listdir(ckpt_root)):
                return True
        except FileNotFoundError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.0002)
    return False


def check_run_state(run: Path) -> int:
    """Invariants after a kill; returns the newest complete checkpoint step (0 when none)."""
    steps = []
    for ckpt in list_checkpoints(run):
        meta = verify_checkpoint(ckpt)          # raises on a half-written or corrupt checkpoint
        load_file(str(ckpt / "model.safetensors"))
        steps.append(meta["step"])
    model = run / "model"
    if model.exists():
        load_model_dir(model)
    elif steps:
        # only between the two renames of a publish: the previous version waits under .tmp-old-model
        assert (run / (OLD_PREFIX + "model")).is_dir(), f"{run} has checkpoints but no model/"
    return max(steps, default=0)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_train=4, n_val=0)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(data, tmp_path):
    rng = random.Random(20240607)
    recipes = {}
    for name in ("reference", "killed"):
        settings = tiny_recipe_dict("regressor", data, tmp_path / name, total_iters=TOTAL_ITERS,
                                    checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=2, ema_decay=0.9)
        recipes[name] = tmp_path / f"{name}.yml"
        recipes[name].write_text(yaml.safe_dump(settings))
    zygote = Zygote()
    try:
        started = time.monotonic()
        zygote.start([str(recipes["reference"])], tmp_path / "reference.log")
        assert zygote.result() == {"signal": None, "code": 0}, (tmp_path / "reference.log").read_text()
        duration = time.monotonic() - started

        run, ckpt_root = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
        kills = targeted = inside_write = resumes = 0
        newest = 0
        attempt = 0
        while kills < MAX_KILLS and newest < TOTAL_ITERS - CHECKPOINT_EVERY:
            attempt += 1
            log = tmp_path / f"attempt_{attempt:02d}.log"
            argv = [str(recipes["killed"]), "--resume" if newest else "--overwrite"]
            expected_from = newest
            pid = zygote.start(argv, log)
            if attempt % 3 == 0:        # aim at a checkpoint being written
                wait_for_temporary_checkpoint(ckpt_root, pid, limit_s=duration)
                targeted += 1
            else:                       # anywhere, including start-up, resume and pruning
                time.sleep(rng.uniform(0.0, duration / 5))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            outcome = zygote.result()
            text = log.read_text() if log.exists() else ""
            if outcome["signal"] is None:
                assert outcome["code"] == 0, f"attempt {attempt} failed by itself:\n{text[-3000:]}"
                newest = check_run_state(run)
                break                   # it finished before the kill landed
            kills += 1
            if ckpt_root.is_dir() and any(p.name.startswith(".tmp-step_") for p in ckpt_root.iterdir()):
                inside_write += 1       # the kill left a half-written temporary checkpoint behind
            if expected_from and "resumed" in text:
                assert f"from {'step_%08d' % expected_from}" in text, text[-2000:]
                resumes += 1
            step = check_run_state(run)
            assert step >= newest, f"attempt {attempt}: newest checkpoint went back from {newest} to {step}"
            newest = step
        # the last attempt runs to the end
        log = tmp_path / "final.log"
        zygote.start([str(recipes["killed"]), "--resume" if newest else "--overwrite"], log)
        assert zygote.result() == {"signal": None, "code": 0}, log.read_text()[-3000:]
    finally:
        zygote.close()

    print(f"\nSIGKILL: {kills} kills ({targeted} aimed at checkpoint writing, {inside_write} landed "
          f"inside a checkpoint write), {resumes} resumes checked; all survived")
    assert kills >= MIN_KILLS, f"only {kills} kills: the run finished too fast to test anything"
    assert inside_write >= 1, "no kill landed while a checkpoint was being written"
    final = f"checkpoints/step_{TOTAL_ITERS:08d}"
    check_run_state(run)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "reference" / final / name), weights(run / final / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs from the uninterrupted run"
    ref_model = weights(tmp_path / "reference/model/diffusion_pytorch_model.safetensors")
    got_model = weights(run / "model/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ref_model[k], got_model[k]) for k in ref_model)
    assert not [p for p in ckpt_root.iterdir() if p.name.startswith(".tmp-")]
