"""Seeded streams (dropkit.seed) under every activation-checkpointing sequence, and the global generator.

Each checkpoint sequence runs twice from the same parameters and the same torch seed: once with the
checkpointing under test, once without (the reference). For ``torch.nn.Dropout`` and for dropkit
(seeded modules, and one SeedGenerator shared by every dropout) the gradients must agree; for
dropkit the reference's masks must also be the documented masks of the seeded stream
(``keep_mask(seed, stream=k)``, ``k`` the stream's call index) and both runs must leave the streams
at the same call.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
import torch.nn.functional as tF
import torch.utils.checkpoint as cp
from torch.utils._python_dispatch import TorchDispatchMode

import dropkit
import dropkit.functional as F
import dropkit.nn as dnn
from dropkit import rng
from dropkit.seed import SeedGenerator, state_tensor

P = 0.5
KINDS = ["torch", "modules", "shared"]


class SharedDrop(torch.nn.Module):
    """A dropout drawing from a SeedGenerator that other layers share."""

    def __init__(self, gen: SeedGenerator):
        super().__init__()
        self.gen = gen

    def forward(self, x):
        return F.dropout(x, P, self.training, seed=self.gen)


class Stage(torch.nn.Module):
    def __init__(self, drop):
        super().__init__()
        self.linear, self.drop = torch.nn.Linear(8, 8), drop

    def forward(self, x):
        return self.drop(torch.tanh(self.linear(x)))  # the next Linear saves this output: a wrong mask shows


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.sin(self.linear(x))


def make(kind: str) -> torch.nn.Sequential:
    torch.manual_seed(0)
    if kind == "torch":
        drops = [torch.nn.Dropout(P), torch.nn.Dropout(P)]
    elif kind == "modules":
        drops = [dnn.Dropout(P, seed=11), dnn.Dropout(P, seed=12)]
    else:
        gen = SeedGenerator(13)
        drops = [SharedDrop(gen), SharedDrop(gen)]
    return torch.nn.Sequential(Stage(drops[0]), Stage(drops[1]), Head()).train()


def _state(drop) -> torch.Tensor | None:
    if isinstance(drop, SharedDrop):
        return drop.gen.state
    return getattr(drop, "rng_state", None)


def streams(model) -> list[torch.Tensor]:
    return [s.clone() for s in (_state(m.drop) for m in model[:2]) if s is not None]


def check_documented_masks(model) -> list:
    """Forward hooks: every dropkit dropout output is ``x * keep_mask(seed, stream=k) / q``, k the stream's call."""
    handles = []
    for stage in model[:2]:
        drop = stage.drop
        if _state(drop) is None:
            continue

        def pre(mod, args):
            s = _state(mod)
            mod._expect = (int(s[0]) % 2**64, int(s[1]) % 2**64)

        def post(mod, args, out):
            seed, k = mod._expect
            x = args[0]
            keep = rng.keep_mask(x.numel(), P, seed, stream=k).view(x.shape)
            torch.testing.assert_close(out.detach(), x.detach() * keep * rng.inverted_scale(P), rtol=0, atol=0)

        handles += [drop.register_forward_pre_hook(pre), drop.register_forward_hook(post)]
    return handles


# ---------------------------------------------------------------------------
# How a forward is checkpointed
# ---------------------------------------------------------------------------
def plain(model, t):
    return model(t)


def ckpt(model, t, *, reentrant, preserve=True):
    return cp.checkpoint(model, t, use_reentrant=reentrant, preserve_rng_state=preserve)


def nested(model, t, *, outer, inner):
    def region(u):
        return model[2](model[1](cp.checkpoint(model[0], u, use_reentrant=inner)))

    return cp.checkpoint(region, t, use_reentrant=outer)


def sequential(model, t, *, reentrant):
    return cp.checkpoint_sequential(model, 3, t, use_reentrant=reentrant)  # the first two segments checkpointed


WRAPS = {
    "reentrant": functools.partial(ckpt, reentrant=True),
    "non_reentrant": functools.partial(ckpt, reentrant=False),
    "nested_reentrant_in_non_reentrant": functools.partial(nested, outer=False, inner=True),
    "nested_non_reentrant_in_reentrant": functools.partial(nested, outer=True, inner=False),
    "nested_non_reentrant_in_non_reentrant": functools.partial(nested, outer=False, inner=False),
    "nested_reentrant_in_reentrant": functools.partial(nested, outer=True, inner=True),
    "sequential_reentrant": functools.partial(sequential, reentrant=True),
    "sequential_non_reentrant": functools.partial(sequential, reentrant=False),
}


# ---------------------------------------------------------------------------
# The sequences: each takes f (a forward, checkpointed or not), the model and two micro-batches
# ---------------------------------------------------------------------------
def once(f, model, xa, xb):
    f(xa).sum().backward()


def retain_graph_twice(f, model, xa, xb):
    loss = f(xa).sum()
    loss.backward(retain_graph=True)
    loss.backward()


def double_backward(f, model, xa, xb):
    (g,) = torch.autograd.grad(f(xa).sum(), xa, create_graph=True)
    g.pow(2).sum().backward()


def accumulate_b_then_a(f, model, xa, xb):
    la, lb = f(xa).sum(), f(xb).sum()
    lb.backward()
    la.backward()


def accumulate_a_then_b(f, model, xa, xb):
    la, lb = f(xa).sum(), f(xb).sum()
    la.backward()
    lb.backward()


def reseed_per_micro_batch(f, model, xa, xb):
    torch.manual_seed(7)
    la = f(xa).sum()
    torch.manual_seed(7)  # both live forwards start from the same generator state
    lb = f(xb).sum()
    la.backward()
    lb.backward()


def unbackpropagated_then_reseed(f, model, xa, xb):
    torch.manual_seed(7)
    f(xa)  # a forward that is never backpropagated (its graph is freed)
    torch.manual_seed(7)
    f(xb).sum().backward()


def reload_reseed_rerun(f, model, xa, xb):
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    first = f(xa).sum()  # kept alive, never backpropagated (the reload writes the parameters it saved)
    model.load_state_dict(saved)  # the seeded modules' streams go back to where they were
    torch.manual_seed(7)
    f(xb).sum().backward()  # the same streams, the same generator state as `first`
    del first


TWO_MODES = ["reentrant", "non_reentrant"]
SEQUENCES = (
    [(once, w) for w in WRAPS]
    + [(retain_graph_twice, w) for w in TWO_MODES]
    + [(double_backward, "non_reentrant")]  # reentrant checkpoint refuses torch.autograd.grad itself
    + [(s, w) for s in (accumulate_b_then_a, accumulate_a_then_b) for w in TWO_MODES]
    + [(s, w) for s in (reseed_per_micro_batch, unbackpropagated_then_reseed, reload_reseed_rerun) for w in TWO_MODES]
)


def run(kind, sequence, wrap, *, check_masks=False):
    """Run ``sequence`` on a fresh model; returns the gradients, the streams' final states and the global RNG."""
    model = make(kind)
    handles = check_documented_masks(model) if check_masks else []
    torch.manual_seed(100)
    xa, xb = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    sequence(functools.partial(wrap, model), model, xa, xb)
    for h in handles:
        h.remove()
    grads = [p.grad for p in model.parameters()] + [xa.grad, xb.grad]
    return grads, streams(model), torch.get_rng_state()


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "sequence,wrap", SEQUENCES, ids=[f"{s.__name__}-{w}" for s, w in SEQUENCES]
)
def test_checkpoint_sequence_matches_the_unchecked_run(kind, sequence, wrap):
    want, want_streams, want_rng = run(kind, sequence, plain, check_masks=kind != "torch")
    got, got_streams, got_rng = run(kind, sequence, WRAPS[wrap])
    assert_same(got, want)
    assert_same(got_streams, want_streams)  # the recompute replays, it does not advance the stream
    assert torch.equal(got_rng, want_rng)


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_without_rng_preservation_torch_is_wrong_and_seeded_dropkit_exact(kind, reentrant):
    want, want_streams, _ = run(kind, once, plain)
    got, got_streams, _ = run(kind, once, functools.partial(ckpt, reentrant=reentrant, preserve=False))
    if kind == "torch":  # the recompute draws other masks: torch's gradient belongs to another sample
        assert any(not torch.allclose(g, w) for g, w in zip(got, want))
    else:  # a seeded draw is matched by its region, not by the generator: exact
        assert_same(got, want)
        assert_same(got_streams, want_streams)


# ---------------------------------------------------------------------------
# Selective activation checkpointing: the policy saves or recomputes each dropkit op
# ---------------------------------------------------------------------------
DROPKIT_OPS = ["next_key", "dropout"]


class _SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "dropkit":
            self.names.add(func._opname)
        return func(*args, **(kwargs or {}))


def test_the_sac_cases_cover_every_dropkit_op_of_the_region():
    for kind in ("modules", "shared"):
        model = make(kind)
        with _SeenOps() as seen:
            model(torch.randn(4, 8, requires_grad=True))
        assert seen.names == set(DROPKIT_OPS), seen.names


def _sac_region(model, t):
    return tF.dropout(model(t), 0.2)  # an unseeded random op after the seeded ones, inside the region


def _sac(saved: frozenset, model, t):
    def policy(ctx, op, *args, **kwargs):
        if getattr(op, "namespace", None) == "dropkit" and op._opname in saved:
            return cp.CheckpointPolicy.MUST_SAVE
        return cp.CheckpointPolicy.PREFER_RECOMPUTE

    context = functools.partial(cp.create_selective_checkpoint_contexts, policy)
    return cp.checkpoint(functools.partial(_sac_region, model), t, use_reentrant=False, context_fn=context)


SAC_CASES = [frozenset()] + [frozenset([op]) for op in DROPKIT_OPS] + [frozenset(DROPKIT_OPS)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("saved", SAC_CASES, ids=["recompute_all"] + [f"save_{o}" for o in DROPKIT_OPS] + ["save_all"])
def test_selective_checkpointing_saving_or_recomputing_each_dropkit_op(kind, saved):
    want, want_streams, want_rng = run(kind, once, lambda model, t: _sac_region(model, t))
    got, got_streams, got_rng = run(kind, once, functools.partial(_sac, saved))
    assert_same(got, want)
    assert_same(got_streams, want_streams)
    assert torch.equal(got_rng, want_rng)


@pytest.mark.parametrize("reentrant", [True, False])
def test_the_records_of_a_region_die_with_its_graph(reentrant):
    import gc

    from dropkit import seed as seed_module

    gc.collect()
    before = len(seed_module._REGIONS)
    model = make("shared")
    x = torch.randn(4, 8, requires_grad=True)
    loss = cp.checkpoint(model, x, use_reentrant=reentrant).sum()
    assert len(seed_module._REGIONS) == before + 1  # one region, recorded while its forward ran
    del loss
    gc.collect()
    assert len(seed_module._REGIONS) == before
    model(x).sum().backward()  # outside any checkpoint nothing is recorded
    assert len(seed_module._REGIONS) == before


# ---------------------------------------------------------------------------
# Refusals: never a silently different mask
# ---------------------------------------------------------------------------
def test_a_seeded_draw_in_backward_outside_a_recompute_is_refused():
    gen = SeedGenerator(5)
    x = torch.randn(4, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: F.dropout(g, 0.5, seed=gen))
    with pytest.raises(RuntimeError, match="cannot be identified"):
        y.sum().backward()
    assert gen.calls == 0


def test_a_seeded_draw_in_a_backward_hook_inside_a_reentrant_region_is_refused():
    gen = SeedGenerator(5)

    def region(t):
        y = F.dropout(t * 2, 0.5, seed=gen)
        if y.requires_grad:  # only in the recompute: the reentrant forward runs under no_grad
            y.register_hook(lambda g: F.dropout(g, 0.5, seed=gen))  # runs in the node's own inner backward
        return y

    x = torch.randn(8, requires_grad=True)
    y = cp.checkpoint(region, x, use_reentrant=True)
    with pytest.raises(RuntimeError, match="cannot be identified"):
        y.sum().backward()
    assert gen.calls == 1


def test_a_recompute_that_draws_more_than_its_forward_is_refused():
    gen, calls = SeedGenerator(5), []

    def region(t):
        calls.append(1)
        out = F.dropout(t, 0.5, seed=gen)
        return F.dropout(out, 0.5, seed=gen) if len(calls) > 1 else out  # not deterministic: one more draw

    x = torch.randn(8, requires_grad=True)
    y = cp.checkpoint(region, x, use_reentrant=True)
    with pytest.raises(RuntimeError, match="more often than the region's forward"):
        y.sum().backward()


# ---------------------------------------------------------------------------
# torch's global generator: a seeded call never touches it
# ---------------------------------------------------------------------------
SEEDED_CALLS = {  # name -> (build, call): building a module draws its weights, so it happens before the check
    "module": (lambda: dnn.Dropout(0.5, seed=3).train(), lambda m, x: m(x)),
    "generator": (lambda: SeedGenerator(3), lambda g, x: F.dropout(x, 0.5, seed=g)),
    "int": (lambda: 3, lambda s, x: F.dropout(x, 0.5, seed=s)),
    "gaussian": (lambda: SeedGenerator(3), lambda g, x: F.gaussian_dropout(x, 0.3, seed=g)),
    "module_eval": (lambda: dnn.Dropout(0.5, seed=3).eval(), lambda m, x: m(x)),
    "lstm": (
        lambda: dnn.LSTM(8, 4, dropout=0.3, recurrent_dropout=0.2, weight_dropout=0.2, seed=3).train(),
        lambda m, x: m(x.view(1, 4, 8)),
    ),
}


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "grad"])
@pytest.mark.parametrize("call", sorted(SEEDED_CALLS))
def test_a_seeded_call_leaves_the_global_generator_untouched(call, context):
    build, fn = SEEDED_CALLS[call]
    obj = build()
    x = torch.randn(4, 8, requires_grad=context == "grad")
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad}[context]
    before = torch.get_rng_state()
    with ctx():
        fn(obj, x)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_seeded_module_inside_checkpoint_leaves_the_global_generator_untouched():
    model = make("modules")
    x = torch.randn(4, 8, requires_grad=True)
    before = torch.get_rng_state()
    cp.checkpoint(model, x, use_reentrant=False).sum().backward()
    assert torch.equal(torch.get_rng_state(), before)


def _takes_seed(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return "seed" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


PUBLIC_SEEDED = sorted(
    {f"functional.{n}" for n in F.__all__ if _takes_seed(getattr(F, n))}
    | {f"nn.{n}" for n in dnn.__all__ if _takes_seed(getattr(dnn, n))}
)


def test_every_public_seed_argument_is_listed():
    assert {"functional.dropout", "functional.gaussian_dropout", "nn.Dropout", "nn.LSTM"} <= set(PUBLIC_SEEDED)


@pytest.mark.parametrize("name", PUBLIC_SEEDED)
def test_every_seed_docstring_says_what_a_seeded_call_does_to_the_global_generator(name):
    space, attr = name.split(".")
    obj = getattr(F if space == "functional" else dnn, attr)
    doc = " ".join(inspect.getdoc(obj).split())
    assert "never touches torch's global generator" in doc, name


def test_no_public_signature_takes_stream():
    import dropkit.distributed as dist

    for space in (F, dnn, dist):
        for n in getattr(space, "__all__", []):
            obj = getattr(space, n)
            if callable(obj):
                target = obj.__init__ if inspect.isclass(obj) else obj
                try:
                    params = inspect.signature(target).parameters
                except (TypeError, ValueError):
                    continue
                assert "stream" not in params, f"{space.__name__}.{n}"


# ---------------------------------------------------------------------------
# SeedGenerator state and validation
# ---------------------------------------------------------------------------
def test_calls_is_the_unsigned_count_past_2_63():
    gen = SeedGenerator(state=state_tensor(1, 2**63 - 1))
    assert gen.calls == 2**63 - 1
    F.dropout(torch.ones(8), 0.5, seed=gen)
    assert gen.calls == 2**63 and int(gen.state[1]) < 0  # int64 storage, unsigned meaning
    assert "calls=9223372036854775808" in repr(gen)
    want = F.dropout(torch.ones(8), 0.5, seed=rng.key_tensor(1, 2**63))
    assert torch.equal(F.dropout(torch.ones(8), 0.5, seed=gen), want)
    gen = SeedGenerator(state=state_tensor(1, 2**64 - 1))
    F.dropout(torch.ones(8), 0.5, seed=gen)
    assert gen.calls == 0  # wraps modulo 2**64
    module = dnn.Dropout(0.5, seed=1)
    module._calls = 2**64 - 2
    assert module._calls == 2**64 - 2


@pytest.mark.parametrize("calls", [-1, 2**64])
def test_state_tensor_rejects_calls_outside_the_unsigned_range(calls):
    with pytest.raises(ValueError, match="`calls`"):
        state_tensor(1, calls)


INPLACE_CALLS = {
    "dropout": lambda t, gen: F.dropout(t, 0.5, inplace=True, seed=gen),
    "dropout_p1": lambda t, gen: F.dropout(t, 1.0, inplace=True, seed=gen),
    "dropout_noise_shape": lambda t, gen: F.dropout(t, 0.5, inplace=True, noise_shape=(2, 3, 1, 1), seed=gen),
    "dropout1d": lambda t, gen: F.dropout1d(t.flatten(2), 0.5, inplace=True, seed=gen),
    "dropout2d": lambda t, gen: F.dropout2d(t, 0.5, inplace=True, seed=gen),
    "dropout3d": lambda t, gen: F.dropout3d(t.unsqueeze(2), 0.5, inplace=True, seed=gen),
    "alpha": lambda t, gen: F.alpha_dropout(t, 0.5, inplace=True, seed=gen),
    "feature_alpha": lambda t, gen: F.feature_alpha_dropout(t, 0.5, inplace=True, seed=gen),
    "drop_block2d": lambda t, gen: F.drop_block2d(t, 0.2, 2, inplace=True, seed=gen),
    "drop_block3d": lambda t, gen: F.drop_block3d(t.unsqueeze(2), 0.2, 1, inplace=True, seed=gen),
    "locked": lambda t, gen: F.locked_dropout(t, 0.5, inplace=True, seed=gen),
}


def test_the_inplace_cases_cover_every_public_inplace_variant():
    with_inplace = {n for n in F.__all__ if "inplace" in inspect.signature(getattr(F, n)).parameters}
    with_inplace.discard("masked_scale")  # applies a given MaskSpec: draws no key
    covered = {
        "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
        "drop_block2d", "drop_block3d", "locked_dropout",
    }  # fmt: skip
    assert with_inplace <= covered, with_inplace - covered


@pytest.mark.parametrize("call", sorted(INPLACE_CALLS))
@pytest.mark.parametrize("seeded", [True, False])
def test_inplace_on_a_leaf_that_requires_grad_raises_before_the_key_is_drawn(call, seeded):
    gen = SeedGenerator(9) if seeded else None
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    before_rng, before_data = torch.get_rng_state(), leaf.detach().clone()
    with pytest.raises(RuntimeError, match="in-place"):
        INPLACE_CALLS[call](leaf, gen)
    assert torch.equal(torch.get_rng_state(), before_rng)
    assert torch.equal(leaf.detach(), before_data)
    if seeded:
        assert gen.calls == 0


def test_seed_generator_with_a_generator_is_refused():
    with pytest.raises(ValueError, match="generator"):
        F.dropout(torch.ones(4), 0.5, seed=SeedGenerator(1), generator=torch.Generator())


def test_a_reused_generator_draws_consecutive_streams():
    gen = SeedGenerator(21)
    x = torch.ones(64)
    outs = [F.dropout(x, 0.5, seed=gen) for _ in range(3)]
    for k, out in enumerate(outs):
        assert torch.equal(out, F.dropout(x, 0.5, seed=rng.key_tensor(21, k)))
    assert dropkit.SeedGenerator is SeedGenerator and gen.calls == 3


def test_next_key_returns_a_fresh_tensor_not_the_shared_key_cache():
    """An op's output is its caller's: compiled code writes later results into a dead output's memory (AOTInductor
    reused next_key's output for a cat), which must not rewrite the key that key_tensor shares for eager calls."""
    state = torch.tensor([3, 0], dtype=torch.int64)
    key = torch.ops.dropkit.next_key(state)
    assert torch.equal(key, dropkit.rng.key_tensor(3, 0)) and key is not dropkit.rng.key_tensor(3, 0)
    key.fill_(7)  # what a reused output buffer receives
    assert dropkit.rng.key_tensor(3, 0).tolist() == list(dropkit.rng.key_words(3, 0))
    x = torch.ones(64)
    assert torch.equal(dropkit.functional.dropout(x, 0.5, seed=3), torch.ops.dropkit.dropout(
        x, torch.tensor(dropkit.rng.key_words(3, 0)), 0.5, 2.0, None, 0))  # fmt: skip
