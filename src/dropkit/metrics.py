"""Calibration and uncertainty metrics: ``dropkit.metrics``, the documented path of :mod:`dropkit.tools.metrics` (same objects).

Names this module used to define that are not public are still found, with a DeprecationWarning
naming their new home.
"""

from dropkit.tools._compat import forward_moved
from dropkit.tools.metrics import *  # noqa: F403
from dropkit.tools.metrics import __all__  # noqa: F401

__getattr__ = forward_moved(__name__, "dropkit.tools.metrics")
