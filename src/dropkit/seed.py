"""One seed concept for every dropkit op: an ``int``, a :class:`SeedGenerator`, or ``None``.

Every random dropkit op takes a **key**: four 32-bit words ``(lo(seed), hi(seed),
lo(stream), hi(stream))`` held in an int64 tensor of shape ``(4,)`` on the CPU
(:func:`dropkit.rng.key_tensor`). The key is data, not a Python int, so torch.compile,
torch.export and TorchScript tracing keep it in the graph and draw a fresh one per call.
:func:`resolve_key` turns the user's ``seed=`` into a key:

* ``int``: the key ``(seed, stream)``: the same mask on every call and every device;
* :class:`SeedGenerator` (what modules built with ``seed=`` own): call ``k`` uses
  ``(seed, stream=k)``; its state ``[seed, k]`` is an int64 tensor that ``state_dict``,
  torch.compile (a buffer mutation), torch.export and activation checkpointing handle;
* ``None``: two words drawn from ``generator`` or torch's default CPU generator, as torch's
  own dropout draws its seed, so ``torch.manual_seed`` makes runs reproducible and
  ``torch.utils.checkpoint`` (which restores that generator) recomputes the same masks.

Activation checkpointing and seeded state: a checkpointed region is run again in backward
(the recompute) and must draw the masks of its forward. For ``seed=None`` that holds
because checkpoint restores torch's RNG state. A :class:`SeedGenerator` has advanced by
then, so each of its draws also takes one 64-bit *call token* from torch's default CPU
generator and remembers ``token -> k``; a draw made during backward (a recompute, with the
generator restored) finds its token and reuses ``k`` instead of advancing. A draw in
backward whose token is unknown (``preserve_rng_state=False``) raises instead of silently
using another mask. Under torch.compile the draw is the registered op
``dropkit::next_key``, so the same logic runs wherever the compiled graph is recomputed.
"""

from __future__ import annotations

import collections
import numbers

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode
from torch.utils.weak import WeakTensorKeyDictionary

from dropkit.rng import check_key_args, check_seed, key_tensor

__all__ = ["SeedGenerator", "resolve_key", "next_key", "sub_key", "state_tensor", "check_seed_arg"]

_INT64 = 1 << 64
_M32 = 0xFFFFFFFF
#: How many forward draws per state are remembered for checkpoint recomputes (oldest evicted first).
TOKEN_LOG_SIZE = 1 << 14


def state_tensor(seed: int, calls: int = 0) -> torch.Tensor:
    """The int64 state ``[seed, calls]`` (two's complement for seeds >= 2**63)."""
    seed = check_seed(seed)
    return torch.tensor([seed - _INT64 if seed >= 1 << 63 else seed, calls], dtype=torch.int64)


class SeedGenerator:
    r"""A seeded stream of keys, in the manner of Keras' ``SeedGenerator``: call ``k`` uses ``(seed, stream=k)``.

    Pass it as ``seed=`` to any dropkit op; every call advances it. Its state is the int64
    tensor ``[seed, k]`` (:attr:`state`), which modules built with ``seed=`` register as the
    ``rng_state`` buffer, so a run resumed from a ``state_dict`` draws the masks an
    uninterrupted run would, and torch.compile / torch.export see the advance as a buffer
    mutation.

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
        """How many keys have been drawn (the stream of the next call)."""
        return int(self.state[1])

    def next_key(self) -> torch.Tensor:
        """The key of the next call, ``(seed, calls)``; advances the state (see the module docs for checkpointing)."""
        return next_key(self.state)

    def __repr__(self) -> str:
        return f"SeedGenerator(seed={self.seed}, calls={self.calls})"


def next_key(state: torch.Tensor) -> torch.Tensor:
    """Draw the next key from a ``[seed, calls]`` state tensor and advance it: the op ``dropkit::next_key``.

    The same op in eager mode and in compiled or exported graphs (a mutating op there), so its
    checkpoint bookkeeping runs wherever the graph runs. One case cannot be served: activation
    checkpointing *inside* a compiled region whose partitioner recomputes the draw in backward
    (the buffer has advanced by then and the compiled backward does not restore torch's RNG for
    the token); that raises the "cannot be identified" error instead of using another mask. Use
    ``seed=None`` there (the key then comes from the graph's own ``randint``, which the
    partitioner replays exactly), or checkpoint outside the compiled region.
    """
    return torch.ops.dropkit.next_key.default(state)  # registered by dropkit.ops (imported by `import dropkit`)


def resolve_key(
    seed: int | SeedGenerator | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
) -> torch.Tensor:
    """The key tensor ``(4,)`` of one call from ``seed`` / ``generator`` / ``stream`` (see the module docs)."""
    if isinstance(seed, SeedGenerator):
        if generator is not None or stream != 0:
            raise ValueError(
                "a SeedGenerator `seed` carries its own stream; pass neither `generator` nor `stream` with it"
            )
        return seed.next_key()
    if isinstance(seed, torch.Tensor):  # a key tensor (dropkit.rng.key_tensor / sub_key)
        return seed
    if seed is not None:
        return key_tensor(seed, stream)
    if torch.compiler.is_compiling():
        words = torch.randint(0, 1 << 32, (2,), dtype=torch.int64)
        return torch.cat([words, torch.tensor([stream & _M32, stream >> 32], dtype=torch.int64)])
    check_key_args(None, generator)
    if stream == 0 and plain_eager():  # the same two draws as randint, one op instead of three
        key = torch.zeros(4, dtype=torch.int64)
        key[:2].random_(0, 1 << 32, generator=generator)  # a slice: cheaper than narrow here
        return key
    words = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=generator)
    return torch.cat([words, torch.tensor([stream & _M32, stream >> 32], dtype=torch.int64)])


def plain_eager() -> bool:
    """No dispatch mode, tracer or torch.func transform is watching: nothing can tell one
    sequence of eager ops from another that computes the same values."""
    return (
        _tracing_state() is None
        and not _torch_function_mode_enabled()
        and _current_dispatch_mode() is None
        and not _functorch_transforms_active()
    )


# bound once: this runs on every eager call, where attribute lookups are a measurable share of a small call
_tracing_state = torch._C._get_tracing_state
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_functorch_transforms_active = torch._C._are_functorch_transforms_active


def check_seed_arg(seed: object, generator: object = None, stream: object = 0) -> int:
    """Validate ``seed`` (int, :class:`SeedGenerator` or None), ``generator`` and ``stream``; returns ``stream``."""
    if generator is None and type(stream) is int and 0 <= stream < _INT64:  # the common calls, checked cheaply
        if seed is None or (type(seed) is int and 0 <= seed < _INT64):
            return stream
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
    else:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(
                f"`seed` must be an int in [0, 2**64), a dropkit.SeedGenerator or None; received {seed!r} "
                f"({type(seed).__name__})"
            )
        check_key_args(seed, generator)
    return check_seed(stream, "stream")


def sub_key(key: torch.Tensor, index: int) -> torch.Tensor:
    """The key of sub-stream ``index`` (< 2**16) of ``key``: stream ``(stream << 16) | index`` (tensor ops, traceable).

    One key per forward, then one sub-stream per mask: how :class:`dropkit.nn.LSTM` keys its masks.
    """
    if not 0 <= index < 1 << 16:
        raise ValueError(f"`index` must be in [0, 2**16); received {index}")
    lo, hi = key[2], key[3]
    new_lo = ((lo << 16) & _M32) | index
    new_hi = ((hi << 16) | (lo >> 16)) & _M32
    return torch.stack([key[0], key[1], new_lo, new_hi])


# ---------------------------------------------------------------------------
# The eager implementation of dropkit::next_key (registered in dropkit.ops)
# ---------------------------------------------------------------------------
def _token() -> int:
    w = torch.randint(0, 1 << 62, (1,), dtype=torch.int64)  # torch's default generator: restored by checkpoint
    return int(w)


def next_key_impl(state: torch.Tensor) -> torch.Tensor:
    """Read ``[seed, k]``, return the key ``(seed, k)`` and advance ``k``; reuse ``k`` inside backward (a recompute)."""
    if state.dtype != torch.int64 or state.shape != (2,):
        raise TypeError(
            f"dropkit::next_key: `state` must be an int64 tensor [seed, calls]; received {state.dtype} {tuple(state.shape)}"
        )
    token = _token()
    log = _token_log(state)
    seed, calls = (int(v) for v in state.tolist())
    if torch._C._current_graph_task_id() != -1:  # inside backward: an activation-checkpoint recompute
        k = log.pop(token, None)
        if k is None or k < 0:
            raise RuntimeError(
                "dropkit: a seeded dropout (seed=<int> / SeedGenerator) was called during backward, as an activation "
                "checkpoint recompute does, but its forward call cannot be identified"
                + (
                    " (two forward calls drew the same token: torch.manual_seed was reset between them)"
                    if k is not None
                    else "; run torch.utils.checkpoint with preserve_rng_state=True (the default)"
                )
                + ". Refusing to recompute with a different mask (the gradient would be wrong)."
            )
    else:
        k = calls
        if token in log:
            log[token] = -1  # ambiguous: a recompute of either call would not know which one it is
        else:
            log[token] = k
            if len(log) > TOKEN_LOG_SIZE:
                log.popitem(last=False)
        _advance(state)
    return key_tensor(seed % _INT64, k % _INT64)


_LOGS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # state tensor -> its token log, dies with the tensor


def _token_log(state: torch.Tensor) -> collections.OrderedDict[int, int]:
    """The ``token -> k`` log of ``state`` (the tensor itself, not its address: a freed state's log goes with it)."""
    log = _LOGS.get(state)
    if log is None:
        log = _LOGS[state] = collections.OrderedDict()
    return log


def _advance(state: torch.Tensor) -> None:
    """``state[1] += 1`` without an op a dispatch mode would see (checkpoint recomputes must replay the same ops)."""
    if state.device.type == "cpu":
        arr = state.numpy()
        arr[1] += 1
    else:
        with torch.no_grad():
            state[1] += 1
