"""refusion import: an official checkpoint (+ option file) -> a ready folder with a model card.

    refusion import models/nafnet_gopro --weights NAFNet-GoPro-width32.pth
    refusion import models/nafnet_gopro_tlc --weights NAFNet-GoPro-width64.pth \\
        --options NAFNet/options/test/GoPro/NAFNet-width64.yml          # NAFNetLocal: TLC on by default
    refusion import models/shadow --weights refusion_shadow.pth \\
        --options image-restoration-sde/codes/config/deshadow/options/test/refusion.yml
    refusion import models/shadow --weights refusion_shadow.pth --sde max_sigma=50 T=100 schedule=cosine eps=0.005
    refusion import models/dehaze --weights nasde_G.pth --latent-weights latent_L.pth \\
        --options image-restoration-sde/codes/config/latent-dehazing/options/dehazing/test/nasde.yml

The architecture and every constructor argument come from the weights' keys and shapes; the option
file adds what the weights cannot say (the SDE, TLC, SR upscaling, the latent autoencoder) and is
checked against them. Noise networks become a RefusionPipeline folder, regressors a model folder;
both load with `refusion restore --model OUT`, refusion.sample / refusion.restore and `refusion
evaluate`. Refusals (options that contradict the weights, a missing autoencoder, a file that is not
a checkpoint or a pickle that carries code) exit with status 2, one message, nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refusion.cli import common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write (must not exist or be empty, unless --overwrite)")
    p.add_argument("--weights", type=Path, required=True, help="official checkpoint (.pth / .pt)")
    p.add_argument("--options", type=Path, default=None, help="official option file (IR-SDE or BasicSR YAML)")
    p.add_argument("--latent-weights", type=Path, default=None, help="latent autoencoder checkpoint (latent tasks)")
    p.add_argument("--sde", nargs="+", default=None, metavar="KEY=VALUE",
                   help="SDE settings without --options: max_sigma=50 T=100 schedule=cosine eps=0.005")
    p.add_argument("--param-key", default=None, help="checkpoint wrapper key, e.g. params_ema (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    common.add_shared(p, "threads")
    args = p.parse_args(argv)
    common.apply_shared(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from refusion.official.importer import ImportRefusal, import_official, parse_sde_settings

    try:
        if args.sde and any("=" not in item for item in args.sde):
            raise ImportRefusal(f"--sde takes KEY=VALUE items, got {args.sde}")
        sde = parse_sde_settings(dict(item.split("=", 1) for item in args.sde)) if args.sde else None
        result = import_official(args.out, weights=args.weights, options=args.options,
                                 latent_weights=args.latent_weights, sde=sde, param_key=args.param_key,
                                 overwrite=args.overwrite)
    except ImportRefusal as exc:
        print(f"import: error: {exc}", file=sys.stderr)
        return 2
    print(f"import: {result.network} ({result.num_parameters:,} parameters) -> {result.path} ({result.kind}); "
          f"model card {result.path / 'README.md'}")
    print(f"        detected {result.detected}")
    if result.given:
        print(f"        from the options / command line: {result.given}")
    if result.defaulted:
        print(f"        defaults (not in the weights): {result.defaulted}")
    return 0
