"""Where along the reverse trajectory a trained noise-prediction SDE gains and loses PSNR.

    python tools/sampling_trajectory.py --run runs/study_denoise_sde --raw-weights --data data/study_noise \
        --out runs/study_trajectory --max-images 4 --seeds 4 --steps 100 10 5

For each step count, posterior sampling (eta 1) runs on the test pairs with several seeds; at
every step it records the PSNR against the ground truth of the network's x0 estimate
(``x0_from_noise(x_t, eps_hat, t)``) and of the state x_t. It also scores each final sample and
the pixel mean of the samples of one image (an estimate of the posterior mean). Written as
``trajectory.json`` and ``trajectory.md``.

Reading: if x0_hat is best early and the final samples are worse than their mean, the extra steps
turn an estimate of the posterior mean into a posterior sample (stochastic detail the ground
truth does not have), which costs PSNR by construction; if the mean of the samples is no better
than one sample, the loss is the network's error at small t instead.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from refusion.cli import common
from refusion.cli.sampling_study import load_checkpoint_weights

if TYPE_CHECKING:   # torch loads in the functions that use it: `--help` answers without it
    import torch

    from refusion.schedulers.ir_sde import IRSDEScheduler


def psnr_db(x: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR in dB of x (clamped to [0, 1]) against gt, float64."""
    mse = (x.clamp(0, 1).double() - gt.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def trajectory(net, scheduler: IRSDEScheduler, lq: torch.Tensor, gt: torch.Tensor, steps: int, seed: int) -> dict:
    """One posterior (eta 1) run; the PSNR of x0_hat and of x_t at every step, and the final sample."""
    import torch   # here, not at the top: `--help` answers without loading torch

    scheduler.set_timesteps(steps)
    generator = torch.Generator(device=lq.device).manual_seed(seed)
    x0_psnr, xt_psnr, ts = [], [], []
    with torch.inference_mode():
        x = scheduler.initial_sample(lq, generator=generator)
        for t in [int(v) for v in scheduler.timesteps]:
            noise = net(x, lq, torch.full((lq.shape[0],), t, dtype=torch.long, device=lq.device))
            x0_psnr.append(psnr_db(scheduler.x0_from_noise(x, noise, t, mu=lq), gt))
            xt_psnr.append(psnr_db(x, gt))
            ts.append(t)
            x = scheduler.step(noise, t, x, mu=lq, generator=generator).prev_sample
    return {"t": ts, "x0_hat_psnr": x0_psnr, "x_t_psnr": xt_psnr, "final": x.clamp(0, 1)}


def run(run_dir: Path, data: Path, out: Path, steps_list: list[int], seeds: int, max_images: int | None,
        raw_weights: bool, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from refusion.data.image_io import read_image
    from refusion.data.paired import find_pairs
    from refusion.inference.pipeline import load_pipeline
    from refusion.schedulers.ir_sde import IRSDEScheduler

    pipe = load_pipeline(run_dir, device=device)
    if raw_weights:
        load_checkpoint_weights(pipe, run_dir)
    net = pipe.unet.eval()
    scheduler = IRSDEScheduler.from_config(pipe.scheduler.config, sampler="posterior", eta=1.0)
    pairs = find_pairs(data / "test" / "gt", data / "test" / "lq")[:max_images]
    to_tensor = lambda path: torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float().to(device)  # noqa: E731
    report = {"run": str(run_dir), "raw_weights": raw_weights, "images": len(pairs), "seeds": seeds, "steps": {}}
    for steps in steps_list:
        per_step_x0, per_step_xt, finals, means = [], [], [], []
        for _name, gt_path, lq_path in pairs:
            gt, lq = to_tensor(gt_path), to_tensor(lq_path)
            runs = [trajectory(net, scheduler, lq, gt, steps, seed) for seed in range(seeds)]
            per_step_x0.append(np.mean([r["x0_hat_psnr"] for r in runs], axis=0))
            per_step_xt.append(np.mean([r["x_t_psnr"] for r in runs], axis=0))
            finals.append(statistics.mean(psnr_db(r["final"], gt) for r in runs))
            means.append(psnr_db(torch.stack([r["final"] for r in runs]).mean(0), gt))
        x0_curve = np.mean(per_step_x0, axis=0)
        report["steps"][steps] = {
            "t": runs[0]["t"], "x0_hat_psnr": x0_curve.tolist(), "x_t_psnr": np.mean(per_step_xt, axis=0).tolist(),
            "final_sample_psnr": statistics.mean(finals), "mean_of_samples_psnr": statistics.mean(means),
            "best_x0_hat": {"psnr": float(x0_curve.max()), "t": runs[0]["t"][int(x0_curve.argmax())]},
        }
        r = report["steps"][steps]
        print(f"{steps:>4} steps: final sample {r['final_sample_psnr']:.2f} dB, mean of {seeds} samples "
              f"{r['mean_of_samples_psnr']:.2f} dB, x0_hat first step {x0_curve[0]:.2f} dB, "
              f"best x0_hat {r['best_x0_hat']['psnr']:.2f} dB at t={r['best_x0_hat']['t']}, last {x0_curve[-1]:.2f} dB")
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectory.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "trajectory.md").write_text(_markdown(report))
    return report


def _markdown(report: dict) -> str:
    lines = [f"# Sampling trajectory of {report['run']} ({report['images']} images x {report['seeds']} seeds)", "",
             "| steps | final sample PSNR | mean of samples PSNR | x0_hat PSNR at the first step | best x0_hat (t) | x0_hat at the last step |",
             "|---|---|---|---|---|---|"]
    for steps, r in report["steps"].items():
        lines.append(f"| {steps} | {r['final_sample_psnr']:.2f} | {r['mean_of_samples_psnr']:.2f} | "
                     f"{r['x0_hat_psnr'][0]:.2f} | {r['best_x0_hat']['psnr']:.2f} ({r['best_x0_hat']['t']}) | "
                     f"{r['x0_hat_psnr'][-1]:.2f} |")
    longest = report["steps"][max(report["steps"], key=int)]
    lines += ["", f"x0_hat PSNR along the {len(longest['t'])}-step trajectory:", "", "| t | x0_hat PSNR | x_t PSNR |",
              "|---|---|---|"]
    stride = max(1, len(longest["t"]) // 20)
    for i in list(range(0, len(longest["t"]), stride)) + [len(longest["t"]) - 1]:
        lines.append(f"| {longest['t'][i]} | {longest['x0_hat_psnr'][i]:.2f} | {longest['x_t_psnr'][i]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "--run", dest="run", type=Path, required=True, metavar="MODEL",
                        help="a trained sde run directory")
    parser.add_argument("--data", type=Path, required=True, help="dataset root with test/gt and test/lq")
    parser.add_argument("--out", type=Path, default=Path("report/trajectory"))
    parser.add_argument("--seeds", type=int, default=4, help="samples per image")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--raw-weights", action="store_true", help="the newest checkpoint's raw (non-EMA) weights")
    common.add_shared(parser, "device", "threads", "steps",
                      steps=dict(nargs="+", default=[100, 10, 5], help="sampling step counts (default: 100 10 5)"))
    args = parser.parse_args(argv)
    device = common.apply_shared(parser, args)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    run(args.run, args.data, args.out, args.steps, args.seeds, args.max_images, args.raw_weights, device=str(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
