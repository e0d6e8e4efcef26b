"""``dropkit demo``: the classic picture of dropout on one layer's activations."""

from __future__ import annotations

import argparse

import torch

import dropkit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="show a dropout mask on one layer's activations (the default command)",
        description="The classic picture of dropout on one layer: random activations, a mask that drops each "
        "neuron with probability p (the shown mask is the first, from --seed on, that drops round(p * units) "
        "neurons, so the picture shows the rate), the surviving activations scaled by 1/(1-p), three training "
        "passes with three different masks, and eval mode, where nothing is dropped.",
    )
    p.add_argument("--p", type=float, default=0.5, help="probability of DROPPING a unit")
    p.add_argument("--units", type=int, default=10, help="neurons in the layer")
    p.add_argument("--seed", type=int, default=0, help="seed of the activations; the mask's seed is searched from it")
    p.set_defaults(func=run)


def _row(label: str, values: torch.Tensor, fmt: str = "{:6.2f}") -> str:
    return f"{label:<22}" + " ".join(fmt.format(v.item()) for v in values)


def typical_mask_seed(units: int, p: float, start: int, tries: int = 1000) -> int:
    """The first seed from ``start`` whose first mask drops exactly ``round(p * units)`` of ``units`` (else ``start``)."""
    target = round(p * units)
    for s in range(start, start + tries):
        if int((~dropkit.rng.keep_mask(units, p, seed=s, stream=0)).sum()) == target:
            return s
    return start


def run(args: argparse.Namespace) -> int:
    from dropkit._validation import check_int, check_p

    p = check_p(args.p)
    units = check_int(args.units, "units", minimum=1)
    torch.manual_seed(args.seed)
    x = torch.rand(units) * 2
    mask_seed = typical_mask_seed(units, p, args.seed)
    layer = dropkit.nn.Dropout(p, seed=mask_seed)
    y = layer(x)
    mask = dropkit.rng.keep_mask(units, p, seed=mask_seed, stream=0)  # the mask of the layer's first call
    scale = "inf" if p == 1 else f"{1 / (1 - p):.4g}"
    print(f"dropkit demo: Dropout(p={p}) on {units} neurons (p = probability of DROPPING a neuron)\n")
    print(_row("activations", x))
    print(_row("mask (0 = dropped)", mask.int(), "{:6d}"))
    print(_row(f"output (x * m * {scale})", y))
    dropped = int((~mask).sum())
    print(f"\ndropped {dropped} of {units} neurons ({dropped / units:.0%}); survivors scaled by 1/(1-p) = {scale}")
    print(
        f"(mask seed {mask_seed}: the first from --seed {args.seed} whose mask drops round(p * {units}) = "
        f"{round(p * units)} neurons; each pass draws a new mask, the count varies as Binomial({units}, {p:g}))\n"
    )
    print("training mode: three passes, three different masks")
    for i in range(3):
        print(_row(f"  train pass {i + 1}", layer(x)))
    layer.eval()
    print("eval mode: every neuron active, nothing random")
    outs = [layer(x) for _ in range(3)]
    for i, o in enumerate(outs):
        print(_row(f"  eval pass {i + 1}", o))
    same = all(torch.equal(outs[0], o) for o in outs)
    print(f"\neval passes identical: {same}")
    return 0 if same else 1
