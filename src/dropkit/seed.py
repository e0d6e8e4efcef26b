"""One seed concept for every dropkit op: an ``int``, a :class:`SeedGenerator`, or ``None``.

Every random dropkit op takes a **key**: four 32-bit words ``(lo(seed), hi(seed),
lo(stream), hi(stream))`` held in an int64 tensor of shape ``(4,)`` on the CPU
(:func:`dropkit.rng.key_tensor`). The key is data, not a Python int, so torch.compile,
torch.export and TorchScript tracing keep it in the graph and draw a fresh one per call.
:func:`resolve_key` turns the user's ``seed=`` into a key:

* ``int``: the key ``(seed, stream 0)``: the same mask on every call and every device;
* :class:`SeedGenerator` (what modules built with ``seed=`` own): call ``k`` uses
  ``(seed, stream=k)``; its state ``[seed, k]`` is an int64 tensor that ``state_dict``,
  torch.compile (a buffer mutation), torch.export and activation checkpointing handle;
* ``None``: two words drawn from ``generator`` or torch's default CPU generator, as torch's
  own dropout draws its seed, so ``torch.manual_seed`` makes runs reproducible and
  ``torch.utils.checkpoint`` (which restores that generator) recomputes the same masks.

.. _seeded-global-rng:

**A seeded call never touches torch's global generator** (the sentence every ``seed=`` docstring repeats): an int
seed, a :class:`SeedGenerator` and a module built with ``seed=`` neither draw from nor read
``torch.default_generator``, in training or inference, with or without grad, inside or outside
activation checkpointing. Only ``seed=None`` draws (two 32-bit words per call).

Activation checkpointing and seeded state: a checkpointed region runs twice, once in forward
and once in backward to rebuild what was not saved (the recompute), and the recompute must
draw the forward's masks. A :class:`SeedGenerator` has advanced by then, so a seeded draw
made *inside a checkpointed region* remembers its call index ``k`` on that region (the
region object ``torch.utils.checkpoint`` keeps alive exactly as long as the region's autograd
graph: the reentrant ``CheckpointFunction`` node, or the non-reentrant checkpoint frame). A
draw made by the recompute of region ``R`` takes the ``j``-th key that ``R``'s forward drew
from the same state (``j`` counts per recompute: a second backward, ``retain_graph``, double
backward and nested regions each replay from the start) and leaves the state as it is. So the
match needs no random number (a reseed, two live forwards, a reload, any backward order or
``preserve_rng_state=False`` change nothing) and a selective-checkpointing policy may save or
recompute any dropkit op. A draw during backward that is neither (a seeded call in a backward
hook, or a checkpoint recompute inside a compiled graph) raises instead of silently using
another mask: docs/pt2.md lists what is exact and what is refused.
"""

from __future__ import annotations

import array
import numbers
import sys
import threading
import weakref
from types import CodeType, FrameType

import torch
import torch.utils.checkpoint as _checkpoint

from dropkit.rng import check_key_args, check_seed, key_tensor

__all__ = [
    "SeedGenerator",
    "resolve_key",
    "next_key",
    "sub_key",
    "state_tensor",
    "check_seed_arg",
]

_INT64 = 1 << 64
_M32 = 0xFFFFFFFF
# No public API names the running backward pass (its graph task; -1 outside backward): torch's own checkpoint reads
# the same private function. One name, used by the recompute lookup and by the refusal of draws during backward.
_graph_task_id = torch._C._current_graph_task_id  # no public API names the running backward pass (see above)


def state_tensor(seed: int, calls: int = 0) -> torch.Tensor:
    """The int64 state ``[seed, calls]`` (two's complement for values >= 2**63).

    Example:
        >>> state_tensor(2**64 - 1, 3)
        tensor([-1,  3])
    """
    seed, calls = check_seed(seed), check_seed(calls, "calls")
    return torch.tensor([_to_int64(seed), _to_int64(calls)], dtype=torch.int64)


def _to_int64(v: int) -> int:
    return v - _INT64 if v >= 1 << 63 else v


class SeedGenerator:
    r"""A seeded stream of keys, in the manner of Keras' ``SeedGenerator``: call ``k`` uses ``(seed, stream=k)``.

    Pass it as ``seed=`` to any dropkit op; every call advances it. Its state is the int64
    tensor ``[seed, k]`` (:attr:`state`), which modules built with ``seed=`` register as the
    ``rng_state`` buffer, so a run resumed from a ``state_dict`` draws the masks an
    uninterrupted run would, and torch.compile / torch.export see the advance as a buffer
    mutation. A seeded call never touches torch's global generator, and
    inside ``torch.utils.checkpoint`` the recompute reuses the forward's keys (module docs).

    Args:
        seed: an int in ``[0, 2**64)``.
        state: an existing state tensor to draw from (shared, advanced in place) instead.

    Example:
        >>> gen = dropkit.SeedGenerator(42)
        >>> a = dropkit.functional.dropout(torch.ones(4, 4), 0.5, seed=gen)   # (42, stream 0)
        >>> b = dropkit.functional.dropout(torch.ones(4, 4), 0.5, seed=gen)   # (42, stream 1)
    """

    __slots__ = ("state",)

    def __init__(self, seed: int | None = None, *, state: torch.Tensor | None = None):
        if state is None:
            if seed is None:
                raise TypeError(
                    "SeedGenerator needs a `seed` (an int in [0, 2**64)) or a `state` tensor; received neither"
                )
            state = state_tensor(seed)
        elif not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or state.shape != (2,):
            raise TypeError(f"`state` must be an int64 tensor of shape (2,) holding [seed, calls]; received {state!r}")
        self.state = state

    @property
    def seed(self) -> int:
        return int(self.state[0]) % _INT64

    @property
    def calls(self) -> int:
        """How many keys have been drawn (the stream of the next call): the unsigned count in ``[0, 2**64)``."""
        return int(self.state[1]) % _INT64

    def next_key(self) -> torch.Tensor:
        """The key of the next call, ``(seed, calls)``; advances the state (see the module docs for checkpointing)."""
        return next_key(self.state)

    def __repr__(self) -> str:
        return f"SeedGenerator(seed={self.seed}, calls={self.calls})"


def next_key(state: torch.Tensor) -> torch.Tensor:
    """Draw the next key from a ``[seed, calls]`` state tensor and advance it: the op ``dropkit::next_key``.

    Inside a checkpointed region's recompute it returns the key the forward drew instead and
    does not advance (module docs). Never touches torch's global generator.

    One case cannot be served: activation checkpointing *inside* a compiled region whose
    partitioner recomputes the draw in backward (no Python frame tells which region is being
    recomputed there); that raises the "cannot be identified" error instead of using another
    mask. Use ``seed=None`` there (the key then comes from the graph's own ``randint``, which the
    partitioner replays exactly), or checkpoint outside the compiled region.

    Example:
        >>> state = dropkit.seed.state_tensor(7)
        >>> next_key(state), state       # key (7, stream 0); state is now [7, 1]
    """
    if torch.compiler.is_compiling():
        return torch.ops.dropkit.next_key.default(state)
    # Decide here, not in the op: a selective-checkpointing policy may serve the op from its cache in the
    # recompute, and the per-recompute position must advance all the same.
    _PENDING.value = (state, _plan(state))
    try:
        return torch.ops.dropkit.next_key.default(state)  # registered by dropkit.ops (imported by `import dropkit`)
    finally:
        _PENDING.value = None


def resolve_key(
    seed: int | SeedGenerator | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The key tensor ``(4,)`` of one call from ``seed`` / ``generator`` (see the module docs).

    Example:
        >>> resolve_key(5)                          # the key (5, stream 0)
        >>> resolve_key(None, torch.Generator())    # two words drawn from the generator
    """
    if isinstance(seed, SeedGenerator):
        if generator is not None:
            raise ValueError("a SeedGenerator `seed` carries its own stream; do not pass `generator` with it")
        return seed.next_key()
    if isinstance(seed, torch.Tensor):  # a key tensor (dropkit.rng.key_tensor / sub_key)
        return seed
    if seed is not None:
        return key_tensor(seed)
    if torch.compiler.is_compiling():
        words = torch.randint(0, 1 << 32, (2,), dtype=torch.int64)
        return torch.cat([words, torch.zeros(2, dtype=torch.int64)])
    check_key_args(None, generator)
    words = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=generator)
    return torch.cat([words, torch.zeros(2, dtype=torch.int64)])  # ops, not ints: jit.trace and vmap record them


def check_seed_arg(seed: object, generator: object = None) -> None:
    """Validate ``seed`` (int, :class:`SeedGenerator`, key tensor or None) and ``generator`` without drawing.

    Example:
        >>> check_seed_arg(3)                 # fine
        >>> check_seed_arg(-1)                # ValueError naming `seed`
    """
    if generator is None and (seed is None or (type(seed) is int and 0 <= seed < _INT64)):  # the common calls
        return
    if isinstance(seed, (SeedGenerator, torch.Tensor)):
        check_key_args(None, generator)
        if generator is not None:
            raise ValueError("pass either `seed` or `generator`, not both; received both")
        if isinstance(seed, torch.Tensor) and (
            seed.dtype != torch.int64 or seed.shape != (4,) or seed.device.type != "cpu"
        ):
            raise ValueError(
                "a tensor `seed` must be a dropkit key: an int64 tensor of shape (4,) on the CPU "
                f"(dropkit.rng.key_tensor); received {seed.dtype} {tuple(seed.shape)} on {seed.device}"
            )
        return
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(
            f"`seed` must be an int in [0, 2**64), a dropkit.SeedGenerator or None; received {seed!r} "
            f"({type(seed).__name__})"
        )
    check_key_args(seed, generator)


def sub_key(key: torch.Tensor, index: int) -> torch.Tensor:
    """The key of sub-stream ``index`` (< 2**16) of ``key``: stream ``(stream << 16) | index`` (tensor ops, traceable).

    One key per forward, then one sub-stream per mask: how :class:`dropkit.nn.LSTM` keys its masks.

    Example:
        >>> sub_key(dropkit.rng.key_tensor(1, 2), 3)   # the key (1, stream (2 << 16) | 3)
    """
    if not 0 <= index < 1 << 16:
        raise ValueError(f"`index` must be in [0, 2**16); received {index}")
    lo, hi = key[2], key[3]
    new_lo = ((lo << 16) & _M32) | index
    new_hi = ((hi << 16) | (lo >> 16)) & _M32
    return torch.stack([key[0], key[1], new_lo, new_hi])


# ---------------------------------------------------------------------------
# The eager implementation of dropkit::next_key (registered in dropkit.ops), checkpoint-aware
# ---------------------------------------------------------------------------
# torch.utils.checkpoint has no public API that tells code running inside a checkpointed region which
# region it is and whether this run is the region's recompute (missing: a region handle with an
# `is_recompute` flag, as SelectiveCheckpointContext has for SAC policies). dropkit reads it from the call
# stack instead: the frames of checkpoint's own functions, recognised by their code objects, and the
# region object each holds (reentrant: the CheckpointFunction node `ctx`; non-reentrant: the
# _CheckpointFrame `new_frame` / `frame`, plus its recompute id `gid`). If a future torch renames these,
# no region is found: forward draws are then plain draws, and a recompute's draw (made during backward)
# is refused by the graph-task check below, never served with another key.
_FWD_REENTRANT, _REC_REENTRANT, _FWD, _REC = range(4)


def _checkpoint_codes() -> dict[CodeType, int]:
    codes: dict[CodeType, int] = {}
    fn = getattr(_checkpoint, "CheckpointFunction", None)
    if fn is not None:
        codes[fn.forward.__code__] = _FWD_REENTRANT
        codes[fn.backward.__code__] = _REC_REENTRANT
    # the function that holds the non-reentrant generator `gen` while the region's forward runs: `checkpoint`
    # itself up to torch 2.13, its helper `_checkpoint_impl` from 2.14
    for fn in (
        getattr(_checkpoint.checkpoint, "__wrapped__", _checkpoint.checkpoint),
        getattr(_checkpoint, "_checkpoint_impl", None),
    ):
        code = getattr(fn, "__code__", None)
        if code is not None and "gen" in code.co_varnames:
            codes[code] = _FWD
    init = getattr(getattr(_checkpoint, "_checkpoint_hook", None), "__init__", None)
    for const in getattr(getattr(init, "__code__", None), "co_consts", ()):
        if isinstance(const, CodeType) and const.co_name == "unpack_hook":
            codes[const] = _REC
    return codes


_CODES = _checkpoint_codes()
_AUTOGRAD_BACKWARD = torch.autograd.backward.__code__


class _Region:
    """What one checkpointed region's forward drew: per state tensor, the call indices in order."""

    __slots__ = ("drawn", "replayed", "__weakref__")

    def __init__(self) -> None:
        self.drawn: dict[int, tuple[torch.Tensor, list[int]]] = {}  # id(state) -> (state, [k, ...])
        self.replayed: dict[object, dict[int, int]] = {}  # recompute id -> id(state) -> keys replayed so far


_REGIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # region object -> _Region, dies with the graph


class _Plan:
    """Where a draw happens: ``k`` to replay (a recompute) or ``None`` (a forward draw), and the forward regions
    (innermost first) whose records get the key."""

    __slots__ = ("k", "forward_regions")

    def __init__(self, k: int | None, forward_regions: list[object]) -> None:
        self.k, self.forward_regions = k, forward_regions


def _regions() -> tuple[list[object], tuple[object, object] | None]:
    """The checkpoint regions around the caller, innermost first, up to the innermost recompute (if any)."""
    forward: list[object] = []
    f: FrameType | None = sys._getframe(2)
    child: FrameType | None = None
    while f is not None:
        kind = _CODES.get(f.f_code)
        if kind is not None:
            if kind == _FWD_REENTRANT:
                forward.append(f.f_locals["ctx"])
            elif kind == _FWD:
                gen = f.f_locals.get("gen")  # bound only on the non-reentrant branch
                if gen is not None and gen.gi_frame is not None:
                    forward.append(gen.gi_frame.f_locals["new_frame"])
            elif kind == _REC:
                return forward, (f.f_locals["frame"], f.f_locals["gid"])
            elif child is not None and child.f_code is _AUTOGRAD_BACKWARD:
                return [], None  # the reentrant node's own backward of the recomputed graph: not its recompute
            else:  # _REC_REENTRANT: one recompute per backward pass (graph task) of the CheckpointFunction node
                return forward, (f.f_locals["ctx"], _graph_task_id())
        child, f = f, f.f_back
    return forward, None


def _plan(state: torch.Tensor) -> _Plan:
    forward, recompute = _regions()
    if recompute is None:
        return _Plan(None, forward)
    region_obj, rec_id = recompute
    region = _REGIONS.get(region_obj)
    drawn = None if region is None else region.drawn.get(id(state))
    replayed = None if region is None else region.replayed.setdefault(rec_id, {})
    j = 0 if replayed is None else replayed.get(id(state), 0)
    if drawn is None or replayed is None or j >= len(drawn[1]):
        raise RuntimeError(
            "dropkit: the recompute of a torch.utils.checkpoint region drew a key from a seeded stream "
            f"(seed=<SeedGenerator> / a module built with seed=) more often than the region's forward did ({j + 1} > "
            f"{0 if drawn is None else len(drawn[1])}): the region does not run the same ops twice. Refusing to "
            "recompute with a different mask (the gradient would be wrong)."
        )
    replayed[id(state)] = j + 1
    return _Plan(drawn[1][j], forward)


class _Pending(threading.local):
    value: tuple[torch.Tensor, _Plan] | None = None


_PENDING = _Pending()


def next_key_impl(state: torch.Tensor) -> torch.Tensor:
    """Read ``[seed, k]``, return the key ``(seed, k)`` and advance ``k``; in a recompute, the forward's key instead."""
    if state.dtype != torch.int64 or state.shape != (2,):
        raise TypeError(
            f"dropkit::next_key: `state` must be an int64 tensor [seed, calls]; received {state.dtype} {tuple(state.shape)}"
        )
    pending = _PENDING.value
    if pending is not None and pending[0] is state:
        plan = pending[1]
        _PENDING.value = None
    else:  # called as an op (a compiled graph, a vmap row, torch.ops.dropkit.next_key directly)
        plan = _plan(state)
    seed, calls = (int(v) % _INT64 for v in state.tolist())
    k = plan.k
    if k is None:
        if _graph_task_id() != -1:  # autograd's engine is running this call
            raise RuntimeError(
                "dropkit: a seeded dropout (seed=<SeedGenerator> / a module built with seed=) was called during "
                "backward outside a torch.utils.checkpoint recompute, so its forward call cannot be identified "
                "(a checkpoint inside a torch.compile'd region, or a seeded call in a backward hook). Refusing to "
                "recompute with a different mask (the gradient would be wrong); use seed=None there, or checkpoint "
                "outside the compiled region."
            )
        k = calls
        _advance(state, calls)
    for region_obj in plan.forward_regions:
        region = _REGIONS.get(region_obj)
        if region is None:
            region = _REGIONS[region_obj] = _Region()
        region.drawn.setdefault(id(state), (state, []))[1].append(k)
    # A fresh tensor, never key_tensor's shared one: an op's output is its caller's to reuse (Inductor and
    # AOTInductor write later results into a dead output's memory), which would rewrite a cached key. seed and k
    # are in [0, 2**64) here, so their words need no check (rng.key_words); frombuffer over a fresh array is the
    # cheapest fresh int64 tensor (about a third of torch.tensor's time; the tensor keeps the array alive).
    return torch.frombuffer(array.array("q", (seed & _M32, seed >> 32, k & _M32, k >> 32)), dtype=torch.int64)


def _advance(state: torch.Tensor, calls: int) -> None:
    """``state[1] = calls + 1`` (mod 2**64, stored as int64) without an op a dispatch mode would see (checkpoint
    recomputes must replay the same ops); ``calls`` is ``state[1]`` as read, in [0, 2**64)."""
    if state.device.type == "cpu":
        state.numpy()[1] = _to_int64((calls + 1) % _INT64)
    else:
        with torch.no_grad():
            state[1] += 1
