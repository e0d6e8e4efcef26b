"""``dropkit.nn.FusedBiasActDropoutAdd``: the module form of :func:`dropkit.functional.fused_bias_act_dropout_add`."""

from __future__ import annotations

import torch

from dropkit._validation import check_choice, check_p
from dropkit.functional.fused import FUSED_ACTIVATIONS, fused_bias_act_dropout_add
from dropkit.nn._base import SeededStream, extra_repr_suffix

__all__ = ["FusedBiasActDropoutAdd"]


class FusedBiasActDropoutAdd(SeededStream, torch.nn.Module):
    r"""``residual + dropout(act(x + bias), p)`` as a module that follows ``.train()`` / ``.eval()``.

    The tail of a transformer feed-forward block in one kernel on CUDA (Triton) and in
    torch ops elsewhere, with the mask regenerated in backward (no mask stored). The
    module has no parameters: ``bias`` is passed in, typically the bias of a preceding
    ``torch.nn.Linear(..., bias=False)`` kept as a parameter of the surrounding block.
    See :func:`dropkit.functional.fused_bias_act_dropout_add` for the math and the mask.

    Args:
        p: probability of dropping an element, in [0, 1]. Default: 0.5.
        activation: ``"relu"`` (default), ``"gelu"`` (exact), ``"silu"`` or ``"identity"``.
        seed: if given, the module owns its stream: training call ``k`` uses ``(seed, stream=k)``,
            saved in the ``state_dict`` as ``rng_state``; a seeded call never touches torch's
            global generator.

    Shape:
        ``forward(x, bias, residual)``: ``x`` and ``residual`` ``(*, H)``, ``bias`` ``(H,)`` or
        ``None``; output ``(*, H)``.

    Example:
        >>> m = dropkit.nn.FusedBiasActDropoutAdd(0.1, "gelu")
        >>> y = m(torch.randn(4, 16), torch.zeros(16), torch.randn(4, 16))
        >>> m.eval()(x, b, r)    # residual + gelu(x + b)
    """

    def __init__(self, p: float = 0.5, activation: str = "relu", *, seed: int | None = None):
        super().__init__()
        self.p = check_p(p)
        self.activation = check_choice(activation, "activation", FUSED_ACTIVATIONS)
        self._init_stream(seed)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
        return fused_bias_act_dropout_add(
            x, bias, residual, self.p, self.activation, self.training, **self.key_kwargs()
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, activation={self.activation!r}" + extra_repr_suffix(self)
