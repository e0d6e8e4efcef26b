"""The compile and export matrix of issue #12, module by module: what each PyTorch 2 transform does with
every module of ``dropkit.nn`` in training mode, measured now (not a copy of the tests' verdicts).

Columns, each a check that can fail:

* **compile**: graph breaks in ``torch._dynamo.explain``; ``torch.compile(fullgraph=True)`` with a seed
  gives eager's values and gradients (two calls: the stream advances alike);
* **compile, no seed**: two calls draw different noise (a fresh key per call, none baked in);
* **export**: ``torch.export`` in training mode works and two calls of the program draw different noise;
  in eval mode the program holds no random op;
* **jit.trace**: two calls of a training-mode trace draw different noise (no mask replayed), or the
  trace is refused with a message naming ``dropkit.guard.freeze`` (variants whose noise is shaped by the
  input, which a trace records as constants);
* **jit.script**: refused with a message naming ``dropkit.guard.freeze``;
* **ONNX**: a training-mode export is refused with an error naming dropkit (no constant graph);
* **checkpoint**: ``torch.utils.checkpoint`` (non-reentrant, no seed) gives the gradients of the plain run.

Usage: ``python benchmarks/pt2_matrix.py`` (about 5 minutes on 2 cores). Prints a Markdown table and
writes ``benchmarks/out/pt2_matrix.json``. The modules and their inputs are those of ``tests/test_pt2.py``.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import torch
import torch.utils.checkpoint as cp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from harness import print_table, write_json  # noqa: E402
from test_pt2 import _modules, _out  # noqa: E402
from test_pt2 import _Wrap as Wrap  # noqa: E402  (a Linear in front, the first output of RNNs)

warnings.filterwarnings("ignore")


def _differ(a, b) -> bool:
    return not torch.equal(a, b)


def _random_ops(gm) -> list[str]:
    return sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"
                   and ("dropkit" in str(n.target) or "rand" in str(n.target))})


def check_compile(make, shape):
    torch._dynamo.reset()
    x = torch.randn(shape)
    breaks = torch._dynamo.explain(make().train())(x).graph_break_count
    torch.manual_seed(0)
    eager, compiled = make().train(), make().train()
    compiled.load_state_dict(eager.state_dict())
    cm = torch.compile(compiled, fullgraph=True)
    worst = 0.0
    for _ in range(2):
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = _out(eager(xe)), _out(cm(xc))
        ye.square().sum().backward()
        yc.square().sum().backward()
        worst = max(worst, (ye - yc).abs().max().item(), (xe.grad - xc.grad).abs().max().item())
    ok = breaks == 0 and worst <= 1e-5
    return ("ok" if ok else "FAIL") + f" ({breaks} breaks, max diff {worst:.1e})"


def check_compile_unseeded(make_unseeded, shape):
    torch._dynamo.reset()
    cm = torch.compile(make_unseeded().train(), fullgraph=True)
    x = torch.randn(shape)
    return "ok: fresh noise per call" if _differ(_out(cm(x)), _out(cm(x))) else "FAIL: same noise twice"


def check_export(make_unseeded, shape):
    features = shape[-1]
    x = torch.randn(shape)
    ep = torch.export.export(Wrap(make_unseeded(), features).train(), (x,))
    run = ep.module()
    fresh = _differ(run(x), run(x))
    ep_eval = torch.export.export(Wrap(make_unseeded(), features).eval(), (x,))
    leftover = _random_ops(ep_eval.graph_module)
    if fresh and not leftover:
        return "ok: fresh noise per call; eval: no random op"
    return f"FAIL (fresh={fresh}, eval random ops={leftover})"


def check_trace(make_unseeded, shape):
    x = torch.randn(shape)
    try:
        traced = torch.jit.trace(Wrap(make_unseeded(), shape[-1]).train(), (x,), check_trace=False)
    except RuntimeError as exc:
        return "refused, points to freeze" if "dropkit.guard.freeze" in str(exc) else f"FAIL: {str(exc)[:60]}"
    return "ok: fresh noise per call" if _differ(traced(x), traced(x)) else "FAIL: one mask replayed"


def check_script(make_unseeded, shape):
    try:
        torch.jit.script(Wrap(make_unseeded(), shape[-1]))
    except Exception as exc:  # noqa: BLE001 - any refusal is inspected below
        return "refused, points to freeze" if "dropkit.guard.freeze" in str(exc) else f"FAIL: {type(exc).__name__}"
    return "FAIL: scripted"


def check_onnx(make_unseeded, shape):
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "skipped (no onnx)"
    try:
        torch.onnx.export(Wrap(make_unseeded(), shape[-1]).train(), (torch.randn(shape),), io.BytesIO(),
                          training=torch.onnx.TrainingMode.TRAINING, dynamo=False)
    except Exception as exc:  # noqa: BLE001
        return "refused, names dropkit" if "dropkit" in str(exc) else f"FAIL: {type(exc).__name__}"
    return "FAIL: exported"


def check_checkpoint(make_unseeded, shape):
    torch.manual_seed(3)
    block = Wrap(make_unseeded(), shape[-1]).train()
    x = torch.randn(shape)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(17)
        block.zero_grad()
        y = cp.checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        y.sin().sum().backward()
        grads.append(block.fc.weight.grad.clone())
    return "ok: same gradients" if torch.equal(*grads) else "FAIL: gradients differ"


def main() -> int:
    seeded, unseeded = _modules(11), _modules(None)
    rows = []
    for name in sorted(seeded):
        make, shape = seeded[name]
        make_u, _ = unseeded[name]
        rnn = name in ("LSTM", "GRU")
        row = {"module": name}
        with torch._dynamo.config.patch(allow_rnn=rnn):
            row["compile"] = check_compile(make, shape)
            row["compile_unseeded"] = check_compile_unseeded(make_u, shape)
        for col, check in [("export", check_export), ("jit_trace", check_trace), ("jit_script", check_script),
                           ("onnx", check_onnx), ("checkpoint", check_checkpoint)]:
            try:
                row[col] = check(make_u, shape)
            except Exception as exc:  # noqa: BLE001 - a crash is a cell of the matrix
                row[col] = f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        rows.append(row)
        print(f"{name}: done", file=sys.stderr)
    cols = ["module", "compile", "compile_unseeded", "export", "jit_trace", "jit_script", "onnx", "checkpoint"]
    print_table(cols, [[r[c] for c in cols] for r in rows],
                title="dropkit.nn in training mode under the PyTorch 2 transforms (issue #12)")
    write_json("pt2_matrix", rows, torch=torch.__version__)
    return 1 if any("FAIL" in str(v) for r in rows for v in r.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
