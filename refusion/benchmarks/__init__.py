"""The benchmarks run by ``tools/benchmark.py``, one module per subject.

Each ``bench_<name>(state) -> dict`` takes the tool's settings (``state``: full, smoke, repeats,
compile, run, networks, and the results so far) and returns JSON-ready results; functions run in
fresh processes for peak-RSS measurements are module-level and addressed as
``refusion.benchmarks.<module>:<function>``.

- common: the benchmarked networks and their inputs, tables, PSNR, the GEMM yardstick.
- networks: forward variants (fp32, bf16, channels_last, compile), forward+backward, memory;
  LayerNorm2d implementations.
- sampling: scheduler overhead per step, whole sampling runs.
- half_path: the pipeline's half=True path against fp32 and autocast; its accuracy on trained runs.
- training: training step, loss curves, data loader, OpenMP threading.
- large_image: 6000x4000 latent and tiled paths, tiled NAFNet, tiled against whole.
- layers: each convolution and LayerNorm alone, summed by kind, against the whole forward.
- ensemble: the x8 self-ensemble's network calls and time against plain restore/sample; colour fix time.
- posterior: sample_posterior's K samples as network batches against K separate sample calls.
- contention: a training step and a restore alone and next to a 2-thread CPU process, per thread setting.
- app_start: seconds from `refusion app` starting to its first page; `refusion --help` and `app --help`.
- clean_exits: how many two-process launches of `refusion restore` / `refusion evaluate` end non-zero.
- gpu_check: the CUDA check of `refusion gpu-check` (cuda tests, DDP on one GPU, compile, figures).
"""
