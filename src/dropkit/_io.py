"""Atomic, checked files: the one writer every run folder of dropkit uses.

Every function writes to a temporary file in the destination's folder, ``fsync``s it,
sets its mode to :data:`FILE_MODE` (0644: run folders are results to share, nothing in
them is secret) and renames it into place with ``os.replace``. A reader, or a process
killed at any moment, sees the old file or the whole new one, never a mix; a failed write
(disk full included) leaves the old file as it was and no temporary file behind.

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json` --
  bytes, text, JSON (sorted keys are up to the caller).
* :func:`atomic_write_with` -- any writer that takes a binary file object
  (``fig.savefig``, ``torch.save``).
* :func:`atomic_write_verified` / :func:`read_verified` -- bytes with a SHA-256 sidecar
  ``<file>.sha256``, read back only after the digest matched: a bit flip or a truncation is a
  :class:`CorruptFileError` naming the file. :func:`atomic_torch_save` /
  :func:`load_torch_verified` do the same for ``torch.save`` / ``torch.load(weights_only=True)``.
* :func:`read_json` / :func:`read_jsonl` -- JSON that names the file when it is corrupt.

Errors a user can act on carry ``user_facing = True`` (the command line prints their
message without a traceback): :class:`CorruptFileError` and :class:`DiskFullError`.

Example:
    >>> from dropkit._io import atomic_write_json, read_json
    >>> p = atomic_write_json(tmp / "summary.json", {"acc": 0.9})
    >>> read_json(p)
    {'acc': 0.9}
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FILE_MODE",
    "CorruptFileError",
    "DiskFullError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_verified",
    "atomic_write_with",
    "load_torch_verified",
    "read_json",
    "read_jsonl",
    "read_verified",
    "sha256_bytes",
]

#: Mode of every file dropkit writes into a run folder.
FILE_MODE = 0o644


class CorruptFileError(ValueError):
    """A file is truncated, corrupt or fails its checksum; the message names it and the fix."""

    user_facing = True


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; the old file, if any, is intact."""

    user_facing = True


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path`` atomically.

    Returns ``path``. Raises :class:`DiskFullError` (naming ``path``) when the disk or quota
    is full; any other error propagates. Either way no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                exc.errno,
                f"no space left on the device while writing {path}; the previous version of the file "
                "and everything finished before are intact: free some space and run the same command again",
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (mode :data:`FILE_MODE`)."""
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def atomic_write_verified(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically, with its SHA-256 in ``<path>.sha256``; returns the digest.

    The sidecar is written first and lists the new digest and the previous one, so a
    process killed between the two renames leaves a file that still verifies.
    """
    path = Path(path)
    digest = sha256_bytes(data)
    previous = _read_digests(path)[:1]
    atomic_write_text(_sidecar(path), "\n".join([digest, *previous]) + "\n")
    atomic_write_bytes(path, data)
    return digest


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write_verified`; returns the digest."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)  # serialised in memory: a full disk is an OSError of the write below, not a torch error
    return atomic_write_verified(path, buf.getvalue())


def _read_digests(path: Path) -> list[str]:
    try:
        return _sidecar(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        return []


def read_verified(path: str | os.PathLike, *, fix: str = "") -> bytes:
    """The bytes of ``path`` after they matched a digest of its ``<path>.sha256`` sidecar.

    Raises :class:`CorruptFileError` naming ``path`` (and ``fix``, how to recover) when the file or the
    sidecar cannot be read or the digest differs.
    """
    path = Path(path)
    fix = fix or "delete it and run the same command again"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(f"{path} cannot be read ({exc.strerror}); {fix}") from None
    digests = _read_digests(path)
    if not digests:
        raise CorruptFileError(
            f"{path} has no readable checksum file {_sidecar(path).name}, so it cannot be trusted; {fix}"
        )
    got = sha256_bytes(data)
    if got not in digests:
        raise CorruptFileError(
            f"{path} is corrupt or truncated: SHA-256 {got[:16]}... does not match {_sidecar(path).name} "
            f"({digests[0][:16]}...); {fix}"
        )
    return data


def load_torch_verified(path: str | os.PathLike, *, map_location: str = "cpu", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` after :func:`read_verified`; a file that verifies but does not
    load is a :class:`CorruptFileError` too."""
    import torch

    fix = fix or "delete it and run the same command again"
    data = read_verified(path, fix=fix)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a file that verifies but does not load is still a bad file
        raise CorruptFileError(f"{path} matches its checksum but torch cannot load it ({exc}); {fix}") from None


def read_json(path: str | os.PathLike, *, fix: str = "") -> Any:
    """Parse the JSON file ``path``; a corrupt file is a :class:`CorruptFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}){'; ' + fix if fix else ''}") from None


def read_jsonl(path: str | os.PathLike, *, fix: str = "") -> list:
    """Parse a JSON-lines file (blank lines skipped); a corrupt line is named with the file and line number."""
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptFileError(
                    f"{path}, line {i}, is not valid JSON ({exc}){'; ' + fix if fix else ''}"
                ) from None
    return out
