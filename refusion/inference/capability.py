"""What the device really does fast: native bfloat16 on this CPU, fp16/bf16 on CUDA.

bfloat16 pays only where the hardware computes it: on a CPU with AVX512-BF16 or AMX-BF16 a bf16
matrix multiply runs 2-3x faster than float32, on an AVX2-only CPU about 90x slower (0.9 against
82 GFLOP/s measured on an AMD EPYC, docs/performance.md), because oneDNN then emulates it. The
half path and bf16 mixed precision ask here first.

oneDNN can be told to use less than the CPU has (``ONEDNN_MAX_CPU_ISA``, read when it starts): with
a cap below its first bfloat16 ISA (AVX2, AVX512_CORE, ...) a bf16-capable CPU emulates bf16 too
(1.0 against 308 GFLOP/s fp32 measured with ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AMX Xeon), so the
cap counts as well as the flags. The same cap is how the float32 fallback is measured on such a CPU.
"""
from __future__ import annotations

import functools
import os
import time

import torch

__all__ = ["native_bf16", "cpu_flags", "cpu_bf16_flags", "bf16_reason", "onednn_isa_cap"]

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# ONEDNN_MAX_CPU_ISA values (oneDNN's dnnl_cpu_isa_t names, case-insensitive) below its first ISA with
# bfloat16 arithmetic; AVX2_VNNI_2, AVX512_CORE_BF16, the FP16/AMX/AVX10 ones, DEFAULT and ALL keep it
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_flags(wanted: tuple[str, ...]) -> list[str] | None:
    """Which of ``wanted`` the CPU flags in /proc/cpuinfo list (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        return None
    return None


def cpu_bf16_flags() -> list[str] | None:
    """The bf16 instruction flags of this CPU (None where they cannot be read)."""
    return cpu_flags(BF16_FLAGS)


def onednn_isa_cap() -> str | None:
    """The ISA oneDNN is capped at (``ONEDNN_MAX_CPU_ISA``, or its older name ``DNNL_MAX_CPU_ISA``),
    upper case; None when neither is set."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.upper()
    return None


@functools.lru_cache(maxsize=None)
def _cpu_native_bf16() -> bool:
    if onednn_isa_cap() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    flags = cpu_bf16_flags()
    if flags is not None:
        return bool(flags)
    return _bf16_matmul_not_slower()


def _bf16_matmul_not_slower(size: int = 256, repeats: int = 5) -> bool:
    """Where the CPU flags are unknown: is a bf16 matmul at most as slow as float32? (a few ms)"""
    def best(dtype):
        a = torch.rand(size, size).to(dtype)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) <= best(torch.float32)


def native_bf16(device: torch.device | str) -> bool:
    """True when bfloat16 compute is native on ``device`` (CUDA: ``is_bf16_supported``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_native_bf16()
    return True


def bf16_reason(device: torch.device | str) -> str:
    """Why bf16 is slow on ``device`` (for warnings and errors)."""
    capability = torch.backends.cpu.get_cpu_capability()
    cap = onednn_isa_cap()
    if cap in ONEDNN_ISAS_WITHOUT_BF16 and cpu_bf16_flags():
        return (f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off this CPU's bfloat16 instructions: bfloat16 is "
                f"emulated and runs many times slower than float32")
    return (f"this CPU has no native bfloat16 (no {' / '.join(BF16_FLAGS)}; torch reports {capability}): "
            f"bfloat16 is emulated there and runs many times slower than float32")
