"""``dropkit.nn.Dropout``: a drop-in for ``torch.nn.Dropout`` on the Philox mask contract."""

from __future__ import annotations

from typing import Any

import torch

from dropkit import functional as F
from dropkit.nn._base import SeededStream, extra_repr_suffix, init_dropout_args

__all__ = ["Dropout", "replace_dropout"]


class Dropout(SeededStream, torch.nn.Dropout):
    r"""Dropout (Srivastava et al., JMLR 2014) as a module that follows ``.train()`` / ``.eval()``.

    ``p`` is the probability of **dropping** an element. In training each element is
    zeroed with probability ``p``; with ``scaling="inverted"`` (default) survivors are
    scaled by :math:`1/q` (:math:`q \approx 1-p` the exact keep probability, :func:`dropkit.rng.inverted_scale`)
    and eval is the identity; with ``scaling="classic"``
    survivors are not scaled and eval multiplies by :math:`1-p`.

    A drop-in for ``torch.nn.Dropout``: the same positional arguments, the same repr,
    an ``isinstance`` of it, and no parameters or buffers, so a ``state_dict`` saved from
    a model built with torch's Dropout loads strictly. Masks come from
    :func:`dropkit.functional.dropout`: regenerated in backward (nothing stored), the
    same on every device.

    Args:
        p: probability of dropping an element, in [0, 1]. Default: 0.5.
        inplace: overwrite the input. Default: ``False``.
        scaling: ``"inverted"`` or ``"classic"``.
        seed: if given, the module owns its stream: call ``k`` in training uses
            ``(seed, stream=k)``, and ``(seed, k)`` is saved in the ``state_dict`` as
            ``rng_state`` so a resumed run draws the masks an uninterrupted run would; a seeded
            call never touches torch's global generator, and inside ``torch.utils.checkpoint``
            the recompute reuses the forward's keys (:mod:`dropkit.seed`).

    Shape:
        Input ``(*)``, output ``(*)``, same shape.

    Example:
        >>> m = dropkit.nn.Dropout(0.2)
        >>> y = m(torch.randn(20, 16))
        >>> m.eval()(x) is x       # eval: identity
        True
    """

    scaling: str

    def __init__(self, p: float = 0.5, inplace: bool = False, *, scaling: str = "inverted", seed: int | None = None):
        torch.nn.Module.__init__(self)  # torch's Dropout.__init__ would validate p with its own message
        init_dropout_args(self, p, inplace, scaling)
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, self.inplace, scaling=self.scaling, **self.key_kwargs())

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" + extra_repr_suffix(self)


def replace_dropout(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Swap every ``torch.nn.Dropout`` in ``model`` (in place) for :class:`dropkit.nn.Dropout`.

    ``torch.nn.Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout`` become their
    dropkit drop-ins too (note: dropkit's ``Dropout2d`` reads a 3-D input as unbatched
    ``(C, H, W)``, where torch's does 1-d dropout on it).

    Keeps each layer's ``p``, ``inplace`` and training mode; ``kwargs`` (``scaling=``)
    are passed to every new layer. Subclasses of torch's Dropout (including dropkit's
    own) are left alone. Returns ``model`` for chaining.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.3))
        >>> dropkit.nn.replace_dropout(model)[1]
        Dropout(p=0.3, inplace=False)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    if "seed" in kwargs:
        raise ValueError("`seed` cannot be shared by several layers; seed each replaced layer yourself")
    from dropkit.nn import alpha, spatial  # torch's channel / alpha dropouts have dropkit drop-ins too

    variants: dict[type, type[torch.nn.Module]] = {
        torch.nn.Dropout1d: spatial.Dropout1d,
        torch.nn.Dropout2d: spatial.Dropout2d,
        torch.nn.Dropout3d: spatial.Dropout3d,
        torch.nn.AlphaDropout: alpha.AlphaDropout,
        torch.nn.FeatureAlphaDropout: alpha.FeatureAlphaDropout,
    }
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new: torch.nn.Module
            if type(child) is torch.nn.Dropout:
                new = Dropout(child.p, child.inplace, **kwargs)
            elif type(child) in variants:  # `scaling` applies to plain dropout only
                old: Any = child
                new = variants[type(child)](float(old.p), bool(old.inplace))  # type: ignore[call-arg]
            else:
                continue
            new.train(child.training)
            setattr(parent, name, new)
    return model
