"""Large images in fresh processes (peak RSS): the latent path, the tiled pixel SDE, tiled NAFNet, and
tiled against whole-image output."""
from __future__ import annotations

import time

import torch

from refusion.benchmarks import perf
from refusion.benchmarks.common import GIB, QUICKSTART, QUICKSTART_LATENT_AE, build_network, print_table, psnr_db, smooth_image

THIS_MODULE = "refusion.benchmarks.large_image"


def large_latent(height: int, width: int, steps: int, tile: int | None) -> dict:
    """Subprocess body: the latent path (small LatentUNet + small noise network) on one image."""
    from refusion.models import ConditionalNAFNet, LatentUNet
    from refusion.inference.pipeline import RefusionPipeline
    from refusion.schedulers.ir_sde import IRSDEScheduler

    torch.manual_seed(0)
    ae = LatentUNet(**QUICKSTART_LATENT_AE).eval()
    unet = ConditionalNAFNet(img_channel=QUICKSTART_LATENT_AE["embed_dim"], **QUICKSTART).eval()
    pipe = RefusionPipeline(unet=unet, scheduler=IRSDEScheduler(), autoencoder=ae)
    image = smooth_image(height, width)
    start = time.perf_counter()
    out = pipe(image, num_inference_steps=steps, output_type="pt", latent=True, tile_size=tile, progress=False,
               generator=torch.Generator().manual_seed(0)).images
    return {"seconds": time.perf_counter() - start, "output_shape": list(out.shape), "finite": bool(out.isfinite().all())}


def large_tiled(height: int, width: int, steps: int, tile: int, overlap: int) -> dict:
    """Subprocess body: the pixel-space SDE with a small noise network, tile by tile."""
    import refusion

    net, _ = build_network("ConditionalNAFNet-w16-quickstart", True)
    image = smooth_image(height, width)
    start = time.perf_counter()
    out = refusion.sample(image, steps=steps, model=net.eval(), tile_size=tile, tile_overlap=overlap, progress=False,
                          generator=torch.Generator().manual_seed(0))
    return {"seconds": time.perf_counter() - start, "output_shape": list(out.shape), "finite": bool(out.isfinite().all())}


def nafnet_tiled(size: int, tile: int, overlap: int) -> dict:
    """Subprocess body: NAFNet w32 (GoPro config) restoring a size x size image tile by tile."""
    import refusion

    net, _ = build_network("NAFNet-w32-GoPro", True)
    image = smooth_image(size, size)
    start = time.perf_counter()
    out = refusion.restore(image, model=net.eval(), tile_size=tile, tile_overlap=overlap, progress=False)
    return {"seconds": time.perf_counter() - start, "output_shape": list(out.shape)}


def _in_subprocess(fn_name: str, **kwargs) -> dict:
    report = perf.run_with_peak_rss(f"{THIS_MODULE}:{fn_name}", kwargs)
    return {**kwargs, **report["result"], "peak_rss_gib": report["peak_rss_bytes"] / GIB,
            "baseline_rss_gib": report["baseline_rss_bytes"] / GIB, "process_wall_s": report["wall_s"]}


def _tiled_vs_whole(size: int, tile: int, overlap: int, tlc: int | None) -> dict:
    import refusion

    net, _ = build_network("NAFNet-w32-GoPro", True)
    net.eval()
    gt = smooth_image(size, size, seed=3)
    lq = (gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    kw = dict(model=net, tlc=tlc, progress=False)
    start = time.perf_counter()
    whole = refusion.restore(lq, **kw)
    whole_s = time.perf_counter() - start
    start = time.perf_counter()
    tiled = refusion.restore(lq, tile_size=tile, tile_overlap=overlap, **kw)
    tiled_s = time.perf_counter() - start
    return {"size": size, "tile": tile, "overlap": overlap, "tlc_train_size": tlc, "whole_s": whole_s,
            "tiled_s": tiled_s, "psnr_tiled_vs_whole_db": psnr_db(tiled, whole, 1.0),
            "psnr_delta_vs_gt_db": abs(psnr_db(tiled, gt, 1.0) - psnr_db(whole, gt, 1.0)),
            "max_abs_diff": float((tiled - whole).abs().max())}


def bench_large_image(state: dict) -> dict:
    smoke, full = state["smoke"], state["full"]
    h, w = (480, 320) if smoke else (4000, 6000)
    steps = 2 if smoke else 5 if full else 2
    out = {
        "latent_path": _in_subprocess("large_latent", height=h, width=w, steps=steps, tile=None),
        "tiled_pixels": _in_subprocess("large_tiled", height=h, width=w, steps=max(1, steps // 2) if not full else 2,
                                       tile=512 if not smoke else 128, overlap=32),
        "nafnet_tiled": _in_subprocess("nafnet_tiled", size=256 if smoke else 2048 if full else 1024,
                                       tile=512 if not smoke else 128, overlap=64 if not smoke else 32),
    }
    compare_size, compare_tile = (128, 64) if smoke else (2048, 512) if full else (512, 256)
    out["tiled_vs_whole"] = [_tiled_vs_whole(compare_size, compare_tile, compare_tile // 4, tlc)
                             for tlc in (None, compare_tile)]
    rows = [{"case": k, "image": f"{v.get('width', v.get('size'))}x{v.get('height', v.get('size'))}",
             "steps": v.get("steps"), "seconds": v["seconds"], "peak RSS GiB": v["peak_rss_gib"]}
            for k, v in out.items() if isinstance(v, dict)]
    print_table("large images (each in a fresh process)", rows, list(rows[0]))
    print_table("NAFNet w32 tiled vs whole image", out["tiled_vs_whole"],
                ["size", "tile", "overlap", "tlc_train_size", "psnr_tiled_vs_whole_db", "psnr_delta_vs_gt_db",
                 "whole_s", "tiled_s"])
    return out
