"""Dropout from scratch in NumPy, forward and backward, for people learning how it works.

Implements the same mask contract as the fast path (:mod:`dropkit.rng`), so for the
same seed it drops exactly the units that ``dropkit.functional.dropout`` drops.
"""

from dropkit.reference.dropout import DropoutLayer

__all__ = ["DropoutLayer"]
