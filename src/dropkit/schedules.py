"""Dropout-rate schedules: ``dropkit.schedules``, the documented path of :mod:`dropkit.tools.schedules` (same objects).

Names this module used to define that are not public are still found, with a DeprecationWarning
naming their new home.
"""

from dropkit.tools._compat import forward_moved
from dropkit.tools.schedules import *  # noqa: F403
from dropkit.tools.schedules import __all__  # noqa: F401

__getattr__ = forward_moved(
    __name__,
    "dropkit.tools.schedules",
    {
        "is_dropout_module": "dropkit.tools._introspect:is_dropout_module",
    },
)
