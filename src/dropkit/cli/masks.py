"""``dropkit masks --out FILE``: one PNG with the masks of five dropout variants on the same input."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "masks",
        help="draw the masks of element-wise, spatial, DropBlock, DropPath and locked dropout",
        description="Draw one PNG with the masks that five dropout variants (element-wise, spatial "
        "channel, DropBlock, DropPath, locked) draw on the same N,C,H,W input at the same p, and print "
        "the fraction each one dropped.",
    )
    p.add_argument("--out", default="masks.png", help="PNG file to write")
    p.add_argument("--p", type=float, default=0.3, help="probability of DROPPING, for every variant")
    p.add_argument("--shape", default="8,6,12,12", help="input shape N,C,H,W")
    p.add_argument("--block-size", type=int, default=5, help="DropBlock's block size")
    p.add_argument("--seed", type=int, default=4, help="seed of the masks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dropkit.cli.guard import _parse_shape
    from dropkit.viz import save_masks, variant_masks

    shape = _parse_shape(args.shape)
    path = save_masks(args.out, shape, args.p, args.block_size, args.seed)
    for label, keep in variant_masks(shape, args.p, args.block_size, args.seed).items():
        print(f"{label:<42} dropped {1 - keep.float().mean().item():6.1%}")
    print(f"wrote {path}")
    return 0
