"""Mutation check: one-line bugs in the core modules, each followed by the tests that should catch it.

    python tests/mutation_check.py                 # every mutant; prints killed / survived and the score
    python tests/mutation_check.py --list          # the mutants and the tests each one runs
    python tests/mutation_check.py --only NAME ... # some of them (names as --list prints them)
    python tests/mutation_check.py --which-tests   # run each mutant's tests to the end: which tests fail

The working tree is never edited: refusion/, tests/, recipes/, docs/ and pyproject.toml are copied
into a temporary folder once; each mutant rewrites one line of the copy (its ``old`` text must
occur exactly once in the file, else the mutant is reported as stale), runs pytest there with
PYTHONPATH pointing at the copy, and the file is restored. A mutant is killed when its tests fail
(exit status 1, or an import / collection error); it survives when they pass. The unmutated copy
is run first on the union of the tests: a red baseline stops the check. Exit status 0 when the
score reaches --goal (default 0.95), 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("refusion", "tests", "recipes", "docs", "pyproject.toml")

SCHEDULER_TESTS = ("tests/test_scheduler.py", "tests/test_samplers.py", "tests/test_sampler_laws.py")
DENOISING_TESTS = ("tests/test_denoising_sde.py", "tests/test_scheduler.py")
METRIC_TESTS = ("tests/test_metrics.py",)
NAFNET_TESTS = ("tests/test_models_nafnet.py", "tests/test_models_variants.py")
OBJECTIVE_TESTS = ("tests/test_objective_pins.py", "tests/test_losses.py", "tests/test_objectives.py")
TILING_TESTS = ("tests/test_tiling.py", "tests/test_pipeline.py")
DATA_TESTS = ("tests/test_crops_and_prefixes.py", "tests/test_data.py")
CHECKPOINT_TESTS = ("tests/test_checkpoints.py", "tests/test_crops_and_prefixes.py")
PIPELINE_TESTS = ("tests/test_pipeline.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    slow: bool = False          # its tests include ones marked slow (run only for this mutant)
    equivalent: str = ""        # why a survivor changes no observable behaviour, when it is judged so


def m(name, path, old, new, tests, **kw) -> Mutant:
    return Mutant(name, path, old, new, tuple(tests), **kw)


SAMPLERS = "refusion/schedulers/samplers.py"
IR_SDE = "refusion/schedulers/ir_sde.py"
ENGINE = "refusion/training/engine.py"
WANDB_TEST = "tests/test_trackers.py::test_wandb_offline_stores_the_scalars_and_the_validation_image"
MLFLOW_TEST = "tests/test_trackers.py::test_mlflow_file_store_holds_the_scalars_and_the_validation_image"
MUTANTS = [
    # ---------------------------------------------------------------- samplers
    m("sde noise sign", SAMPLERS, "score)\n    return mean if noise is None else mean - g_sqrt_dt * noise",
      "score)\n    return mean if noise is None else mean + g_sqrt_dt * noise", SCHEDULER_TESTS),
    m("ode drift: full g^2", SAMPLERS, "- 0.5 * g2_dt * score)", "- g2_dt * score)", SCHEDULER_TESTS),
    m("merged theta off by one", SAMPLERS, "thetas_cumsum[t] - thetas_cumsum[s])",
      "thetas_cumsum[t] - thetas_cumsum[s + 1])", SCHEDULER_TESTS),
    m("posterior coef_x0 denominator", SAMPLERS, "coef_x0 = c * (1 - a ** 2) / (1 - b ** 2)",
      "coef_x0 = c * (1 - a ** 2) / (1 - c ** 2)", SCHEDULER_TESTS),
    m("posterior variance denominator", SAMPLERS, "var = (1 - a ** 2) * (1 - c ** 2) / (1 - b ** 2)",
      "var = (1 - a ** 2) * (1 - c ** 2)", SCHEDULER_TESTS),
    m("posterior variance clamp", SAMPLERS, "min=1e-20 * dt", "min=1e-12 * dt", SCHEDULER_TESTS),
    m("eta: 1 - eta instead of 1 - eta^2", SAMPLERS, "(1 - eta ** 2) * var / (1 - b ** 2)",
      "(1 - eta) * var / (1 - b ** 2)", SCHEDULER_TESTS),
    m("eta: x0 correction uses alpha_s", SAMPLERS, "coef_x0 + (coef_x - coef_x_eta) * b",
      "coef_x0 + (coef_x - coef_x_eta) * c", SCHEDULER_TESTS),
    m("eta: noise not scaled", SAMPLERS, "coef_x, std = coef_x_eta, eta * std", "coef_x, std = coef_x_eta, std",
      SCHEDULER_TESTS),
    m("eta: coef_x not widened", SAMPLERS, "coef_x, std = coef_x_eta, eta * std", "coef_x, std = coef_x, eta * std",
      SCHEDULER_TESTS),
    m("mr_sde: no e^-h on y_t", SAMPLERS, '{"coef_x": sigma_ratio * exp_neg_h,', '{"coef_x": sigma_ratio,',
      SCHEDULER_TESTS),
    m("mr_sde: noise std without sqrt", SAMPLERS, "torch.sqrt(1 - c ** 2) * torch.sqrt(decay)}",
      "torch.sqrt(1 - c ** 2) * decay}", SCHEDULER_TESTS),
    m("mr_ode: 1 - e^-2h", SAMPLERS, '"coef_x0": c * (1 - exp_neg_h),', '"coef_x0": c * (1 - exp_neg_h ** 2),',
      SCHEDULER_TESTS),
    m("order 2: weight h / h_prev", SAMPLERS, "h[1:] / (2 * h_prev)", "h[1:] / h_prev", SCHEDULER_TESTS),
    m("order 2: h_prev of the wrong step", SAMPLERS, "h_prev = h[:-1]", "h_prev = h[1:]", SCHEDULER_TESTS),
    m("order 2: extrapolation sign", SAMPLERS, "x0_pred + weight * (x0_pred - x0_prev)",
      "x0_pred + weight * (x0_prev - x0_pred)", SCHEDULER_TESTS),
    m("trailing timesteps: banker's rounding", SAMPLERS, "math.floor(start * (n - i) / n + 0.5)",
      "round(start * (n - i) / n)", DENOISING_TESTS),
    # ---------------------------------------------------------------- schedule and scheduler
    m("cosine schedule offset", IR_SDE, "((x / n) + s) / (1 + s)", "((x / n) + s) / (1 + 2 * s)", SCHEDULER_TESTS),
    m("max_sigma boundary", IR_SDE, "max_sigma / 255 if max_sigma >= 1", "max_sigma / 255 if max_sigma > 1",
      SCHEDULER_TESTS),
    m("dt from eps / 2", IR_SDE, "math.log(eps))", "math.log(eps / 2))", SCHEDULER_TESTS),
    m("sigma_bar without the factor 2", IR_SDE, "(1 - torch.exp(-2 * thetas_cumsum * self.dt)))",
      "(1 - torch.exp(-thetas_cumsum * self.dt)))", SCHEDULER_TESTS),
    m("set_timesteps: banker's rounding", IR_SDE, "math.floor(T * (n - i) / n + 0.5)", "round(T * (n - i) / n)",
      SCHEDULER_TESTS),
    m("set_timesteps: float drift", IR_SDE, "math.floor(T * (n - i) / n + 0.5)", "math.floor(T - i * (T / n) + 0.5)",
      SCHEDULER_TESTS),
    m("x0 from noise multiplies by alpha", IR_SDE, "x0_pred = (sample - mu - sigma_bar * noise_pred) / signal + mu",
      "x0_pred = (sample - mu - sigma_bar * noise_pred) * signal + mu", SCHEDULER_TESTS),
    m("noise from x0 times sigma_bar", IR_SDE, "noise_pred = (sample - mu - signal * (x0_pred - mu)) / sigma_bar",
      "noise_pred = (sample - mu - signal * (x0_pred - mu)) * sigma_bar", SCHEDULER_TESTS),
    m("training t never reaches T", IR_SDE, "torch.randint(1, self.config.num_train_timesteps + 1,",
      "torch.randint(1, self.config.num_train_timesteps,", SCHEDULER_TESTS + ("tests/test_objective_pins.py",)),
    m("initial sample forgets mu", IR_SDE, "return mu + randn_like_batch(mu, generator) * self.stationary_std",
      "return randn_like_batch(mu, generator) * self.stationary_std", SCHEDULER_TESTS),
    m("multistep state kept across loops", IR_SDE, "        self._x0_prev: Optional[Tensor] = None\n",
      "        self._x0_prev = getattr(self, '_x0_prev', None)\n", SCHEDULER_TESTS,
      equivalent="the first step of every schedule has multistep weight 0, so a stale x0_prev is multiplied "
                 "by 0 and replaced; it differs only if that stale prediction held Inf/NaN"),
    m("denoising max_sigma boundary", "refusion/schedulers/denoising_sde.py", "sigma / 255 if sigma >= 1",
      "sigma / 255 if sigma > 1", DENOISING_TESTS),
    # ---------------------------------------------------------------- metrics
    m("psnr peak 255 not squared", "refusion/evaluation/metrics.py", "255.0 * 255.0 / mse", "255.0 / mse",
      METRIC_TESTS),
    m("luma offset", "refusion/evaluation/metrics.py", "(np.dot(unit, Y_WEIGHTS_RGB) + 16.0)",
      "(np.dot(unit, Y_WEIGHTS_RGB) + 0.0)", METRIC_TESTS),
    m("ssim sigma", "refusion/evaluation/metrics.py", "SSIM_SIGMA = 1.5", "SSIM_SIGMA = 1.0", METRIC_TESTS),
    m("ssim C2", "refusion/evaluation/metrics.py", "SSIM_C2 = (0.03 * 255) ** 2", "SSIM_C2 = (0.01 * 255) ** 2",
      METRIC_TESTS),
    # ---------------------------------------------------------------- network blocks
    m("SimpleGate adds", "refusion/models/blocks.py", "        return a * b\n", "        return a + b\n",
      NAFNET_TESTS),
    m("NAFBlock beta skip", "refusion/models/blocks.py", "y = torch.addcmul(inp, x, self.beta)", "y = inp + x",
      NAFNET_TESTS),
    m("time embedding [cos, sin]", "refusion/models/blocks.py", "torch.cat((args.sin(), args.cos()), dim=-1)",
      "torch.cat((args.cos(), args.sin()), dim=-1)", NAFNET_TESTS + ("tests/test_models_unet.py",)),
    m("time modulation scale without 1 +", "refusion/models/blocks.py",
      "x = torch.addcmul(shift_att, x, scale_att + 1)", "x = torch.addcmul(shift_att, x, scale_att)", NAFNET_TESTS),
    # ---------------------------------------------------------------- objectives and losses
    m("sde target from mu", "refusion/training/objectives.py",
      "target = scheduler.optimal_prev_sample(x_t, x0, t, mu=mu)",
      "target = scheduler.optimal_prev_sample(x_t, mu, t, mu=mu)", OBJECTIVE_TESTS),
    m("latents swapped", "refusion/training/objectives.py", "return latent_gt, latent_lq, skips_lq",
      "return latent_lq, latent_gt, skips_lq", OBJECTIVE_TESTS),
    m("sample objective against mu", "refusion/training/objectives.py",
      "loss = MatchingLoss(train_cfg.loss)(_full(output), _full(x0))",
      "loss = MatchingLoss(train_cfg.loss)(_full(output), _full(mu))", OBJECTIVE_TESTS),
    m("sde noise at half scale", "refusion/training/objectives.py", "noise = torch.randn_like(x0)",
      "noise = 0.5 * torch.randn_like(x0)", OBJECTIVE_TESTS),
    m("stage losses averaged", "refusion/training/objectives.py", "loss = torch.stack(stage_losses).sum()",
      "loss = torch.stack(stage_losses).mean()", OBJECTIVE_TESTS),
    m("fft weight dropped", "refusion/training/objectives.py", "l1(pred, target) + fft_weight * fft(pred, target)",
      "l1(pred, target) + fft(pred, target)", OBJECTIVE_TESTS),
    m("replacement decoded with GT skips", "refusion/training/objectives.py",
      '"replaced": self.autoencoder.decode(latent_gt, skips_lq)',
      '"replaced": self.autoencoder.decode(latent_gt, skips_gt)',
      OBJECTIVE_TESTS),
    m("latent regulariser weight", "refusion/training/objectives.py", "LATENT_REGULARISER_WEIGHT = 0.001",
      "LATENT_REGULARISER_WEIGHT = 0.01", OBJECTIVE_TESTS),
    m("latent penalty |s - 1|", "refusion/training/objectives.py", "(mean**2 + (std - 1.0) ** 2).mean()",
      "(mean**2 + (std - 1.0).abs()).mean()", OBJECTIVE_TESTS),
    m("psnr loss in natural log", "refusion/training/losses.py", "(10.0 / math.log(10.0))", "(1.0 / math.log(10.0))",
      OBJECTIVE_TESTS),
    m("charbonnier eps not squared", "refusion/training/losses.py", "torch.sqrt((pred - target) ** 2 + self.eps**2)",
      "torch.sqrt((pred - target) ** 2 + self.eps)", OBJECTIVE_TESTS),
    # ---------------------------------------------------------------- tiling and the pipeline
    m("blend without margin", "refusion/inference/tiling.py", "margin = overlap // 4", "margin = 0", TILING_TESTS),
    m("last tile not aligned to the end", "refusion/inference/tiling.py", "    starts.append(length - tile)\n",
      "    starts.append(starts[-1] + stride)\n", TILING_TESTS),
    m("blend ramp half a pixel early", "refusion/inference/tiling.py",
      "(torch.arange(n_ramp, dtype=torch.float64) + 0.5) / n_ramp",
      "torch.arange(n_ramp, dtype=torch.float64) / n_ramp", ("tests/test_tiling.py",)),
    m("tiles get the whole cond", "refusion/inference/pipeline.py", "net(x_t, mu_t, t_batch, cond=cond_t)",
      "net(x_t, mu_t, t_batch, cond=cond)", PIPELINE_TESTS),
    m("half ignored", "refusion/inference/pipeline.py", "net = InferenceNetwork(noise_fn, mu.device, half=half)",
      "net = InferenceNetwork(noise_fn, mu.device, half=False)", PIPELINE_TESTS),
    m("half: keyword inputs not cast", "refusion/inference/precision.py",
      "kwargs = {k: _cast_args(v, self.dtype) for k, v in kwargs.items()}",
      "kwargs = {k: _cast_args(v, None) for k, v in kwargs.items()}", PIPELINE_TESTS),
    m("report shows the input image", "refusion/evaluation/evaluate.py",
      '_save_png(out_dir / "images" / _slug(method.label) / f"{name}.png", img)',
      '_save_png(out_dir / "images" / _slug(method.label) / f"{name}.png", lqs[name])', ("tests/test_demo.py",),
      slow=True),
    m("demo trains a tenth of its iterations", "refusion/demo.py", 'overrides += [f"train.total_iters={iters}",',
      'overrides += [f"train.total_iters={max(iters // 10, 1)}",', ("tests/test_demo.py",), slow=True),
    # ---------------------------------------------------------------- inference guards and CPU choices
    m("finite check passes a partly finite output", "refusion/inference/precision.py",
      "    if not bool(torch.isfinite(tensor).all()):", "    if not bool(torch.isfinite(tensor).any()):",
      ("tests/test_nonfinite_outputs.py",)),
    m("bf16 benchmark direction", "refusion/inference/capability.py",
      "return best(torch.bfloat16) <= best(torch.float32)", "return best(torch.bfloat16) >= best(torch.float32)",
      ("tests/test_capability.py",)),
    m("busy cpus count the caller", "refusion/inference/threads.py", "max(0.0, statistics.median(counts) - 1)",
      "max(0.0, statistics.median(counts))", ("tests/test_threads.py",)),
    # ---------------------------------------------------------------- evaluation statistics
    m("bootstrap never draws the last image", "refusion/evaluation/statistics.py", "rng.integers(0, n, size=",
      "rng.integers(0, n - 1, size=", ("tests/test_statistics.py",)),
    # ---------------------------------------------------------------- random crops
    m("crop never at the bottom", "refusion/data/paired.py", "spans = (lq_height - lq_size + 1,",
      "spans = (lq_height - lq_size,", DATA_TESTS),
    m("crop never at the right", "refusion/data/paired.py", "lq_width - lq_size + 1, 2, 2, 4)",
      "lq_width - lq_size, 2, 2, 4)", DATA_TESTS),
    m("SR crop: GT left not scaled", "refusion/data/paired.py", "left * s:(left + lq_size) * s]",
      "left:left + lq_size * s]", DATA_TESTS),
    m("synthetic crop never at the right", "refusion/data/synthetic.py", "int(rng.integers(0, width - side + 1))",
      "int(rng.integers(0, max(width - side, 1)))", DATA_TESTS),
    m("synthetic crop never the largest side", "refusion/data/synthetic.py", "min(height, width, 4 * size) + 1))",
      "min(height, width, 4 * size)))", DATA_TESTS),
    # ---------------------------------------------------------------- checkpoint loading
    m("compile prefix kept", "refusion/official/checkpoints.py", 'STRIPPED_PREFIXES = ("module.", "_orig_mod.")',
      'STRIPPED_PREFIXES = ("module.",)', CHECKPOINT_TESTS),
    m("prefixes stripped in one pass", "refusion/official/checkpoints.py", "key, stripped = key[len(prefix):], True",
      "key, stripped = key[len(prefix):], False", CHECKPOINT_TESTS),
    m("prefix stripped anywhere in a key", "refusion/official/checkpoints.py", "            if key.startswith(prefix):",
      "            if prefix in key:", CHECKPOINT_TESTS),
    m("params_ema preferred", "refusion/official/checkpoints.py",
      'WRAPPER_KEYS = ("params", "params_ema", "state_dict")',
      'WRAPPER_KEYS = ("params_ema", "params", "state_dict")', CHECKPOINT_TESTS),
    # ---------------------------------------------------------------- evaluation protocol
    m("evaluate ssim ignores crop_border and y channel", "refusion/evaluation/evaluate.py",
      '"ssim": metrics.ssim(img, gt, **kw)', '"ssim": metrics.ssim(img, gt)', ("tests/test_evaluate_protocol.py",)),
    # ---------------------------------------------------------------- official option files and imports
    m("stereo-sr upscale from degradation.scale", "refusion/official/option_reader.py",
      'scale, fields["upscale"], fields["stereo"], used = 4, 4, True, ("scale",)',
      'scale, fields["upscale"], fields["stereo"], used = 4, deg.get("scale", 4), True, ("scale",)',
      ("tests/test_official_options.py::test_stereo_sr_upscale_is_4_whatever_degradation_scale_says",)),
    m("sisr import without lq_upscale", "refusion/official/importer.py",
      "autoencoder=autoencoder, lq_upscale=int(upscale))", "autoencoder=autoencoder, lq_upscale=1)",
      ("tests/test_official_import.py::test_sisr_import_upsamples_a_quarter_size_lq_bicubically_to_the_gt_size",)),
    # ---------------------------------------------------------------- synthetic bokeh and stereo data
    m("bokeh sides swapped", "refusion/data/degradations.py",
      "return render_lens(image, subject, src, level), render_lens(image, subject, tgt, level), (src, tgt, level)",
      "return render_lens(image, subject, tgt, level), render_lens(image, subject, src, level), (src, tgt, level)",
      ("tests/test_bokeh.py::test_synthetic_bokeh_renders_lq_with_the_source_lens_and_gt_with_the_target_lens",)),
    m("stereo LQ views swapped", "refusion/data/paired.py",
      "return np.concatenate(gts, axis=2), np.concatenate(lqs, axis=2), None",
      "return np.concatenate(gts, axis=2), np.concatenate(lqs[::-1], axis=2), None",
      ("tests/test_stereo.py::test_each_lq_view_stays_with_the_gt_view_of_its_side_through_crops_and_flips",)),
    # ---------------------------------------------------------------- validation during training
    m("resume forgets the best psnr", "refusion/training/engine.py",
      '    run.best_psnr = float("-inf") if best is None else float(best)', '    run.best_psnr = float("-inf")',
      ("tests/test_training_validation.py::"
       "test_resume_keeps_the_best_psnr_and_best_weights_of_the_uninterrupted_run",)),
    m("autoencoder validation decodes with the GT skips", "refusion/training/objectives.py",
      "return model.decode(latent_gt, model.encode(lq)[1])", "return model.decode(latent_gt, model.encode(gt)[1])",
      ("tests/test_training_validation.py::"
       "test_latent_autoencoder_validation_scores_the_gt_latent_decoded_with_the_lq_skips",)),
    # ---------------------------------------------------------------- trackers (wandb offline, an mlflow file store)
    m("wandb gets no validation image", ENGINE, "writer.log({title: wandb.Image(hwc)}, step=step)", "pass",
      (WANDB_TEST,)),
    m("wandb image as floats in [0, 1]", ENGINE, "wandb.Image(hwc)", "wandb.Image(chw.permute(1, 2, 0).numpy())",
      (WANDB_TEST,)),
    m("mlflow gets no validation image", ENGINE,
      "mlflow.MlflowClient().log_image(writer.info.run_id, hwc, key=key, step=step)", "pass", (MLFLOW_TEST,)),
    m("trackers get no training scalars", ENGINE, 'acc.log({**{f"train/{k}": v for k, v in means.items()}, '
      '"train/lr": lr}, step=step)', "pass", (WANDB_TEST, MLFLOW_TEST)),
    m("trackers get no validation scalars", ENGINE, 'acc.log({f"val/{k}": v for k, v in metrics.items()}, step=step)',
      "pass", (WANDB_TEST, MLFLOW_TEST)),
    # ---------------------------------------------------------------- benchmarks
    m("train_step memory: the pre-step peak read after the steps", "refusion/benchmarks/training.py",
      'return {"pre_step_peak_rss_bytes": before,', 'return {"pre_step_peak_rss_bytes": perf.peak_rss_bytes(),',
      ("tests/test_perf.py::test_train_step_reports_each_variants_peak_memory_from_a_process_of_its_own",)),
]


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def run_tests(copy: Path, tests: tuple[str, ...], *, stop_first: bool, timeout: float,
              slow: bool = False) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests]
    if not slow:
        cmd[6:6] = ["-m", "not slow"]
    if stop_first:
        cmd.insert(4, "-x")
    try:
        proc = subprocess.run(cmd, check=False, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timeout"
    return proc.returncode, proc.stdout + proc.stderr


def failing_tests(output: str) -> list[str]:
    """Node ids of the ``-rf`` summary lines ``FAILED <node id> - <message>`` (ids may hold spaces)."""
    found = set()
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            found.add(line.split(" ", 1)[1].split(" - ", 1)[0])
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--which-tests", action="store_true", help="run every test of a mutant, list the failures")
    parser.add_argument("--goal", type=float, default=0.95, help="score needed for exit status 0")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    args = parser.parse_args(argv)

    mutants = MUTANTS if not args.only else [mu for mu in MUTANTS if mu.name in set(args.only)]
    if args.only and len(mutants) != len(set(args.only)):
        known = {mu.name for mu in MUTANTS}
        parser.error(f"unknown mutant(s): {sorted(set(args.only) - known)}")
    if args.list:
        for mu in mutants:
            print(f"{mu.name!r:45} {mu.path}: {mu.old.strip()!r} -> {mu.new.strip()!r}  [{' '.join(mu.tests)}]")
        return 0

    with tempfile.TemporaryDirectory(prefix="refusion_mutants_") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        union = tuple(sorted({t for mu in mutants for t in mu.tests}))
        start = time.perf_counter()
        rc, out = run_tests(copy, union, stop_first=False, timeout=args.timeout,
                            slow=any(mu.slow for mu in mutants))
        if rc != 0:
            print(f"baseline is red (exit {rc}) on {' '.join(union)}:\n{out[-3000:]}")
            return 2
        print(f"baseline green on {len(union)} test files in {time.perf_counter() - start:.0f} s")
        results = []
        for mu in mutants:
            target = copy / mu.path
            source = target.read_text()
            count = source.count(mu.old)
            if count != 1:
                results.append((mu, "stale", f"old text found {count} times"))
                print(f"  stale     {mu.name}: the text to mutate occurs {count} times in {mu.path}")
                continue
            target.write_text(source.replace(mu.old, mu.new))
            start = time.perf_counter()
            try:
                rc, out = run_tests(copy, mu.tests, stop_first=not args.which_tests, timeout=args.timeout,
                                    slow=mu.slow)
            finally:
                target.write_text(source)
            status = "survived" if rc == 0 else ("timeout" if rc == 124 else "killed")
            detail = ", ".join(failing_tests(out)) if status == "killed" else ""
            if status == "killed" and not detail:
                detail = f"exit {rc}: " + next((ln for ln in reversed(out.splitlines()) if ln.strip()), "")
            results.append((mu, status, detail))
            print(f"  {status:9} {mu.name} ({time.perf_counter() - start:.0f} s)"
                  + (f"\n            {detail}" if args.which_tests or status != "killed" else ""))
    scored = [r for r in results if r[1] in ("killed", "survived", "timeout")]
    killed = sum(r[1] != "survived" for r in scored)
    score = killed / len(scored) if scored else 0.0
    print(f"\n{killed} of {len(scored)} mutants killed ({100 * score:.1f}%)"
          + (f"; {len(results) - len(scored)} stale" if len(results) != len(scored) else ""))
    for mu, status, _ in results:
        if status != "killed":
            why = f"; judged equivalent: {mu.equivalent}" if mu.equivalent else ""
            print(f"  {status}: {mu.name} ({mu.path}){why}")
    return 0 if score >= args.goal and len(scored) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
