"""Errors the lab reports as bad input: no torch import, shared by the lab and the command line."""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["ConfigError", "reraise_as"]


class ConfigError(ValueError):
    """The experiment's configuration does not fit its data or model (found before anything is written)."""

    user_facing = True


@contextmanager
def reraise_as(cls: type[Exception]):
    """Inside: a ``ValueError`` / ``TypeError`` is a check of the user's input, re-raised as ``cls(message)``
    (chained to the original); errors already marked ``user_facing`` pass unchanged."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        if isinstance(exc, cls) or getattr(exc, "user_facing", False):
            raise
        raise cls(str(exc)) from exc
