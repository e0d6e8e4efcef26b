"""Dropout from scratch in NumPy, forward and backward, for people learning how it works.

Not a backend: nothing in dropkit runs through it. It implements the same mask contract as
the fast path (:mod:`dropkit.rng`), so for the same seed it drops exactly the units that
``dropkit.functional.dropout`` drops.

Example:
    >>> layer = dropkit.scratch.DropoutLayer(p=0.5, seed=7)
    >>> y = layer.forward(np.ones((8, 16), np.float32))
"""

from dropkit.scratch.dropout import DropoutLayer

__all__ = ["DropoutLayer"]
