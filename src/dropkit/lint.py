"""The dropout linter: ``dropkit.lint``, the documented path of :mod:`dropkit.tools.lint` (same objects).

Names this module used to define that are not public are still found, with a DeprecationWarning
naming their new home.
"""

from dropkit.tools._compat import forward_moved, make_callable
from dropkit.tools.lint import *  # noqa: F403
from dropkit.tools.lint import __all__  # noqa: F401
from dropkit.tools.lint import lint as _lint

make_callable(__name__, _lint)  # `dropkit.lint(model, (x,))`, as the README shows; `dropkit.lint.Finding` too
__getattr__ = forward_moved(__name__, "dropkit.tools.lint")
