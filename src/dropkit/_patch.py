"""``dropkit.patch`` (this module is private; the context manager is ``dropkit.patch``): torch's functional dropout calls, and attention dropout, drawn by dropkit inside a block.

Models you did not write call dropout as functions: transformers' eager attention calls
``torch.nn.functional.dropout(attn_weights, p, training)``, its SDPA attention calls
``scaled_dot_product_attention(..., dropout_p=p)``. :func:`dropkit.nn.replace_dropout` swaps
*modules*; this context manager, a ``torch.overrides.TorchFunctionMode``, sends these *calls* made
inside it to dropkit's ops, with torch's signatures and defaults (``p`` is the probability of
**dropping**, as in torch):

=============================================================  ==============================================
call inside ``with dropkit.patch():``                          runs
=============================================================  ==============================================
``F.dropout``, ``F.dropout1d``, ``F.dropout3d``                ``dropkit.functional`` of the same name
``F.dropout2d``                                                ``dropout2d``; a 3-D input ``dropout1d``, as
                                                               torch reads it (``(N, C, L)``)
``F.alpha_dropout``, ``F.feature_alpha_dropout``               ``dropkit.functional`` of the same name
                                                               (torch's default ``training=False`` kept)
``F.scaled_dot_product_attention(dropout_p > 0)``              ``dropkit.functional.scaled_dot_product_attention``
                                                               (softmax attention in torch ops, dropkit's
                                                               dropout on the probabilities)
=============================================================  ==============================================

Activation checkpointing: torch runs a checkpoint's recompute inside backward, where no function
mode is active, so pass the block's :meth:`patch.checkpoint_context_fn` as the checkpoint's
``context_fn`` (non-reentrant checkpoint); then the recompute draws the forward's masks.

What it does not see (each gets a one-time warning naming the call when it drops): calls made
*inside* another function that torch dispatches as a whole, e.g. ``F.multi_head_attention_forward``
(``torch.nn.MultiheadAttention``'s dropout), and plain Python functions that torch never dispatches
(timm's ``drop_path``, torchvision's ``stochastic_depth`` / ``drop_block2d``): their *modules* are
swapped by :func:`dropkit.nn.replace_dropout` instead.

The attention path materialises the ``(..., L, S)`` probability matrix, as eager attention does;
torch's fused SDPA kernels do not (their dropout draws from torch's generator inside the kernel, so
it cannot take dropkit's mask). ``dropout_p == 0`` and eval calls keep torch's SDPA untouched.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as tnf
from torch.overrides import TorchFunctionMode

from dropkit import functional as F
from dropkit._introspect import DROPOUT_SIGNATURES, attention_dropout
from dropkit.seed import SeedGenerator, check_seed_arg

__all__ = ["patch"]


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(name: str, why: str) -> None:
    with _warn_lock:
        if name in _warned:
            return
        _warned.add(name)
    warnings.warn(
        f"dropkit.patch: {name} drops with torch's own random numbers ({why}); dropkit does not draw its mask",
        RuntimeWarning,
        stacklevel=4,
    )


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


class _PatchMode(TorchFunctionMode):
    def __init__(self, seed: SeedGenerator | None):
        super().__init__()
        self.seed = seed
        self.routes = {
            tnf.dropout: F.dropout,
            tnf.dropout1d: F.dropout1d,
            tnf.dropout2d: F.dropout2d,
            tnf.dropout3d: F.dropout3d,
            tnf.alpha_dropout: F.alpha_dropout,
            tnf.feature_alpha_dropout: F.feature_alpha_dropout,
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fn = self.routes.get(func)
        if fn is not None:
            bound = DROPOUT_SIGNATURES[func].bind(*args, **kwargs)  # torch's own signature and defaults
            bound.apply_defaults()
            a = bound.arguments
            x = a["input"]
            if fn is F.dropout2d and isinstance(x, torch.Tensor) and x.dim() == 3:
                fn = F.dropout1d  # torch reads a 3-D input of dropout2d as (N, C, L): channel-wise 1-D dropout
            return fn(x, a["p"], bool(a["training"]), bool(a["inplace"]), seed=self.seed)
        if func is tnf.scaled_dot_product_attention:
            a = _bind(args, kwargs, _SDPA_ARGS, {"attn_mask": None, "dropout_p": 0.0, "is_causal": False,
                                                 "scale": None, "enable_gqa": False})  # fmt: skip
            if float(a["dropout_p"]) > 0.0:
                return F.scaled_dot_product_attention(**{k: a[k] for k in _SDPA_ARGS}, seed=self.seed)
        elif func is tnf.multi_head_attention_forward:
            if (attention_dropout(func, args, kwargs) or 0.0) > 0.0:
                _warn_once("F.multi_head_attention_forward (torch.nn.MultiheadAttention)", "dispatched as one call")
        return func(*args, **kwargs)


class patch:  # noqa: N801 - a context manager used like a function: ``with dropkit.patch(seed=0):``
    """Send torch's functional dropout calls made inside the block to dropkit (see the module docs).

    Args:
        seed: ``None`` (each call draws its key from torch's generator, as torch's dropout does),
            an ``int`` (one :class:`dropkit.SeedGenerator` for the block: call ``k`` inside it uses
            stream ``k``) or a :class:`dropkit.SeedGenerator` (shared, advanced by every call; pass the
            same one to several blocks to continue its stream). A seeded call never touches torch's global
            generator (not even a read); inside ``torch.utils.checkpoint`` (with :meth:`checkpoint_context_fn`)
            the recompute reuses the forward's keys.

    Example:
        >>> with dropkit.patch(seed=0):
        ...     y = torch.nn.functional.dropout(torch.ones(4, 4), 0.5)   # dropkit's mask, seed 0 stream 0
    """

    def __init__(self, seed: int | SeedGenerator | None = None):
        if isinstance(seed, torch.Tensor):
            raise TypeError("`seed` must be None, an int in [0, 2**64) or a dropkit.SeedGenerator; received a tensor")
        check_seed_arg(seed)
        self.generator = SeedGenerator(seed) if isinstance(seed, int) else seed
        self._mode: _PatchMode | None = None

    def checkpoint_context_fn(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` inside the block.

        torch runs a checkpoint's recompute inside backward, where no function mode is active, so without
        it the recompute would run torch's own dropout: a different mask than the forward's. This returns
        ``(nothing, this block's mode)``: the recompute draws dropkit's masks from the same seed (with
        ``seed=None``, from torch's generator, which checkpoint restores). transformers takes it as
        ``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
        "context_fn": p.checkpoint_context_fn})``.

        Example:
            >>> with dropkit.patch() as p:
            ...     y = checkpoint(block, x, use_reentrant=False, context_fn=p.checkpoint_context_fn)
        """
        return contextlib.nullcontext(), _PatchMode(self.generator)

    def __enter__(self) -> patch:
        self._mode = _PatchMode(self.generator)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._mode is not None
        self._mode.__exit__(*exc)
        self._mode = None
