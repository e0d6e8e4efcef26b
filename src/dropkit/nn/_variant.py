"""The mixin shared by dropkit's variant modules: an owned stream, the key for a call, a uniform repr."""

from __future__ import annotations

import torch

from dropkit.nn._base import SeededStream, extra_repr_suffix, init_dropout_args


class VariantModule(SeededStream):
    """Mixin for a module whose ``forward`` calls one functional op with ``self.training``.

    Subclasses set ``p`` (a float, so tools can read the rate) and list the other
    constructor arguments shown in the repr in ``_repr_fields``.
    """

    _repr_fields: tuple[str, ...] = ()

    def extra_repr(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._repr_fields)
        return f"p={self.p}" + (", " + fields if fields else "") + extra_repr_suffix(self)  # type: ignore[attr-defined]


class InplaceOpModule(VariantModule):
    """Mixin for ``Module(p=0.5, inplace=False, *, seed=None)`` whose forward is ``_op(x, p, training, inplace)``.

    Mixed in before a torch dropout class (``torch.nn.Dropout2d``, ``AlphaDropout``, ...) so
    that the module is an ``isinstance`` of it.
    """

    _repr_fields = ("inplace",)
    _op: staticmethod

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None):
        torch.nn.Module.__init__(self)  # type: ignore[arg-type]  # torch's __init__ would check p its own way
        init_dropout_args(self, p, inplace, "inverted")
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._op(input, self.p, self.training, self.inplace, **self.key_kwargs())  # type: ignore[attr-defined]
