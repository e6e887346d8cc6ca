"""Evaluation: metrics, LPIPS weights, scoring runs on test pairs, reports.

- metrics        PSNR / SSIM (BasicSR protocol), LPIPS with real weights
- lpips_weights  `python -m refusion.evaluation.lpips_weights install`: the LPIPS backbones, offline
- evaluate       evaluate_runs: SDE samplers x step counts and regressors on the same test pairs
- statistics     percentile-bootstrap intervals over images, paired differences between rows
- report         tables (md/csv/json) with intervals, PSNR-vs-LPIPS and steps-vs-quality plots with error bars, image grids
"""
