"""Measuring tools for the benchmark, and the inference preparation the pipeline can adopt.

- :func:`gemm_gflops`: the machine's matrix-multiply rate, the yardstick for network throughput.
- :func:`count_flops`: FLOPs of one call, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products; element-wise work is not counted, as is usual).
- :func:`time_side_by_side`: medians of several timed calls of several functions, interleaved
  round-robin, so that load from other processes hits every variant alike.
- :func:`run_with_peak_rss`: run a function in a fresh Python process and report its peak
  resident memory (what a user's process would need), plus its JSON result.
- :func:`prepare_for_inference`: eval mode, no gradients, optional channels_last / dtype cast /
  ``torch.compile``.
- :func:`activate_skip_gains`: give skip-initialised networks non-zero block gains, so an untrained
  network's output depends on its blocks.
- :func:`machine_info`: what the numbers were measured on.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from refusion.inference.capability import cpu_flags, native_bf16

__all__ = ["activate_skip_gains", "gemm_gflops", "gemm_probe", "count_flops", "time_side_by_side", "median_time", "run_with_peak_rss",
           "peak_rss_bytes", "prepare_for_inference", "machine_info", "parameter_count"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def gemm_gflops(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5,
                device: str | torch.device = "cpu") -> float:
    """Median rate of a ``size`` x ``size`` x ``size`` matrix product in GFLOP/s (2 n^3 FLOPs each)."""
    _check_positive_int("size", size)
    _check_positive_int("repeats", repeats)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    seconds = median_time(lambda: torch.mm(a, b), repeats=repeats, warmup=1)
    return 2.0 * size ** 3 / seconds / 1e9


def gemm_probe(dtype: torch.dtype = torch.float32, size: int = 1024, products: int = 16,
               device: str | torch.device = "cpu") -> tuple[Callable[[], Any], int]:
    """``(fn, flops)``: ``fn()`` runs ``products`` matrix products of ``size``^3 (``flops`` in all).

    Timed in the same ``time_side_by_side`` call as the networks, it gives a GEMM rate measured
    under the same conditions (clock, other load) as each network run, interleaved with them.
    """
    _check_positive_int("size", size)
    _check_positive_int("products", products)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)

    def fn():
        for _ in range(products):
            torch.mm(a, b)

    return fn, 2 * size ** 3 * products


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None) -> int:
    # torch's own formula ignores ``groups`` and counts a depthwise conv's backward C times too
    # many; each requested gradient (input, weight) costs what the forward costs, and the weight
    # shape (C_out, C_in / groups, kh, kw) already accounts for the groups
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs counted while ``fn()`` runs (a forward, or a forward and ``backward()``).

    Uses FlopCounterMode with a corrected convolution-backward formula (grouped convolutions).
    """
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        fn()
    return int(counter.get_total_flops())


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_side_by_side(fns: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1
                      ) -> dict[str, dict[str, Any]]:
    """Time every function ``repeats`` times, interleaved (A B C A B C ...), after ``warmup`` calls each.

    Returns ``{name: {"median_s", "min_s", "runs_s"}}``. Interleaving spreads slow-downs caused by
    other processes over every variant instead of biasing whichever ran during the busy spell.
    """
    if not fns:
        raise ValueError("time_side_by_side needs at least one function")
    _check_positive_int("repeats", repeats)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _synchronize()
            start = time.perf_counter()
            fn()
            _synchronize()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(r), "min_s": min(r), "runs_s": r} for name, r in runs.items()}


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return time_side_by_side({"fn": fn}, repeats, warmup)["fn"]["median_s"]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def run_with_peak_rss(target: str, kwargs: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                      threads: int | None = None, env: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Call ``module:function(**kwargs)`` in a fresh Python process; return its peak RSS and result.

    ``module`` is an importable module name or the path of a ``.py`` file (e.g. a tool script).

    The function must return something JSON can encode. Returns ``{"result", "peak_rss_bytes",
    "baseline_rss_bytes", "wall_s"}``: ``baseline_rss_bytes`` is the peak after importing the
    target module, before the call. A failing child raises RuntimeError with its
    stderr; ``timeout`` (seconds) raises subprocess.TimeoutExpired. ``threads`` sets the child's
    torch threads; ``env`` sets environment variables (e.g. OMP_WAIT_POLICY, read at start-up; None removes one).
    """
    module, sep, function = target.rpartition(":")
    if not sep or not module or not function:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    payload = json.dumps({"module": module, "function": function, "kwargs": dict(kwargs or {}),
                          "threads": threads})
    env = {**os.environ, **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    # the child imports the same code as this process, whatever its working directory
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    # the child loads this file on its own (not the whole package): start-up stays cheap and the
    # baseline holds only torch
    child = (f"import importlib.util as u; s = u.spec_from_file_location('_perf_child', {os.path.abspath(__file__)!r}); "
             "m = u.module_from_spec(s); s.loader.exec_module(m); m._child_main()")
    proc = subprocess.run([sys.executable, "-c", child],
                          input=payload, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{target} failed in a subprocess (exit code {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@perf@@")]
    if not lines:
        raise RuntimeError(f"{target}: the subprocess printed no result; stdout tail:\n{proc.stdout[-2000:]}")
    report = json.loads(lines[-1][len("@@perf@@"):])
    report["wall_s"] = wall
    return report


def _load_module(name: str):
    if not name.endswith(".py"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location("_perf_target", name)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_perf_target"] = module
    spec.loader.exec_module(module)
    return module


def _child_main() -> None:
    """Entry point of :func:`run_with_peak_rss`'s subprocess: JSON request on stdin, tagged JSON on stdout."""
    request = json.loads(sys.stdin.read())
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    fn = getattr(_load_module(request["module"]), request["function"])
    baseline = peak_rss_bytes()
    result = fn(**request["kwargs"])
    out = {"result": result, "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline}
    sys.stdout.write("@@perf@@" + json.dumps(out) + "\n")
    sys.stdout.flush()


def prepare_for_inference(model: nn.Module, *, channels_last: bool = False, dtype: torch.dtype | str | None = None,
                          compile: bool = False, compile_mode: str | None = None) -> nn.Module:
    """Put ``model`` in eval mode without gradients, optionally in channels_last layout, cast to
    ``dtype`` (weights and buffers; callers then feed inputs of that dtype) and compiled with
    ``torch.compile``. The module is changed in place; the returned module is the one to call
    (the compiled wrapper when ``compile=True``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    model.eval()
    model.requires_grad_(False)
    if dtype is not None:
        # nn.Module.to: diffusers' ModelMixin.to warns about float32-only modules, which ours do not have
        nn.Module.to(model, dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, mode=compile_mode, dynamic=False)
    return model


def activate_skip_gains(model: nn.Module, std: float) -> nn.Module:
    """Draw every ``beta``/``gamma`` from N(0, std) (torch's global generator); returns ``model``.

    NAFBlocks start as the identity (skip-init gains at zero), so an untrained network would time,
    export or compare as if its blocks did nothing.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, std)
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (every parameter tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    return cpu_flags(("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")) or []


def machine_info() -> dict[str, Any]:
    """torch version, threads, CPU model and relevant flags, core count, memory, load average."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16("cpu"),      # decides the half path and bf16 mixed precision on CPU
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                                              "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
                   if k in os.environ}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    try:
        info["memory_total_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return info


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32 (JSON-friendly)."""
    return str(dtype).removeprefix("torch.")


def as_dtype(name: str | torch.dtype) -> torch.dtype:
    """torch dtype from a name such as 'bfloat16'; errors list the allowed names."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of measurements."""
    if not values:
        raise ValueError("summarize needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
