"""dropkit's one cache-folder rule, and private folders inside it.

The cache root is ``$DROPKIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dropkit``, else
``~/.cache/dropkit``. Folders that hold code dropkit will load (the compiled CPU kernel)
are created with mode 0700 and verified, along the whole path, before each use (:func:`private_dir`).
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


def _check_ancestors(path: Path) -> None:
    """Every existing folder above ``path`` (resolved) must be owned by this user or root, and not writable by
    group or others unless sticky (like /tmp): else someone else could rename or replace a folder on the way."""
    euid = _euid()
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        if euid is not None and st.st_uid not in (euid, 0):
            raise PermissionError(
                f"folder {parent} (on the way to {path}) is owned by uid {st.st_uid}, not by this user "
                f"(uid {euid}) or root: it could swap what lies below it"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise PermissionError(
                f"folder {parent} (on the way to {path}) is writable by group or others and not sticky "
                f"(mode {stat.S_IMODE(st.st_mode):o}): what lies below it could be swapped"
            )


def private_dir(path: str | Path) -> Path:
    """Create ``path`` with mode 0700 (parents with the default mode) unless it exists, then
    verify it and the whole way to it: a directory, not a symlink, owned by the effective user,
    not writable by group or others, and every folder above it (symlinks resolved) owned by the
    user or root and not group/other-writable unless sticky (like /tmp), so that nobody else can
    rename or replace a folder on the way. Returns the resolved path (later uses do not follow
    symlinks again). Raises ``PermissionError`` naming what is wrong.
    """
    path = Path(os.path.realpath(Path(path).expanduser()))
    _check_ancestors(path)  # before creating anything inside a folder that fails
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"folder {path} is a symlink or not a directory")
    _check_owner_mode(path, st, "folder")
    _check_ancestors(path)
    return path


def check_private_file(path: str | Path) -> None:
    """Raise ``PermissionError`` unless ``path`` is a regular file (not a symlink) owned by the
    effective user and not writable by group or others."""
    path = Path(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(f"{path} is a symlink or not a regular file")
    _check_owner_mode(path, st, "file")
