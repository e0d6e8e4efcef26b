"""Mask pictures: what element-wise, spatial, DropBlock, DropPath and locked dropout drop.

:func:`mask_figure` draws, for one input shape ``(N, C, H, W)``, the keep mask of each
variant side by side: one panel per variant, ``N`` rows (examples) by ``C`` columns
(channels) of ``H x W`` tiles, white = kept, black = dropped, with the fraction dropped
in the title. Locked dropout reads the input as a sequence ``(N, T=C, H, W)`` with
``batch_first=True``: one mask per example, the same at every step (column).
Matplotlib (the ``lab`` extra) is imported only when drawing; no pyplot, no GUI backend.

Example:
    >>> dropkit.viz.save_masks("masks.png", shape=(8, 6, 12, 12), p=0.3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from dropkit._validation import check_int, check_p

__all__ = ["variant_masks", "mask_figure", "save_masks"]


def variant_masks(
    shape: Sequence[int] = (8, 6, 12, 12), p: float = 0.3, block_size: int = 5, seed: int = 4
) -> dict[str, torch.Tensor]:
    """``{label: bool keep mask of shape (N, C, H, W)}`` for the five variants, drawn with ``seed``."""
    from dropkit import nn

    shape = tuple(check_int(s, "shape", minimum=1) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"`shape` must be (N, C, H, W); received {shape}")
    p = check_p(p, allow_one=False)
    block_size = check_int(block_size, "block_size", minimum=1)
    layers = {
        f"element-wise Dropout(p={p:g})": nn.Dropout(p, seed=seed),
        f"spatial Dropout2d(p={p:g})": nn.Dropout2d(p, seed=seed),
        f"DropBlock2d(p={p:g}, block={block_size})": nn.DropBlock2d(p, block_size, seed=seed),
        f"DropPath(p={p:g})": nn.DropPath(p, seed=seed),
        f"LockedDropout(p={p:g}), steps = columns": nn.LockedDropout(p, batch_first=True, seed=seed),
    }
    x = torch.ones(shape)
    with torch.no_grad():
        return {label: layer.train()(x.clone()) != 0 for label, layer in layers.items()}


def _tiles(mask: torch.Tensor, gap: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> one (N*(H+gap), C*(W+gap)) image with grey gaps (0.5)."""
    n, c, h, w = mask.shape
    img = torch.full((n * (h + gap) - gap, c * (w + gap) - gap), 0.5)
    for i in range(n):
        for j in range(c):
            img[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = mask[i, j].float()
    return img


def mask_figure(shape: Sequence[int] = (8, 6, 12, 12), p: float = 0.3, block_size: int = 5, seed: int = 4):
    """A matplotlib ``Figure`` with the five masks side by side (see the module docstring)."""
    from matplotlib.figure import Figure

    masks = variant_masks(shape, p, block_size, seed)
    fig = Figure(figsize=(3.6 * len(masks), 5.6), dpi=100)
    axes = fig.subplots(1, len(masks))
    for ax, (label, keep) in zip(axes, masks.items(), strict=True):
        ax.imshow(_tiles(keep).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        dropped = 1.0 - keep.float().mean().item()
        ax.set_title(f"{label}\ndropped {dropped:.1%}", fontsize=10)
        ax.set_xlabel("channels" if "Locked" not in label else "time steps", fontsize=9)
        ax.set_ylabel("examples", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    n, c, h, w = masks[next(iter(masks))].shape
    fig.suptitle(
        f"dropkit masks on one input of shape (N={n}, C={c}, H={h}, W={w}); white = kept, black = dropped", fontsize=12
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))  # room for the suptitle above the panel titles
    return fig


def save_masks(
    path: str | os.PathLike, shape: Sequence[int] = (8, 6, 12, 12), p: float = 0.3, block_size: int = 5, seed: int = 4
) -> str:
    """Write :func:`mask_figure` as a PNG to ``path``; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = mask_figure(shape, p, block_size, seed)
    FigureCanvasAgg(fig)
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
