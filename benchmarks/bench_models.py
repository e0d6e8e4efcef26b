"""Real models converted to dropkit against the originals, in one process: training-step time and saved bytes.

For each model of :mod:`dropkit.lab.zoo` (tiny configurations of transformers' BERT / GPT-2, timm's ViT,
torchvision's EfficientNet) and a torchvision DropBlock2d CNN: the step (forward, cross-entropy, backward) of the
original and of a copy converted with ``dropkit.nn.replace_dropout`` (and run inside ``dropkit.patch`` where the
model calls functional dropout: the transformers' and the ViT's attention), eager and
under ``torch.compile``, timed interleaved; and the bytes autograd saves for backward in one step (every saved
tensor's storage once, ``torch.autograd.graph.saved_tensors_hooks``). Ratios > 1 mean dropkit is faster.

Needs the integrations extra (transformers, timm, torchvision: the newest-torch venv of .ci/run has them).

    python benchmarks/bench_models.py [--batch 32] [--no-compile] [--threads N]
"""

from __future__ import annotations

import argparse
import copy

import torch

from harness import interleaved, print_table, write_json

import dropkit
from dropkit.lab import zoo


def _dropblock_cnn(in_shape, num_classes):
    import torchvision

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torchvision.ops.DropBlock2d(0.1, 3),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torchvision.ops.DropBlock2d(0.1, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, num_classes),
    )  # fmt: skip


#: name -> (factory, input shape, whether its step makes functional dropout calls: attention's dropout, which only
#: ``dropkit.patch`` reaches; the others' dropout is all modules, which ``replace_dropout`` converts, so they run
#: without the function mode and its per-call cost on every torch function).
MODELS = {
    "BERT (SDPA)": (lambda: zoo.tiny_bert((64,), 10), (64,), True),
    "BERT (eager attention)": (lambda: zoo.tiny_bert((64,), 10, attn_implementation="eager"), (64,), True),
    "GPT-2 (SDPA)": (lambda: zoo.tiny_gpt2((64,), 10), (64,), True),
    "ViT (timm, drop_path)": (lambda: zoo.tiny_vit((3, 32, 32), 10), (3, 32, 32), True),
    "EfficientNet-B0 (torchvision)": (lambda: zoo.tiny_efficientnet((3, 32, 32), 10), (3, 32, 32), False),
    "CNN + DropBlock2d (torchvision)": (lambda: _dropblock_cnn((3, 32, 32), 10), (3, 32, 32), False),
}


def _saved_bytes(step) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def attention_table(rounds: int) -> list[dict]:
    """SDPA with dropout: torch's kernel against dropkit's route (``dropkit.patch``: softmax attention in torch ops,
    dropkit's dropout on the probabilities), forward + backward time and bytes saved for backward."""
    rows, out = [], []
    for b, h, n, e in ((8, 4, 128, 32), (4, 8, 512, 64)):
        q, k, v = (torch.randn(b, h, n, e, requires_grad=True) for _ in range(3))

        def torch_step():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1).sum().backward()

        def dropkit_step():
            with dropkit.patch(seed=0):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1).sum().backward()

        stats = interleaved({"torch": torch_step, "dropkit": dropkit_step}, rounds=rounds, repeats=5)
        saved = {name: _saved_bytes(fn) for name, fn in (("torch", torch_step), ("dropkit", dropkit_step))}
        shape = f"({b}, {h}, {n}, {e})"
        rows.append([shape, f"{stats['torch'].median * 1e3:.2f}", f"{stats['dropkit'].median * 1e3:.2f}",
                     f"{stats['torch'].median / stats['dropkit'].median:.2f}x", f"{saved['torch'] / 2**20:.2f}",
                     f"{saved['dropkit'] / 2**20:.2f}"])  # fmt: skip
        out.append({"shape": shape, "torch_s": stats["torch"].median, "dropkit_s": stats["dropkit"].median,
                    "saved_torch": saved["torch"], "saved_dropkit": saved["dropkit"]})  # fmt: skip
    print_table(["q, k, v shape", "torch SDPA ms", "dropkit route ms", "speed-up", "torch saved MiB",
                 "dropkit saved MiB"], rows, title="SDPA with dropout_p=0.1, forward + backward")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--attention-only", action="store_true", help="only the SDPA table (no integrations needed)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attention = attention_table(args.rounds)
    if args.attention_only:
        write_json("bench_models", [], batch=args.batch, attention=attention)
        return
    rows, json_rows = [], []
    for name, (make, shape, functional) in MODELS.items():
        torch.manual_seed(0)
        original = make().train()
        converted = copy.deepcopy(original)
        dropkit.nn.replace_dropout(converted, seed=0)
        x = torch.rand(args.batch, *shape)
        y = torch.randint(0, 10, (args.batch,))
        gen = dropkit.SeedGenerator(1)

        def step_of(model, patched):
            def step():
                if patched:
                    with dropkit.patch(seed=gen):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                else:
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()

            return step

        fns = {"torch": step_of(original, False), "dropkit": step_of(converted, functional)}
        if not args.no_compile:
            torch._dynamo.reset()
            c_orig, c_conv = torch.compile(original), torch.compile(converted)
            fns["torch compiled"] = step_of(c_orig, False)
            fns["dropkit compiled"] = step_of(c_conv, functional)
        stats = interleaved(fns, rounds=args.rounds, repeats=5, min_sample_s=0.05)
        saved_t = _saved_bytes(fns["torch"])
        saved_d = _saved_bytes(fns["dropkit"])
        eager = stats["torch"].median / stats["dropkit"].median
        comp = (
            stats["torch compiled"].median / stats["dropkit compiled"].median if not args.no_compile else float("nan")
        )
        rows.append([
            name, f"{stats['torch'].median * 1e3:.1f}", f"{stats['dropkit'].median * 1e3:.1f}", f"{eager:.2f}x",
            "-" if args.no_compile else f"{comp:.2f}x", f"{saved_t / 2**20:.2f}", f"{saved_d / 2**20:.2f}",
            f"{(saved_t - saved_d) / 2**20:+.2f}",
        ])  # fmt: skip
        json_rows.append({"model": name, **{k: v.median for k, v in stats.items()}, "eager_speedup": eager,
                          "compiled_speedup": comp, "saved_bytes_torch": saved_t, "saved_bytes_dropkit": saved_d})  # fmt: skip
        torch._dynamo.reset()
    print_table(
        ["model", "torch step ms", "dropkit step ms", "eager speed-up", "compiled speed-up", "torch saved MiB",
         "dropkit saved MiB", "saved less MiB"],
        rows,
        title=f"training step, batch {args.batch}, {torch.get_num_threads()} threads",
    )  # fmt: skip
    write_json("bench_models", json_rows, batch=args.batch, attention=attention)


if __name__ == "__main__":
    main()
