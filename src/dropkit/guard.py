"""Deterministic-inference guard: ``dropkit.guard``, the documented path of :mod:`dropkit.tools.guard` (same objects).

Names this module used to define that are not public are still found, with a DeprecationWarning
naming their new home.
"""

from dropkit.tools._compat import forward_moved
from dropkit.tools.guard import *  # noqa: F403
from dropkit.tools.guard import __all__  # noqa: F401

__getattr__ = forward_moved(
    __name__,
    "dropkit.tools.guard",
    {
        "DROPOUT_CLASS_NAMES": "dropkit.tools._introspect:DROPOUT_CLASS_NAMES",
        "drop_rate": "dropkit.tools._introspect:drop_rate",
        "dropout_call": "dropkit.tools._introspect:dropout_call",
        "attention_dropout": "dropkit.tools._introspect:attention_dropout",
        "preserved_state": "dropkit.tools._introspect:preserved_state",
        "_module_stack": "dropkit.tools._introspect:module_stack",
        "_func_name": "dropkit.tools._introspect:func_name",
        "_RANDOM_FUNCS": "dropkit.tools._introspect:RANDOM_FUNCS",
        "_RANDOM_METHODS": "dropkit.tools._introspect:RANDOM_METHODS",
        "_DROPOUT_NAME": "dropkit.tools._introspect:_DROPOUT_NAME",
        "_DROPOUT_FUNCS": "dropkit.tools._introspect:_DROPOUT_FUNCS",
        "_SIGNATURES": "dropkit.tools._introspect:_SIGNATURES",
        "_MHA_SIGNATURE": "dropkit.tools._introspect:_MHA_SIGNATURE",
    },
)
