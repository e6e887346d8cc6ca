"""Speed and memory of the toolkit on this machine, as JSON (never as tests).

    python tools/benchmark.py                      # every benchmark, quick mode (a few minutes)
    python tools/benchmark.py networks layernorm --out bench.json
    python tools/benchmark.py --full --out docs/benchmarks/DATE.json

Every comparison is timed side by side in the same run (variants interleaved round-robin, median
of ``--repeats`` runs), next to a GEMM rate measured in the same run, and the JSON records the
machine (torch version, threads, CPU model, load average before and after). Quick mode keeps the
target configurations (NAFNet w32, the Refusion noise network w64) at full size and shrinks the
rest; ``--full`` runs every network at its paper size, torch.compile and the larger images.
``--smoke`` shrinks everything (for checking the tool itself; its numbers mean nothing).

The benchmarks themselves live in the refusion.benchmarks package (one module per subject); this
script picks them, runs them and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from refusion.cli import common

# name -> "module:function" of refusion.benchmarks, imported when the benchmark runs (`--help` stays fast)
BENCHMARKS = {
    "threading": "training:bench_threading", "gemm": "common:bench_gemm", "networks": "networks:bench_networks",
    "layernorm": "networks:bench_layernorm", "scheduler": "sampling:bench_scheduler",
    "sampling": "sampling:bench_sampling", "half_path": "half_path:bench_half_path",
    "train_step": "training:bench_train_step", "dataloader": "training:bench_dataloader",
    "large_image": "large_image:bench_large_image", "allocator": "allocator:bench_allocator",
    "block_ops": "block_ops:bench_block_ops", "layers": "layers:bench_layers", "official": "official:bench_official",
    "ensemble": "ensemble:bench_ensemble", "posterior": "posterior:bench_posterior",
    "contention": "contention:bench_contention", "app_start": "app_start:bench_app_start",
    "clean_exits": "clean_exits:bench_clean_exits",
}


def benchmark_function(name: str):
    """The ``bench_<name>(state) -> dict`` function of a BENCHMARKS entry."""
    import importlib

    entry = BENCHMARKS[name]
    if callable(entry):
        return entry
    module, function = entry.split(":")
    return getattr(importlib.import_module(f"refusion.benchmarks.{module}"), function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="*", help=f"any of: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--full", action="store_true", help="paper-size configs, compile, larger images")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the tool (numbers meaningless)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (implied by --full)")
    parser.add_argument("--onnx", action="store_true",
                        help="networks benchmark: also time the ONNX export under ONNX Runtime (needs .[onnx])")
    parser.add_argument("--run", help="a trained sde run directory (sampling and half_path benchmarks)")
    parser.add_argument("--regressor-run", help="a trained regressor run directory (half_path accuracy)")
    parser.add_argument("--images", help="a folder of LQ images for the half_path accuracy (default: one synthetic)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc malloc alone in this process (the library tunes it on CPU by default)")
    parser.add_argument("--networks", nargs="+", metavar="NAME",
                        help="networks benchmark: only these (names of refusion.benchmarks.common.NETWORKS)")
    parser.add_argument("--launches", type=int, default=None, metavar="N",
                        help="clean_exits benchmark: two-process launches per command (default 50; 2 with --smoke)")
    common.add_shared(parser, "threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.launches is not None and args.launches < 1:
        parser.error(f"--launches must be >= 1, got {args.launches}")
    common.apply_shared(parser, args)
    from refusion.benchmarks import perf
    from refusion.benchmarks.common import NETWORKS
    from refusion.inference.allocator import tune_malloc

    unknown = [n for n in args.networks or () if n not in NETWORKS]
    if unknown:
        parser.error(f"argument --networks: unknown network(s) {unknown}; choose from {list(NETWORKS)}")
    selected = args.benchmarks or list(BENCHMARKS)
    # measure what users get: the pipeline, restore and training tune malloc on CPU
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    state = {"full": args.full, "smoke": args.smoke, "repeats": args.repeats, "compile": args.compile or args.full,
             "onnx": args.onnx,
             "run": args.run, "regressor_run": args.regressor_run, "images": args.images,
             "networks": args.networks, "launches": args.launches, "results": {}}
    settings = {**{k: v for k, v in state.items() if k != "results"}, "malloc_tuned": malloc_tuned}
    report = {"machine": perf.machine_info(), "settings": settings,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "benchmarks": state["results"], "seconds": {}}
    print(json.dumps(report["machine"]))
    for name in selected:
        start = time.perf_counter()
        try:
            state["results"][name] = benchmark_function(name)(state)
        except Exception as exc:  # noqa: BLE001 - keep the other benchmarks' results
            import traceback

            traceback.print_exc()
            state["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["seconds"][name] = time.perf_counter() - start
        if args.out:  # partial results survive an interrupted run
            _write(args.out, report)
    report["load_average_end"] = perf.machine_info().get("load_average")
    if args.out:
        _write(args.out, report)
        print(f"\nwrote {args.out}")
    return 0


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(report), indent=1, default=str, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finite(value):
    """JSON has no inf/nan: write them as strings ("inf" for identical outputs' PSNR)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
