"""Memory autograd keeps for backward: the measure behind "0 bytes per element saved".

Example:
    >>> x = torch.randn(1 << 20)
    >>> dropkit.memory.saved_bytes(lambda t: dropkit.functional.dropout(t, 0.5, seed=0), x)
    0
    >>> dropkit.memory.saved_bytes(lambda t: torch.nn.functional.dropout(t, 0.5), x)   # a float mask
    4194304
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["saved_bytes"]


def saved_bytes(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn(x)``, ``x`` requiring grad.

    Each saved tensor's storage counts once (views of one storage share it); ``x`` itself
    counts when an op saves it. Measured with ``torch.autograd.graph.saved_tensors_hooks``.

    Args:
        fn: the computation, called once on a detached copy of ``x`` that requires grad.
        x: a floating-point tensor (any shape).

    Returns:
        the sum of ``untyped_storage().nbytes()`` over the distinct saved storages.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point torch.Tensor; received {getattr(x, 'dtype', type(x).__name__)}")
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())
