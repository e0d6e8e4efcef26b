"""Moved to :mod:`dropkit.tools._mc_fold` (a private module); importing it here warns."""

import warnings

from dropkit.tools._mc_fold import *  # noqa: F403
from dropkit.tools._mc_fold import __all__  # noqa: F401

warnings.warn(
    "dropkit._mc_fold moved to dropkit.tools._mc_fold; the old name will be removed", DeprecationWarning, stacklevel=2
)
