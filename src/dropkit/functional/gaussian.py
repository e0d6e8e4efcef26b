"""Gaussian dropout (multiplicative noise) and Gaussian noise (additive), from :func:`dropkit.rng.normal`."""

from __future__ import annotations

import math
import numbers
import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from dropkit import ops
from dropkit._validation import check_p, check_real
from dropkit.functional._noise import check_common
from dropkit.distributed import dtensor_variant, is_dtensor
from dropkit.functional.dropout import _shard_offset
from dropkit.seed import SeedGenerator, resolve_key

__all__ = ["gaussian_dropout", "gaussian_noise", "check_gaussian_p"]


def check_gaussian_p(p: object) -> float:
    """Gaussian dropout's rate: in [0, 1), with a message saying why 1 is refused."""
    if isinstance(p, numbers.Real) and not isinstance(p, bool) and p == 1:
        raise ValueError(
            "Invalid value for `p`: expected a real number in [0, 1) (gaussian dropout's noise variance "
            f"p / (1 - p) is infinite at p = 1). Received: p={p!r}"
        )
    return check_p(p, allow_one=False)


def gaussian_dropout(
    input: torch.Tensor,
    p: float,
    training: bool = True,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gaussian dropout (Srivastava et al., JMLR 2014, sec. 10; Wang & Manning, ICML 2013).

    Multiplicative noise with the mean and variance of inverted dropout's factor:
    :math:`y = x \odot (1 + \sigma z)`, :math:`z \sim \mathcal N(0, 1)`, :math:`\sigma^2 = p / (1-p)`,
    so :math:`E[y] = x` and :math:`\mathrm{Var}[y] = x^2 p/(1-p)`. ``z`` comes from
    :func:`dropkit.rng.normal` and is regenerated in backward (nothing stored).

    Args:
        input: floating tensor, any shape.
        p: the dropout rate whose noise variance to match, in [0, 1). ``p = 1`` would
            need infinite variance and is rejected (Keras accepts it and divides by zero).
        training: apply it (default ``True``); ``False`` returns ``input``.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Shape:
        Input ``(*)``, output ``(*)``.

    Returns:
        ``input`` itself in eval or when ``p == 0``.

    Example:
        >>> x = torch.ones(100_000)
        >>> y = dropkit.functional.gaussian_dropout(x, 0.5, seed=0)     # sigma = 1
        >>> round(y.mean().item(), 1), round(y.var().item(), 1)
        (1.0, 1.0)
    """
    if has_torch_function_unary(input):
        return handle_torch_function(gaussian_dropout, (input,), input, p, training, seed=seed, generator=generator)
    p = check_common(input, check_gaussian_p(p), training, seed, generator)
    if not training or p == 0.0:
        return input
    if is_dtensor(input):
        return dtensor_variant(
            input, lambda t, k: gaussian_dropout(t, p, seed=k), what="gaussian_dropout", linear=True, seed=seed,
            generator=generator,
        )  # fmt: skip
    key = resolve_key(seed, generator)
    return ops.apply_linear(
        ops.gaussian_dropout_op, input, key, math.sqrt(p / (1.0 - p)), _shard_offset(None, input.shape)
    )


def gaussian_noise(
    input: torch.Tensor,
    std: float,
    training: bool = True,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Additive Gaussian noise (a regulariser and data augmentation; Keras' ``GaussianNoise``).

    :math:`y = x + \mathrm{std} \cdot z`, :math:`z \sim \mathcal N(0, 1)` from :func:`dropkit.rng.normal`.
    The gradient is the identity, so autograd stores nothing.

    Args:
        input: floating tensor, any shape.
        std: the noise's standard deviation, a finite real >= 0.
        training: add noise (default ``True``); ``False`` returns ``input``.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Returns:
        ``input`` itself in eval or when ``std == 0``.

    Example:
        >>> x = torch.zeros(100_000)
        >>> y = dropkit.functional.gaussian_noise(x, 0.1, seed=0)
        >>> round(y.std().item(), 2)
        0.1
    """
    if has_torch_function_unary(input):
        return handle_torch_function(gaussian_noise, (input,), input, std, training, seed=seed, generator=generator)
    # std takes the place of p: check it, then the rest with a dummy rate
    std = check_real(std, "std", low=0.0, what="(the noise's standard deviation)")
    check_common(input, 0.0, training, seed, generator)
    if not training or std == 0.0:
        return input
    if is_dtensor(input):
        return dtensor_variant(
            input, lambda t, k: gaussian_noise(t, std, seed=k), what="gaussian_noise", linear=False, seed=seed,
            generator=generator,
        )  # fmt: skip
    ops.refuse_shape_trace("gaussian_noise")
    key = resolve_key(seed, generator)
    z = ops.normal_op(key, list(input.shape), _shard_offset(None, input.shape), input.dtype, input.device)
    return input + z.mul_(std)  # z is this call's own tensor: scaled in place, one temporary fewer (same bits)
