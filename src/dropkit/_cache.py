"""dropkit's one cache-folder rule, and private folders inside it.

The cache root is ``$DROPKIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dropkit``, else
``~/.cache/dropkit``. Folders that hold code dropkit will load (the compiled CPU kernel)
are created with mode 0700 and verified before each use (:func:`private_dir`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["cache_root", "private_dir", "check_private_file"]

#: The environment variable that moves dropkit's cache.
CACHE_ENV = "DROPKIT_CACHE_DIR"


def cache_root() -> Path:
    """``$DROPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dropkit``, else ``~/.cache/dropkit`` (not created)."""
    d = os.environ.get(CACHE_ENV)
    if d:
        return Path(d).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dropkit"


def _euid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def _check_owner_mode(path: Path, st: os.stat_result, what: str) -> None:
    euid = _euid()
    if euid is not None and st.st_uid != euid:
        raise PermissionError(f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {euid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def private_dir(path: str | Path) -> Path:
    """Create ``path`` with mode 0700 (parents with the default mode) unless it exists, then
    verify it: a directory, not a symlink, owned by the effective user, not writable by group
    or others, inside a parent that others cannot rename it in (not group/other-writable
    unless sticky, like /tmp). Raises ``PermissionError`` naming what is wrong.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"folder {path} is a symlink or not a directory")
    _check_owner_mode(path, st, "folder")
    pst = os.stat(path.parent)
    if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
        raise PermissionError(
            f"folder {path.parent} is writable by group or others and not sticky "
            f"(mode {stat.S_IMODE(pst.st_mode):o}): {path.name} could be swapped"
        )
    return path


def check_private_file(path: str | Path) -> None:
    """Raise ``PermissionError`` unless ``path`` is a regular file (not a symlink) owned by the
    effective user and not writable by group or others."""
    path = Path(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"{path} is a symlink or not a regular file")
    _check_owner_mode(path, st, "file")
