"""DropConnect as a ``torch.nn.utils.parametrize`` parametrization of any weight."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from dropkit import functional as F
from dropkit._validation import check_p
from dropkit.rng import batch_shard
from dropkit.nn._variant import VariantModule

__all__ = ["DropConnect", "drop_connect", "remove_drop_connect"]


class DropConnect(VariantModule, torch.nn.Module):
    r"""The parametrization :math:`W \mapsto W \odot M / (1-p)`, :math:`M_{ij} \sim \mathrm{Bernoulli}(1-p)`.

    Registered by :func:`drop_connect`; follows the parametrized module's ``.train()`` /
    ``.eval()`` (it is one of its submodules): in eval it returns the weight itself.
    The mask is :func:`dropkit.functional.dropout` of the weight, so gradients reach the
    original weight through the kept entries and backward regenerates the mask. With ``seed=``
    it owns a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None):
        super().__init__()
        self.p = check_p(p)
        self._init_stream(seed)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with batch_shard(0):  # a weight is shared by all shards of a batch: the same mask on every process
            return F.dropout(weight, self.p, self.training, **self.key_kwargs())


def _check_target(module: object, name: object) -> None:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module; received {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str (a parameter name such as 'weight'); received {name!r}")


def drop_connect(
    module: torch.nn.Module, name: str = "weight", p: float = 0.5, *, seed: int | None = None
) -> torch.nn.Module:
    r"""DropConnect (Wan et al., ICML 2013) on ``module.<name>``: drop weights instead of activations.

    Registers :class:`DropConnect` with ``torch.nn.utils.parametrize``: each access of
    ``module.<name>`` in training mode draws a new mask, :math:`W' = W \odot M/(1-p)`; in
    eval the full weight is used. The original ``Parameter`` moves to
    ``module.parametrizations.<name>.original`` (so the ``state_dict`` key changes to
    ``parametrizations.<name>.original``; a model built the same way loads it back), and
    :func:`remove_drop_connect` restores it. On ``torch.nn.LSTM`` / ``GRU`` weights such as
    ``weight_hh_l0`` this is AWD-LSTM's weight drop; the module reads the weights through
    ``getattr``, so no monkey-patching of ``_flat_weights`` is involved. For
    :class:`dropkit.nn.LSTM` prefer its ``weight_dropout=`` argument (one sample per forward).

    Args:
        module: any module with a floating parameter ``name`` (Linear, Conv*, LSTM, ...).
        name: the parameter, default ``"weight"``.
        p: probability of dropping a weight, in [0, 1]. Default: 0.5.
        seed: the parametrization owns a stream saved in the ``state_dict``; a seeded call never
            touches torch's global generator.

    Returns:
        ``module`` (modified in place).

    Example:
        >>> fc = dropkit.nn.drop_connect(torch.nn.Linear(16, 8), p=0.3)
        >>> y = fc(torch.randn(4, 16))           # a fresh weight mask for this call
        >>> type(dropkit.nn.remove_drop_connect(fc).weight).__name__     # the original Parameter again
        'Parameter'
    """
    _check_target(module, name)
    param = getattr(module, name, None)
    if not isinstance(param, torch.Tensor) or not param.is_floating_point():
        raise ValueError(
            f"Invalid value for `name`: expected the name of a floating parameter of {type(module).__name__}. "
            f"Received: name={name!r}"
        )
    if parametrize.is_parametrized(module, name) and any(
        isinstance(m, DropConnect)
        for m in module.parametrizations[name]  # type: ignore[index,union-attr]
    ):
        raise ValueError(f"`{name}` of this {type(module).__name__} already has DropConnect; received it again")
    parametrize.register_parametrization(module, name, DropConnect(p, seed=seed))
    return module


def remove_drop_connect(module: torch.nn.Module, name: str = "weight") -> torch.nn.Module:
    """Undo :func:`drop_connect`: ``module.<name>`` is the original ``Parameter`` again (same object).

    Raises ``ValueError`` if ``module.<name>`` has no DropConnect, or has other
    parametrizations too (remove those with ``torch.nn.utils.parametrize`` first).

    Example:
        >>> fc = dropkit.nn.drop_connect(torch.nn.Linear(4, 4), p=0.5)
        >>> w = fc.parametrizations.weight.original
        >>> dropkit.nn.remove_drop_connect(fc).weight is w
        True
    """
    _check_target(module, name)
    plist = module.parametrizations[name] if parametrize.is_parametrized(module, name) else []  # type: ignore[index,union-attr]
    if not any(isinstance(m, DropConnect) for m in plist):
        raise ValueError(
            f"Invalid value for `name`: {type(module).__name__}.{name} has no DropConnect. Received: name={name!r}"
        )
    if len(plist) != 1:
        raise ValueError(
            f"`{name}` has {len(plist)} parametrizations; remove the others with torch.nn.utils.parametrize first"
        )
    parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    if isinstance(module, torch.nn.RNNBase):  # drop its reference to the parametrized tensor now
        module._init_flat_weights()
    return module
