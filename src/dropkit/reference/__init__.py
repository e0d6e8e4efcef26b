"""Deprecated name of :mod:`dropkit.scratch` (the NumPy teaching layer); importing it warns.

"reference" also names a torch backend (``dropkit.kernels.reference``), hence the new name.
"""

import warnings

from dropkit.scratch import *  # noqa: F403
from dropkit.scratch import __all__  # noqa: F401

warnings.warn(
    "dropkit.reference is deprecated: the NumPy teaching layer is dropkit.scratch "
    "(e.g. dropkit.scratch.DropoutLayer(p=0.5))",
    DeprecationWarning,
    stacklevel=2,
)
