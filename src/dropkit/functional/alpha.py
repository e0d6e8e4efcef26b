"""Alpha dropout for self-normalizing networks: dropped units are set to SELU's negative saturation."""

from __future__ import annotations

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from dropkit import ops
from dropkit._validation import check_bool, check_rank
from dropkit.functional._noise import check_common, write_inplace, zeros_like_input
from dropkit.distributed import dtensor_variant, is_dtensor
from dropkit.functional.dropout import _shard_offset
from dropkit.rng import compute_dtype
from dropkit.seed import SeedGenerator, resolve_key

__all__ = ["alpha_dropout", "feature_alpha_dropout", "alpha_coefficients", "SELU_ALPHA_PRIME"]

#: SELU's negative saturation value :math:`\alpha' = -\lambda\alpha` (Klambauer et al. 2017).
SELU_ALPHA_PRIME = -1.0507009873554804934193349852946 * 1.6732632423543772848170429916717
_ALPHA_PRIME_SQ = SELU_ALPHA_PRIME * SELU_ALPHA_PRIME


def alpha_coefficients(p: float) -> tuple[float, float]:
    r"""The affine correction ``(a, b)`` of alpha dropout with drop probability ``p`` (< 1).

    With keep probability :math:`q = 1-p`, :math:`a = (q + \alpha'^2 q (1-q))^{-1/2}` and
    :math:`b = -a \alpha' (1-q)`, so that inputs of mean 0 and variance 1 keep them.
    """
    q = 1.0 - p
    a = (
        q + _ALPHA_PRIME_SQ * q * (1.0 - q)
    ) ** -0.5  # no math.sqrt: p may be a SymFloat under torch.compile(dynamic=True)
    return a, -a * SELU_ALPHA_PRIME * (1.0 - q)


def _alpha(input, p, training, inplace, feature, seed, generator):
    op = "feature_alpha_dropout" if feature else "alpha_dropout"
    if has_torch_function_unary(input):
        fn = feature_alpha_dropout if feature else alpha_dropout
        return handle_torch_function(fn, (input,), input, p, training, inplace, seed=seed, generator=generator)
    p = check_common(input, p, training, seed, generator)
    check_bool(inplace, "inplace")
    noise_shape = None
    if feature:
        check_rank(input, range(2, 9), op, "(N, C, *): one mask value per (sample, channel)")
        noise_shape = tuple(input.shape[:2]) + (1,) * (input.dim() - 2)
    if not training or p == 0.0:
        return input
    if p == 1.0:  # the limit of the affine map as p -> 1 is 0
        return zeros_like_input(input, inplace)
    if inplace:
        ops.check_inplace(input)  # before the key is drawn: a refused call leaves the stream where it was
    if is_dtensor(input):
        fn = feature_alpha_dropout if feature else alpha_dropout
        y = dtensor_variant(input, lambda t, k: fn(t, p, seed=k), what=op, linear=False, seed=seed, generator=generator)
        return write_inplace(input, y) if inplace else y
    ops.refuse_shape_trace(op)
    a, b = alpha_coefficients(p)
    key = resolve_key(seed, generator)
    offset = _shard_offset(noise_shape, input.shape)
    # y = a * (x * m + alpha' (1 - m)) + b: the x-linear part through dropkit::dropout, the shift from the same mask
    cdt = compute_dtype(input.dtype)
    mshape = list(noise_shape) if noise_shape is not None else list(input.shape)
    keep = ops.keep_mask_op(key, mshape, p, offset, input.device)
    shift = torch.where(keep, torch.tensor(b, dtype=cdt), torch.tensor(a * SELU_ALPHA_PRIME + b, dtype=cdt))
    y = (ops.dropout(input.to(cdt), key, p, a, noise_shape, offset) + shift).to(input.dtype)
    return write_inplace(input, y) if inplace else y


def alpha_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout (Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017).

    Dropped units take SELU's negative saturation :math:`\alpha' = -\lambda\alpha \approx -1.7581`
    instead of 0, then an affine map restores mean 0 and variance 1:
    :math:`y = a\,(x \odot m + \alpha'(1-m)) + b`, :math:`m \sim \mathrm{Bernoulli}(1-p)`,
    with ``(a, b)`` from :func:`alpha_coefficients`. For inputs of mean 0 and variance 1
    (SELU's fixed point) the output has mean 0 and variance 1.

    Unlike ``torch.nn.functional.alpha_dropout`` (``training=False`` by default), a bare
    call drops. The mask is a function of the key: backward regenerates it (nothing stored).

    Args:
        input: floating tensor, any shape.
        p: probability of dropping an element, in [0, 1].
        training: apply it (default ``True``); ``False`` returns ``input``.
        inplace: overwrite ``input``.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Shape:
        Input ``(*)``, output ``(*)``.

    Returns:
        ``input`` itself in eval or when ``p == 0``; zeros when ``p == 1`` (the limit of the map).

    Example:
        >>> x = torch.randn(100_000)
        >>> y = dropkit.functional.alpha_dropout(x, 0.2, seed=0)
        >>> round(y.mean().item(), 1), round(y.std().item(), 1)
        (0.0, 1.0)
    """
    return _alpha(input, p, training, inplace, False, seed, generator)


def feature_alpha_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout of whole channels: one mask value per (sample, channel) of an ``(N, C, *)`` input.

    The rule of :func:`alpha_dropout` with the noise shape ``(N, C, 1, ..., 1)``; as
    ``torch.nn.functional.feature_alpha_dropout``, dim 0 is always the batch (for an
    unbatched input add it with ``x.unsqueeze(0)``). Arguments as in :func:`alpha_dropout`; a seeded
    call never touches torch's global generator.

    Example:
        >>> x = torch.randn(4, 8, 5, 5)
        >>> y = dropkit.functional.feature_alpha_dropout(x, 0.5, seed=0)
        >>> y.shape
        torch.Size([4, 8, 5, 5])
    """
    return _alpha(input, p, training, inplace, True, seed, generator)
