"""Bytes saved for backward, and forward+backward time, of every dropout variant vs its usual implementation.

    python benchmarks/bench_variants.py              # all variants, default sizes
    python benchmarks/bench_variants.py --no-time    # bytes only (seconds)

For each variant, autograd's saved tensors are counted with
``torch.autograd.graph.saved_tensors_hooks`` (harness.saved_bytes: each storage once,
the input included if saved) for dropkit and for the common way to write it in plain
torch (torch's own op where there is one; else the torchvision / timm / AWD-LSTM /
Keras formulation, written out here since those packages are not installed).
Writes benchmarks/out/bench_variants.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as tnf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dropkit  # noqa: E402
from dropkit import functional as F  # noqa: E402
from harness import interleaved, print_table, saved_bytes, write_json  # noqa: E402

P = 0.3


# ---------------------------------------------------------------- baselines in plain torch
def tv_drop_block2d(x, p, block_size):
    """torchvision.ops.drop_block2d's algorithm (odd block sizes)."""
    n, c, h, w = x.shape
    gamma = (p * h * w) / ((block_size**2) * ((h - block_size + 1) * (w - block_size + 1)))
    noise = torch.empty((n, c, h - block_size + 1, w - block_size + 1), dtype=x.dtype).bernoulli_(gamma)
    noise = tnf.pad(noise, [block_size // 2] * 4, value=0)
    noise = tnf.max_pool2d(noise, stride=(1, 1), kernel_size=(block_size, block_size), padding=block_size // 2)
    noise = 1 - noise
    return x * noise * (noise.numel() / (1e-6 + noise.sum()))


def timm_drop_path(x, p):
    """timm.layers.drop_path."""
    keep = 1 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def awd_locked(x, p):
    """AWD-LSTM's LockedDropout on (T, N, F)."""
    m = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return m.expand_as(x) * x


def keras_gaussian_dropout(x, p):
    return x * (1 + math.sqrt(p / (1 - p)) * torch.randn_like(x))


def awd_embedded_dropout(w, idx, p):
    """AWD-LSTM's embedded_dropout: a masked copy of the matrix, then F.embedding."""
    mask = w.new_empty((w.size(0), 1)).bernoulli_(1 - p).expand_as(w) / (1 - p)
    return tnf.embedding(idx, mask * w)


def variants(args):
    """(name, input, dropkit fn, baseline name, baseline fn) for each variant."""
    img = torch.randn(args.batch, 64, 28, 28)
    seq = torch.randn(35, args.batch, 256)
    vec = torch.randn(args.batch * 64, 784)
    vol = torch.randn(args.batch // 4 or 1, 16, 16, 16, 16)
    idx = torch.randint(0, 10000, (35, args.batch))
    emb = torch.randn(10000, 256)
    lstm_in = torch.randn(35, args.batch, 128)

    def lstm(cls, **kw):
        torch.manual_seed(0)
        m = cls(128, 128, 2, **kw)
        return lambda x: m(x)[0]

    fc_dc = dropkit.nn.drop_connect(torch.nn.Linear(784, 256), p=P)
    fc = torch.nn.Linear(784, 256)
    return [
        ("dropout2d", img, lambda x: F.dropout2d(x, P), "torch dropout2d", lambda x: tnf.dropout2d(x, P)),
        ("dropout3d", vol, lambda x: F.dropout3d(x, P), "torch dropout3d", lambda x: tnf.dropout3d(x, P)),
        ("alpha_dropout", vec, lambda x: F.alpha_dropout(x, P), "torch alpha_dropout", lambda x: tnf.alpha_dropout(x, P, True)),
        ("feature_alpha_dropout", img, lambda x: F.feature_alpha_dropout(x, P), "torch feature_alpha_dropout",
         lambda x: tnf.feature_alpha_dropout(x, P, True)),
        ("gaussian_dropout", vec, lambda x: F.gaussian_dropout(x, P), "Keras-style x*(1+s*randn)",
         lambda x: keras_gaussian_dropout(x, P)),
        ("gaussian_noise", vec, lambda x: F.gaussian_noise(x, 0.1), "x + 0.1*randn_like(x)",
         lambda x: x + 0.1 * torch.randn_like(x)),
        ("drop_block2d (b=7)", img, lambda x: F.drop_block2d(x, 0.1, 7), "torchvision drop_block2d",
         lambda x: tv_drop_block2d(x, 0.1, 7)),
        ("drop_block3d (b=3)", vol, lambda x: F.drop_block3d(x, 0.1, 3), "-", None),
        ("drop_path", img, lambda x: F.drop_path(x, P), "timm drop_path", lambda x: timm_drop_path(x, P)),
        ("locked_dropout", seq, lambda x: F.locked_dropout(x, P), "AWD-LSTM LockedDropout", lambda x: awd_locked(x, P)),
        ("embedding_dropout (input: weight)", emb, lambda w: F.embedding_dropout(idx, w, 0.1),
         "AWD-LSTM embedded_dropout", lambda w: awd_embedded_dropout(w, idx, 0.1)),
        ("ConcreteDropout", vec, dropkit.nn.ConcreteDropout(P), "-", None),
        ("ConcreteDropout spatial", img, dropkit.nn.ConcreteDropout(P, spatial=True), "-", None),
        ("drop_connect(Linear) (input: x)", vec, fc_dc, "torch Linear, no dropout", fc),
        ("LSTM dropout+weight_dropout", lstm_in, lstm(dropkit.nn.LSTM, dropout=P, weight_dropout=0.5),
         "torch LSTM dropout", lstm(torch.nn.LSTM, dropout=P)),
        ("LSTM recurrent_dropout", lstm_in, lstm(dropkit.nn.LSTM, dropout=P, recurrent_dropout=0.25),
         "torch LSTM dropout", lstm(torch.nn.LSTM, dropout=P)),
    ]  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-time", action="store_true", help="skip the forward+backward timings")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="bench_variants")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows, table = [], []
    for name, x, ours, base_name, base in variants(args):
        mb = x.numel() * x.element_size() / 2**20
        ours_b = saved_bytes(ours, x)
        base_b = saved_bytes(base, x) if base is not None else None
        row = {"variant": name, "input_shape": list(x.shape), "input_MiB": mb, "dropkit_saved_bytes": ours_b,
               "baseline": base_name, "baseline_saved_bytes": base_b}  # fmt: skip
        ratio = "-"
        if not args.no_time and base is not None:
            xr = x.detach().requires_grad_()
            fns = {"dropkit": lambda: ours(xr).sum().backward(), "baseline": lambda: base(xr).sum().backward()}
            st = interleaved(fns, rounds=args.rounds, repeats=3, min_sample_s=0.02)
            row.update(dropkit_ms=st["dropkit"].median * 1e3, baseline_ms=st["baseline"].median * 1e3)
            ratio = f"{st['baseline'].median / st['dropkit'].median:.2f}x"
        rows.append(row)
        fmt = lambda b: "-" if b is None else f"{b:,} B ({b / (x.numel() * x.element_size()):.3f}x input)"  # noqa: E731
        table.append([name, "x".join(map(str, x.shape)), fmt(ours_b), base_name, fmt(base_b), ratio])
    print_table(
        ["variant", "input", "dropkit saves", "baseline", "baseline saves", "fwd+bwd baseline/dropkit"],
        table,
        title=f"bytes saved for backward (float32, p={P}; {torch.get_num_threads()} thread(s))",
    )
    write_json(args.name, rows, p=P, batch=args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
