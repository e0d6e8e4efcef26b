"""How the command line tells bad input from bugs.

* :class:`UsageError` -- bad input found by the CLI's own checks.
* Any exception with a true ``user_facing`` attribute (``dropkit._io.CorruptFileError``,
  ``DiskFullError``, the lab's ``ConfigMismatch``, ``RunFolderBusy``, ``DatasetError``, ...) --
  something the user can fix, described in the message.
* A ``ValueError`` / ``TypeError`` raised by an argument check (the innermost frame is in
  ``dropkit/cli/`` or ``dropkit/_validation.py``, the shared "Invalid value for `x`" checks).

These get one line, ``dropkit <command>: error: <message>``, and exit status 2. Everything
else is a bug: its traceback is printed with a line asking to report it.
"""

from __future__ import annotations

import os
import traceback

from dropkit.lab.errors import reraise_as

__all__ = ["UsageError", "is_user_error", "user_input"]

_CLI_DIR = os.path.dirname(os.path.abspath(__file__))
_VALIDATION = os.path.join(os.path.dirname(_CLI_DIR), "_validation.py")


class UsageError(ValueError):
    """Bad command-line input; the message names the flag, what is accepted and what was received."""

    user_facing = True


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is bad input (a short message) rather than a bug (a traceback)."""
    if getattr(exc, "user_facing", False):
        return True
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    where = os.path.abspath(frames[-1].filename)
    return where == _VALIDATION or os.path.dirname(where) == _CLI_DIR


def user_input():
    """Inside: a ``ValueError`` / ``TypeError`` is a check of the user's input, re-raised as :class:`UsageError`."""
    return reraise_as(UsageError)
