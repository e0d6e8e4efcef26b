"""Real models (transformers, timm, torchvision) converted to dropkit: tiny configurations built locally, no weights.

These packages are not dependencies of dropkit; CI runs this file in the venv of the newest torch, which has them
(.ci/run). Each model, after ``replace_dropout(model, seed=...)`` and inside ``dropkit.patch(seed=...)``:
every random op of a training step is dropkit's (a dispatch mode records the ops that draw random numbers), a
step runs eager, compiled, checkpointed and under bf16 autocast, eval-mode loss equals the original's, and
``dropkit.mc`` / ``dropkit.guard`` run on it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit.lab import zoo

transformers = pytest.importorskip("transformers", reason="transformers is installed in CI's newest-torch venv")
timm = pytest.importorskip("timm", reason="timm is installed in CI's newest-torch venv")
torchvision = pytest.importorskip("torchvision", reason="torchvision is installed in CI's newest-torch venv")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class _DropBlockCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.drop = torchvision.ops.DropBlock2d(0.2, 3)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.drop(self.conv(x).relu()).mean((2, 3)))


def _bert(impl):
    return zoo.tiny_bert((12,), 3, attn_implementation=impl)


def _gpt2(impl):
    return zoo.tiny_gpt2((12,), 3, attn_implementation=impl)


def _text_batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 12, generator=g), torch.randint(0, 3, (4,), generator=g)


def _image_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


MODELS = {
    "bert-eager": (lambda: _bert("eager"), _text_batch),
    "bert-sdpa": (lambda: _bert("sdpa"), _text_batch),
    "gpt2-eager": (lambda: _gpt2("eager"), _text_batch),
    "gpt2-sdpa": (lambda: _gpt2("sdpa"), _text_batch),
    "vit-timm": (lambda: zoo.tiny_vit((3, 32, 32), 10), _image_batch),
    "efficientnet-torchvision": (lambda: zoo.tiny_efficientnet((3, 32, 32), 10), _image_batch),
    "dropblock-torchvision": (_DropBlockCNN, _image_batch),
}


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


class _RandomOps(TorchDispatchMode):
    """Records every op that draws random numbers (tagged nondeterministic_seeded) and every dropkit op."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "dropkit" or torch.Tag.nondeterministic_seeded in func.tags:
            self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


#: Random ops a converted model may still run: none from torch's generator but the ones that draw dropkit's keys.
ALLOWED = {"dropkit.dropout", "dropkit.dropout_", "dropkit.next_key", "dropkit.keep_mask", "dropkit.uniform",
           "dropkit.drop_block"}  # fmt: skip


def _converted(name):
    make, batch = MODELS[name]
    torch.manual_seed(0)
    original = make()
    model = copy.deepcopy(original)
    report = dropkit.nn.replace_dropout(model, seed=1)
    return original, model, report, batch()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_draws_only_dropkits_randomness_and_trains(name):
    original, model, report, batch = _converted(name)
    assert report.replaced and not report.not_replaced, str(report)
    # eval: the converted model computes what the original computes (before a step moves BatchNorm's statistics)
    original.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_loss(model, batch), _loss(original, batch))
    model.train()
    mode = _RandomOps()
    with dropkit.patch(seed=2), mode:
        loss = _loss(model, batch)
        loss.backward()
    assert mode.ops and mode.ops <= ALLOWED, sorted(mode.ops)
    assert "dropkit.dropout" in mode.ops or "dropkit.drop_block" in mode.ops
    assert torch.isfinite(loss)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpointed_and_autocast_steps_match_eager(name):
    _, model, _, batch = _converted(name)
    model.train()
    state = copy.deepcopy(model.state_dict())

    def grads(fn):
        model.load_state_dict(state)
        model.zero_grad()
        with dropkit.patch(seed=3) as p:
            loss = fn(p)
            loss.backward()
        return loss.detach(), [q.grad.clone() for q in model.parameters() if q.grad is not None]

    plain_loss, plain = grads(lambda p: _loss(model, batch))
    ck_loss, ck = grads(lambda p: checkpoint(lambda *b: _loss(model, b), *batch, use_reentrant=False,
                                             context_fn=p.checkpoint_context_fn))  # fmt: skip
    assert torch.equal(plain_loss, ck_loss)
    for a, b in zip(plain, ck):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf_loss, _ = grads(lambda p: _loss(model, batch))
    assert torch.isfinite(bf_loss)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert-eager", "gpt2-sdpa", "vit-timm", "dropblock-torchvision"])
def test_compiled_step_matches_eager(name):
    _, model, _, batch = _converted(name)
    model.train()
    state = copy.deepcopy(model.state_dict())
    torch._dynamo.reset()
    try:
        with dropkit.patch(seed=4):
            eager = _loss(model, batch)
        model.load_state_dict(state)
        with dropkit.patch(seed=4):
            compiled = torch.compile(lambda *b: _loss(model, b))(*batch)
        compiled.backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert-sdpa", "vit-timm"])
def test_mc_and_guard_run_on_the_converted_model(name):
    _, model, _, (x, _) = _converted(name)
    r = dropkit.mc.predict(model, x, samples=4, seed=0)
    assert r.mean.shape[0] == x.shape[0]
    report = dropkit.guard.check_inference(model.train(), (x,), runs=2)
    assert not report.deterministic
    with dropkit.guard.inference(model):
        dropkit.guard.assert_deterministic(model, (x,), runs=2)


@pytest.mark.slow
def test_the_lab_trains_a_transformer_end_to_end(tmp_path):
    """docs/models.md's command at tiny size: compare converts the BERT's dropout and trains both settings."""
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dropkit", "compare", "--model", "dropkit.lab.zoo:tiny_bert", "--dataset", "digits",
           "--p", "0.1", "--epochs", "1", "--seeds", "1", "--train-size", "256", "--val-size", "128",
           "--optimizer", "adamw", "--lr", "3e-3", "--batch-size", "64", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dropout p=0.1" in r.stdout and (out / "report.md").is_file()
    results = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    assert len(results) == 2
