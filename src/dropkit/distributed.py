"""dropkit on DTensor (tensor parallelism): each local element gets the mask of its GLOBAL index.

A dropkit mask is a pure function of ``(key, global row-major element index)`` (:mod:`dropkit.rng`).
For a :class:`torch.distributed.tensor.DTensor` the global index of a local element is known
from the DTensor's global shape and the rank's box in it, so a rank evaluates the contract on
exactly its own box and the result does not depend on how the tensor is sharded: a TP-2 run
draws the masks of a TP-1 run.

:func:`dropkit.functional.dropout` (and so :class:`dropkit.nn.Dropout` and the variants built on
it with a ``noise_shape``: dropout1d/2d/3d, drop_path, locked_dropout) hands DTensor inputs to
:func:`dtensor_dropout`. Supported: 1-D device meshes with the placement ``Shard(d)`` (any ``d``,
even or uneven), ``Replicate()`` or ``Partial()`` (dropout is linear with a non-negative factor,
so a Partial input gets the same global mask on every rank and stays Partial).

Keys: every rank must use the same key. A seeded call (``seed=<int>``, a
:class:`dropkit.SeedGenerator`, a module built with ``seed=``) does so by construction. An
unseeded call draws the key from torch's default CPU generator, so the ranks must share its
state (``torch.manual_seed(same)`` on every rank), as DTensor's own random ops require. The
DTensor path all-reduces the key over the mesh (one small collective per call) and raises if the
ranks disagree; set :data:`CHECK_KEYS` to ``False`` to skip that check.

The other variants whose noise is a function of the element index (Gaussian dropout and noise,
alpha and feature-alpha dropout, DropBlock, Concrete dropout) go through :func:`dtensor_variant`:
the samples of a ``Shard(0)`` shard are evaluated at their global sample offset (the mechanism of
:func:`dropkit.rng.batch_shard`), a ``Replicate()`` tensor whole on every rank, and a ``Partial()``
tensor only by the variants that are linear in ``x`` (Gaussian dropout, DropBlock); ``Shard(d)`` for
``d > 0`` is refused with a clear error (only element-wise dropout evaluates arbitrary boxes).
Word dropout and the fused residual op refuse DTensor inputs (:func:`refuse_dtensor`).

Under torch.compile the DTensor call runs eagerly (``torch.compiler.disable``: a graph break;
``fullgraph=True`` refuses it and names the reason): this rank's box in the global mask is a
data-dependent offset, which dropkit's ops take as an ``int``.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dropkit import kernels, ops
from dropkit.rng import compute_dtype
from dropkit.seed import SeedGenerator, resolve_key

__all__ = ["CHECK_KEYS", "dtensor_dropout", "dtensor_variant", "is_dtensor", "local_keep_mask", "refuse_dtensor"]

#: All-reduce-compare the key over the mesh on every DTensor call (raises if the ranks disagree).
CHECK_KEYS = True

#: Elements of the contract evaluated per kernel call when a box is gathered from its covering range.
_MIN_BUDGET = 1 << 22


def _disable(fn: Callable, reason: str) -> Callable:
    """``torch.compiler.disable(fn)`` with its ``reason`` where torch takes one (torch >= 2.7), without it before."""
    if "reason" in inspect.signature(torch.compiler.disable).parameters:
        return torch.compiler.disable(fn, reason=reason)
    return torch.compiler.disable(fn)


def _run_eagerly(reason: str) -> Callable[[Callable], Callable]:
    """``torch.compiler.disable(fn, reason=reason)``, applied when ``fn`` is first called.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (about 1.2 s), which ``import dropkit``
    must not pay: a DTensor exists only after ``torch.distributed.tensor`` is imported, so the
    first DTensor call pays it. It is applied at once when ``torch._dynamo`` is already imported.
    Under ``torch.compile`` the call is a graph break either way; with ``fullgraph=True`` the
    error names ``reason`` once the function has been wrapped (after an eager call, or when
    ``torch._dynamo`` was imported before dropkit), otherwise the skipped ``torch.compiler.disable``.
    """

    def wrap(fn: Callable) -> Callable:
        eager: list[Callable] = []

        def resolve() -> Callable:
            if not eager:
                eager.append(_disable(fn, reason))
            return eager[0]

        if "torch._dynamo" in sys.modules:
            resolve()

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return resolve()(*args, **kwargs)

        return call

    return wrap


def is_dtensor(x: object) -> bool:
    """``True`` iff ``x`` is a :class:`torch.distributed.tensor.DTensor` (never imports torch.distributed)."""
    if type(x) is torch.Tensor:
        return False
    mod = sys.modules.get("torch.distributed.tensor")  # no DTensor can exist before this is imported
    return mod is not None and isinstance(x, mod.DTensor)


def _row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _span(shape: Sequence[int], strides: Sequence[int]) -> int:
    """Length of the contiguous index range that covers a strided box (its last index + 1)."""
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides))


def _is_one_run(mask_shape: Sequence[int], box_shape: Sequence[int]) -> bool:
    """Whether a box is one contiguous run of the row-major mask: every dimension after its first of extent > 1 is whole."""
    j = next((i for i, n in enumerate(box_shape) if n > 1), len(box_shape))
    return all(b == m for b, m in zip(box_shape[j + 1 :], mask_shape[j + 1 :]))


def _box_mask(key, p, base, shape, strides, device, budget) -> torch.Tensor:
    """Keep mask of the strided box ``base + sum(i_j * strides_j)``: one kernel call on the covering range, or split."""
    span = _span(shape, strides)
    if span <= budget:
        cover = ops.keep_mask_op(key, [span], p, base, device)
        return cover.as_strided(tuple(shape), tuple(strides))  # a view: the caller reads it once
    j = next(i for i, n in enumerate(shape) if n > 1)  # span > budget >= 1: some dimension has size > 1
    inner = _span(shape[j + 1 :], strides[j + 1 :])
    rows = max(1, (budget - inner) // strides[j] + 1)
    parts = []
    for r0 in range(0, shape[j], rows):
        sub = list(shape)
        sub[j] = min(rows, shape[j] - r0)
        parts.append(_box_mask(key, p, base + r0 * strides[j], sub, strides, device, budget))
    return torch.cat(parts, dim=j)


def local_keep_mask(
    key: torch.Tensor,
    p: float,
    mask_shape: Sequence[int],
    box_offset: Sequence[int],
    box_shape: Sequence[int],
    offset: int = 0,
    device: torch.device | str = "cpu",
    _view: bool = False,
) -> torch.Tensor:
    r"""The contract's keep mask on one box of a (global) mask: ``keep[i] = mask[box_offset + i]``.

    Element ``i`` of the box has the global row-major index
    :math:`e = \mathrm{offset} + \sum_j (\mathrm{box\_offset}_j + i_j)\, S_j` in ``mask_shape``
    (:math:`S` its row-major strides), and is kept iff lane ``e % 8`` of Philox4x32-10 at block
    ``e // 8`` is ``>= threshold(p)``: exactly the element of ``keep_mask(key, mask_shape)``
    (:func:`dropkit.ops.keep_mask_op`) at that position. Evaluated with the fast kernel on the
    covering index range, split into pieces of at most ``max(4 * box numel, 2**22)`` elements.

    Args:
        key: a dropkit key (int64 ``(4,)`` on the CPU).
        p: drop probability in [0, 1].
        mask_shape: the global shape of the mask.
        box_offset, box_shape: the box's first index and its extent, per dimension.
        offset: global index of the mask's element 0 (data-parallel shards, :func:`dropkit.rng.batch_shard`).
        device: where the mask is made.

    Returns:
        ``bool`` tensor of ``box_shape`` (``True`` = kept).

    Example:
        >>> key = dropkit.rng.key_tensor(7)
        >>> full = torch.ops.dropkit.keep_mask(key, [4, 6], 0.5, 0, "cpu")
        >>> torch.equal(local_keep_mask(key, 0.5, (4, 6), (1, 3), (2, 3)), full[1:3, 3:6])
        True
    """
    mask_shape, box_offset, box_shape = tuple(mask_shape), tuple(box_offset), tuple(box_shape)
    if not len(mask_shape) == len(box_offset) == len(box_shape) or any(
        o < 0 or n < 0 or o + n > m for m, o, n in zip(mask_shape, box_offset, box_shape)
    ):
        raise ValueError(
            f"the box (offset {box_offset}, shape {box_shape}) must lie inside the mask shape {mask_shape}"
        )
    n = math.prod(box_shape)
    if n == 0:
        return torch.zeros(box_shape, dtype=torch.bool, device=device)
    strides = _row_major_strides(mask_shape)
    base = offset + sum(o * s for o, s in zip(box_offset, strides))
    keep = _box_mask(key, p, base, box_shape, strides, torch.device(device), max(4 * n, _MIN_BUDGET))
    return keep if _view else keep.contiguous()


@dataclass(frozen=True)
class _LocalSpec:
    """One rank's share of a call: the key, the rate and scale, and its box in the global mask."""

    key: torch.Tensor
    p: float
    scale: float
    mask_shape: tuple[int, ...]
    box_offset: tuple[int, ...]
    box_shape: tuple[int, ...]
    offset: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x * (keep ? scale : 0)`` in float32 (float64 for float64), rounded once to ``x``'s dtype."""
        keep = local_keep_mask(self.key, self.p, self.mask_shape, self.box_offset, self.box_shape, self.offset, x.device,
                               _view=True)  # fmt: skip
        cdt = compute_dtype(x.dtype)
        # (x * keep) * scale rounds once, as the op's x * (keep ? scale : 0): x * 1 is exact, and x * 0 keeps -0 / nan
        return kernels.round_to(torch.mul(x.to(cdt), keep).mul_(self.scale), x.dtype)  # the 16-bit NaN rule


class _LocalDropout(torch.autograd.Function):
    """The local product; backward regenerates the mask from the key (nothing per element saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: _LocalSpec) -> torch.Tensor:  # type: ignore[override]
        ctx.spec = spec
        return spec.apply(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.spec.apply(grad), None


def _check_mesh_and_placements(x) -> None:
    from torch.distributed.tensor import Partial, Replicate, Shard

    mesh = x.device_mesh
    if mesh.ndim != 1:
        raise ValueError(
            "dropkit dropout on a DTensor needs a 1-D device mesh (tensor parallel: Shard, Replicate or Partial); "
            f"received a {mesh.ndim}-D mesh of shape {tuple(mesh.shape)} with placements {tuple(x.placements)}. "
            "Pass the DTensor of one mesh dimension (e.g. the TP sub-mesh's activations)"
        )
    (pl,) = x.placements
    if not (type(pl) is Shard or isinstance(pl, (Replicate, Partial))):
        raise ValueError(
            f"dropkit dropout on a DTensor supports the placements Shard(d), Replicate() and Partial(); received {pl!r}"
        )


def _local_box(input):
    """``(mesh, placements, global shape, local tensor, box shape, box offset)`` of a DTensor: where this rank's
    local tensor lies in the global one (raises if the local shape is not torch's sharding of the global one)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # no public API for a box

    mesh, placements, gshape = input.device_mesh, tuple(input.placements), tuple(input.shape)
    local = input.to_local()
    box_shape, box_offset = compute_local_shape_and_global_offset(gshape, mesh, placements)
    if tuple(box_shape) != tuple(local.shape):
        raise ValueError(
            f"the DTensor's local tensor has shape {tuple(local.shape)}, but torch's sharding of the global shape "
            f"{gshape} with {placements} gives this rank {tuple(box_shape)}: its global indices are unknown"
        )
    return mesh, placements, gshape, local, tuple(box_shape), tuple(box_offset)


def _check_keys_agree(key: torch.Tensor, mesh) -> None:
    """All-reduce ``[key, -key]`` with MAX over the mesh: ``max == min`` iff every rank holds the same key."""
    import torch.distributed as dist

    if not CHECK_KEYS or mesh.size() == 1:
        return
    both = torch.cat([key, -key]).to(mesh.device_type)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=mesh.get_group())
    both = both.cpu()
    hi, lo = both[:4], -both[4:]
    if not torch.equal(hi, lo):
        raise RuntimeError(
            "dropkit dropout on a DTensor: the ranks of the mesh drew different keys (word-wise min over the ranks "
            f"{lo.tolist()}, max {hi.tolist()}; this rank {key.tolist()}), so their masks would not be one global "
            "mask. An unseeded call (seed=None) draws its key from torch's default CPU generator: call "
            "torch.manual_seed(<the same value>) on every rank before the model runs (DTensor's own random ops "
            "require this too), or give the module a seed="
        )


@_run_eagerly(
    reason="dropkit's DTensor dropout runs eagerly: this rank's box in the global mask is a data-dependent "
    "offset that dropkit's ops take as an int"
)
def dtensor_dropout(
    input,
    p: float,
    scale: float,
    noise_shape: Sequence[int] | None,
    offset: int,
    inplace: bool,
    *,
    seed: int | SeedGenerator | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
):
    r"""Dropout of a DTensor: :math:`y_e = x_e \cdot (\mathrm{keep}(e) ? \mathrm{scale} : 0)` at each GLOBAL index ``e``.

    Called by :func:`dropkit.functional.dropout` with validated arguments (``0 < p < 1``, training).
    Checks the mesh (1-D) and the placement (``Shard(d)``, ``Replicate``, ``Partial``) before the
    key is drawn, draws one key (``seed`` / ``generator``, as every dropkit op),
    checks that every rank drew the same one, evaluates the contract on this rank's box and
    returns ``DTensor.from_local`` of the product, with the input's placements, shape and stride.
    A box that is one contiguous run of the global mask (``Shard(0)``, ``Replicate``, ``Partial``)
    goes through the fused op ``dropkit::dropout`` at the run's offset; any other box is read from
    :func:`local_keep_mask`. Autograd flows through ``to_local`` / ``from_local``; backward
    regenerates the same mask. Under torch.compile this function runs eagerly (a graph break).

    Args:
        input: a DTensor of a floating dtype, global shape ``(*)``.
        p, scale: drop probability and survivor scale (``dropkit.rng.inverted_scale(p)`` or 1).
        noise_shape: the mask's global shape (broadcast over ``input``), or ``None`` for element-wise.
        offset: global index of the mask's element 0 (non-zero inside :func:`dropkit.rng.batch_shard`).
        inplace: write the result into ``input`` and return it.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`.

    Returns:
        A DTensor of ``input``'s global shape and placements (``input`` itself when ``inplace``).

    Example:
        >>> mesh = init_device_mesh("cpu", (2,))                           # every rank: same seed
        >>> x = distribute_tensor(torch.ones(4, 6), mesh, [Shard(1)])
        >>> y = dropkit.functional.dropout(x, 0.5, seed=3)                  # a DTensor, Shard(1)
        >>> torch.equal(y.full_tensor(), dropkit.functional.dropout(torch.ones(4, 6), 0.5, seed=3))
        True
    """
    from torch.distributed.tensor import DTensor

    _check_mesh_and_placements(input)
    if inplace:
        ops.check_inplace(input)
    mesh, placements, gshape, local, box_shape, box_offset = _local_box(input)
    key = resolve_key(seed, generator)
    _check_keys_agree(key, mesh)
    mshape = tuple(noise_shape) if noise_shape is not None else gshape
    bcast = [m == 1 and g != 1 for m, g in zip(mshape, gshape)]  # the mask is shared along these dimensions
    spec = _LocalSpec(
        key=key,
        p=p,
        scale=scale,
        mask_shape=mshape,
        box_offset=tuple(0 if b else o for b, o in zip(bcast, box_offset)),
        box_shape=tuple(min(1, n) if b else n for b, n in zip(bcast, box_shape)),
        offset=offset,
    )
    if _is_one_run(spec.mask_shape, spec.box_shape):  # Shard(0), Replicate, Partial, ...: the fused op at an offset
        base = offset + sum(o * st for o, st in zip(spec.box_offset, _row_major_strides(mshape)))
        ns = None if spec.box_shape == tuple(local.shape) else spec.box_shape
        y_local = ops.dropout(local, key, p, scale, ns, base)
    else:
        y_local = _LocalDropout.apply(local, spec)
    out = DTensor.from_local(y_local, mesh, placements, run_check=False, shape=input.shape, stride=input.stride())
    return input.copy_(out) if inplace else out


@_run_eagerly(reason="dropkit's DTensor variants run eagerly: this rank's offset in the global noise is data-dependent")
def dtensor_variant(
    input,
    call,
    *,
    what: str,
    linear: bool,
    seed: int | SeedGenerator | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
):
    """A dropkit variant on a DTensor: ``call(local, key)`` on this rank's local tensor, at its global sample offset.

    Every rank draws one key (``seed`` / ``generator``) and the ranks check they agree
    (:data:`CHECK_KEYS`). ``Shard(0)``: the local samples start at global sample ``s``, so the call runs
    inside ``dropkit.rng.batch_shard(s)`` and its noise is the single-tensor call's noise on those samples.
    ``Replicate()``: the whole tensor on every rank. ``Partial()``: only when the variant is ``linear`` in
    ``x`` (each partial sum gets the same factor, so their sum is the full tensor's result). Returns a
    DTensor with the input's placements, shape and stride; autograd flows through ``to_local`` /
    ``from_local``.

    Args:
        input: a DTensor on a 1-D mesh.
        call: ``(local tensor, key tensor) -> local result``, the variant with ``seed=key``.
        what: the variant's name, for errors.
        linear: whether the variant is linear in its input (allows ``Partial()``).
        seed, generator: the key, as in :func:`dropkit.functional.dropout`.
    """
    from torch.distributed.tensor import DTensor, Partial, Shard

    from dropkit.rng import batch_shard, current_batch_start

    _check_mesh_and_placements(input)
    (pl,) = input.placements
    if isinstance(pl, Partial) and not linear:
        raise ValueError(
            f"dropkit.functional.{what} on a Partial() DTensor: the variant is not linear in its input, so applying "
            "it to each partial sum is not the result on their sum. Redistribute to Replicate() or Shard(0) first"
        )
    if type(pl) is Shard and pl.dim % input.dim() != 0:
        raise ValueError(
            f"dropkit.functional.{what} on a DTensor supports Shard(0) (samples), Replicate() and Partial(); received "
            f"{pl!r}. Element-wise dropout (dropkit.functional.dropout and the modules built on it) takes every "
            "Shard(d); redistribute to Shard(0) or Replicate() for this variant"
        )
    mesh, placements, gshape, local, box_shape, box_offset = _local_box(input)
    key = resolve_key(seed, generator)
    _check_keys_agree(key, mesh)
    start = box_offset[0] if type(pl) is Shard else 0
    with batch_shard(current_batch_start() + start):
        y_local = call(local, key)
    return DTensor.from_local(y_local, mesh, placements, run_check=False, shape=input.shape, stride=input.stride())


def refuse_dtensor(x: object, what: str) -> None:
    """A clear error for the variants that do not take DTensor inputs (instead of DTensor's mixed-tensor error)."""
    if is_dtensor(x):
        raise TypeError(
            f"dropkit.functional.{what} does not take DTensor inputs. Call it on the local tensor "
            "(x.to_local(), with dropkit.rng.batch_shard(<first global sample>) for a Shard(0) batch), or on "
            "x.full_tensor(). The dropout family, Gaussian, alpha, DropBlock and Concrete dropout take DTensors"
        )
