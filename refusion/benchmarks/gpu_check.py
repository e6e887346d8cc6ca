"""The check of the CUDA paths on one GPU (`refusion gpu-check`, tools/gpu_check.py), in under 8 minutes.

Steps, each timed and reported in one JSON table (a failing step is reported and the next one runs):

1. ``cuda_tests``: the tests marked ``cuda`` (tests/test_cuda.py: sampling against the CPU, the half
   path, tiled and latent restores, training steps in fp32 / bf16 / fp16 with gradient scaling).
2. ``ddp_one_gpu``: DistributedDataParallel with two processes on the one GPU (gloo: NCCL refuses two
   ranks on one device), three steps of the noise network on half batches each, against one
   process on the whole batches; the weights must agree within float32 tolerance.
3. ``compile``: ``torch.compile`` of the noise network: compile time, compiled against eager output,
   eager and compiled forward times.
4. ``benchmarks``: GEMM TFLOP/s (fp32, TF32, fp16, bf16), the Refusion noise network's forward at
   256x256 in fp32 and in the half path, 10 ``mr_sde`` steps of ``refusion.sample``, a training step
   per precision.

Only the step list (:data:`STEPS`) is needed for ``--dry-run``; nothing here imports torch at module level.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable

from refusion.benchmarks.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# seconds each step is expected to need on one GPU (8 minutes in all); the tests are stopped at theirs
BUDGET_S = {"cuda_tests": 220, "ddp_one_gpu": 60, "compile": 100, "benchmarks": 100}
STEPS: dict[str, str] = {
    "cuda_tests": "pytest -m cuda tests/test_cuda.py: sampling vs CPU, half path, tiled and latent restores, "
                  "training in fp32/bf16/fp16 (gradient scaling)",
    "ddp_one_gpu": "DDP, 2 processes on GPU 0 (gloo), 3 steps of the noise network vs 1 process on the whole batches",
    "compile": "torch.compile of the Refusion noise network (w64): compile time, output vs eager, forward times",
    "benchmarks": "GEMM fp32/TF32/fp16/bf16, noise network w64 256x256 fp32 and half, refusion.sample mr_sde 10 "
                  "steps, training step fp32/bf16/fp16 autocast, each with and without channels_last images, and "
                  "bf16 + channels_last + torch.compile (the train.channels_last / train.compile keys)",
}


def describe() -> list[dict]:
    """The steps with their time budgets (what --dry-run prints)."""
    return [{"step": name, "what": what, "budget_s": BUDGET_S[name]} for name, what in STEPS.items()]


def run_check(out_dir: Path, steps: list[str] | None = None) -> dict:
    """Run the steps on the current CUDA device; returns the report (also written to out_dir/report.json)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": _machine(torch), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}
    functions: dict[str, Callable[[Path], dict]] = {"cuda_tests": _cuda_tests, "ddp_one_gpu": _ddp_one_gpu,
                                                    "compile": _compile, "benchmarks": _benchmarks}
    for name in steps or list(STEPS):
        start = time.perf_counter()
        try:
            result, status = functions[name](out_dir), "ok"
            if isinstance(result, dict) and result.get("failed"):
                status = "failed"
        except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others' results
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
        report["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1), "result": result}
        (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def _machine(torch) -> dict:
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"gpu": props.name, "gpu_index": index, "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "capability": list(torch.cuda.get_device_capability(index)), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16": torch.cuda.is_bf16_supported()}


def _cuda_tests(out_dir: Path) -> dict:
    junit = out_dir / "cuda_tests.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_cuda.py"), f"--junitxml={junit}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=BUDGET_S["cuda_tests"],
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    problems = [f"{case.get('name')}: {(child.get('message') or '')[:300]}" for case in suite.iter("testcase")
                for child in case if child.tag in ("failure", "error", "skipped")]
    return {**counts, "failed": counts["failures"] + counts["errors"] > 0 or counts["tests"] == 0,
            "not_passed": problems, "exit_status": proc.returncode, "output_tail": proc.stdout[-1500:]}


def _ddp_one_gpu(out_dir: Path) -> dict:
    return ddp_matches_one_process("cuda", out_dir)


def ddp_matches_one_process(device_type: str, out_dir: Path) -> dict:
    """Two gloo ranks on one device (``cuda``: GPU 0; ``cpu``) against one process: the weights after
    three steps, their largest difference and whether it is within float32 tolerance."""
    import torch
    import torch.multiprocessing as mp

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / "ddp_rank0.pt"
    mp.spawn(_ddp_worker, args=(2, free_port(), device_type, str(weights_path)), nprocs=2, join=True)
    ddp = torch.load(weights_path, map_location="cpu", weights_only=True)
    single = _train_steps(_device(device_type), rank=0, world=1)
    worst = max((ddp[k] - single[k]).abs().max().item() for k in single)
    return {"processes": 2, "backend": "gloo", "device": str(_device(device_type)), "steps": 3,
            "max_abs_weight_difference": worst, "tolerance": 1e-4, "failed": not worst < 1e-4}


def _device(device_type: str):
    import torch

    return torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")


def _ddp_worker(rank: int, world: int, port: int, device_type: str, weights_path: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        weights = _train_steps(_device(device_type), rank=rank, world=world)
        if rank == 0:
            torch.save(weights, weights_path)
    finally:
        dist.destroy_process_group()


def _train_steps(device, *, rank: int, world: int) -> dict:
    """Three SGD steps of a small noise network on fixed batches of 4; each of ``world`` ranks takes its
    share of every batch (DDP averages the gradients, so the update is the whole batch's)."""
    import torch

    from refusion.benchmarks.perf import activate_skip_gains
    from refusion.models import ConditionalNAFNet

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    net = activate_skip_gains(ConditionalNAFNet(width=8, enc_blk_nums=[1, 1], middle_blk_num=1,
                                                dec_blk_nums=[1, 1]), 0.5).to(device)
    ids = [device.index] if device.type == "cuda" else None
    module = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids) if world > 1 else net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, mu, target = (torch.rand(4, 3, 32, 32, generator=g) for _ in range(3))
        t = torch.randint(1, 100, (4,), generator=g)
        share = slice(rank * 4 // world, (rank + 1) * 4 // world)
        out = module(x[share].to(device), mu[share].to(device), t[share].to(device))
        loss = (out - target[share].to(device)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _compile(out_dir: Path) -> dict:
    import torch

    from refusion.benchmarks import perf
    from refusion.benchmarks.common import build_network, network_inputs

    net, _ = build_network("ConditionalNAFNet-w64-Refusion", True)
    net = net.cuda().eval().requires_grad_(False)
    inputs = tuple(x.cuda() for x in network_inputs("ConditionalNAFNet-w64-Refusion", 256))
    with torch.inference_mode():
        eager = net(*inputs)
        compiled = torch.compile(net, dynamic=False)
        start = time.perf_counter()
        out = compiled(*inputs)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        times = perf.time_side_by_side({"eager": lambda: _synced(net, inputs), "compiled": lambda: _synced(compiled, inputs)},
                                       repeats=10)
    difference = (out.float() - eager.float()).abs().max().item()
    return {"network": "ConditionalNAFNet-w64-Refusion", "input": [1, 3, 256, 256], "compile_s": compile_s,
            "max_abs_difference_vs_eager": difference, "forward_s": {k: v["median_s"] for k, v in times.items()},
            "failed": not difference < 1e-2}


def _synced(fn, inputs):
    import torch

    out = fn(*inputs)
    torch.cuda.synchronize()
    return out


def _benchmarks(out_dir: Path) -> dict:
    import torch

    import refusion
    from refusion.benchmarks import perf
    from refusion.benchmarks.common import build_network, make_train_step, network_inputs

    result = {"gemm_tflops": {}}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(4096, 4096, device="cuda", dtype=dtype)
        seconds = perf.median_time(lambda: _synced(torch.mm, (a, a)), repeats=10, warmup=2)
        result["gemm_tflops"][name] = 2 * 4096 ** 3 / seconds / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    net, _ = build_network("ConditionalNAFNet-w64-Refusion", True)
    net = net.cuda().eval()
    inputs = tuple(x.cuda() for x in network_inputs("ConditionalNAFNet-w64-Refusion", 256))
    lq = inputs[1]
    with torch.inference_mode():
        result["noise_net_w64_256_forward_s"] = perf.median_time(lambda: _synced(net, inputs), repeats=10, warmup=2)
    for half in (False, True):
        generator = torch.Generator().manual_seed(0)
        seconds = perf.median_time(lambda: refusion.sample(lq, steps=10, model=net, sampler="mr_sde", progress=False,
                                                           half=half, generator=generator), repeats=3, warmup=1)
        result[f"sample_mr_sde_10_steps_256_s{'_half' if half else ''}"] = seconds
    train, first = {}, {}
    batch = {k: torch.rand(4, 3, 128, 128, device="cuda") for k in ("gt", "lq")}
    nhwc = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
    # the recipe keys' comparison (train.channels_last, train.compile) under each autocast precision
    for precision, channels_last, compiled in [(p, c, False) for p in ("fp32", "bf16", "fp16") for c in (False, True)] \
            + [("bf16", True, True)]:
        trainee, _ = build_network("ConditionalNAFNet-w64-Refusion", True)
        trainee = trainee.cuda().train()
        if compiled:
            trainee.compile()
        step = make_train_step(trainee, False, lr=1e-5)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        data = nhwc if channels_last else batch

        def one_step(step=step, dtype=dtype, data=data):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                step(data)
            torch.cuda.synchronize()

        name = precision + ("+channels_last" if channels_last else "") + ("+compile" if compiled else "")
        start = time.perf_counter()
        one_step()                                    # the first step (compile, cuDNN autotuning) apart
        first[name] = time.perf_counter() - start
        train[name] = perf.median_time(one_step, repeats=5, warmup=0)
    result["train_step_first_s"] = first
    result["train_step_w64_4x128_s"] = train
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return result
