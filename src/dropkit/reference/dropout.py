"""Deprecated path of :mod:`dropkit.scratch.dropout` (importing it warns, through :mod:`dropkit.reference`)."""

from dropkit.scratch.dropout import DropoutLayer

__all__ = ["DropoutLayer"]
