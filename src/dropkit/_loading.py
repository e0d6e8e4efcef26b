"""Loading models without unpickling: what ``dropkit guard`` (and every dropkit loader of models) accepts.

A ``.pt2`` archive (``torch.export.save``) is a zip of JSON, raw tensor bytes and a few
entries that ``torch.export.load`` unpickles: ``opaque_obj_*`` constants with plain
``pickle.loads``, tensors saved with ``use_pickle`` and the legacy format with
``torch.load(weights_only=False)``, ``custom_obj_*`` TorchScript objects, and sample inputs
with a fallback to ``weights_only=False`` when the weights-only load fails; an AOTInductor
package holds compiled code. :func:`check_pt2` reads the zip's table of contents and
its JSON configs **before torch sees the file** and accepts only:

* the archive's bookkeeping (``archive_format``, ``archive_version``, ``byteorder``,
  ``.data/*``) and ``extra/*`` files (read as text);
* ``models/<name>.json`` (the graph, JSON);
* raw tensor payloads ``data/weights/weight_<i>`` and ``data/constants/tensor_<i>`` whose
  entry in ``<name>_weights_config.json`` / ``<name>_constants_config.json`` says
  ``use_pickle: false``;
* ``data/sample_inputs/<name>.pt`` when ``torch.load(..., weights_only=True)`` reads it
  (so torch's fallback to full unpickling never runs).

Anything else is refused with :class:`UnsafeArchiveError`, one line naming the entry and why.
TorchScript files are loaded with ``torch.jit.load``, whose unpickler builds TorchScript
types and tensors only. Note that checking a model still **runs** it: its graph's ops
execute (no Python from the file, but whatever ops the graph names).

Example:
    >>> kind, program = load_program("model.pt2")      # ("pt2", ExportedProgram)
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import Any

import torch

__all__ = ["UnsafeArchiveError", "check_pt2", "load_exported_program", "load_torchscript", "load_program"]

_BOOKKEEPING = {"archive_format", "archive_version", "byteorder", "version"}
_RAW = {"data/weights/": re.compile(r"weight_\d+"), "data/constants/": re.compile(r"tensor_\d+")}
_CONFIG = re.compile(r"data/(weights|constants)/(?P<model>[^/]+)_(weights|constants)_config\.json")
_MODEL = re.compile(r"models/[^/]+\.json")
_SAMPLE = re.compile(r"data/sample_inputs/[^/]+\.pt")


class UnsafeArchiveError(ValueError):
    """A model file holds an entry that loading it would unpickle (or compiled code): refused."""

    user_facing = True  # the CLI prints it as one line, not as a bug's traceback


def _refuse(path: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{path}: refused: {why}")


def _entries(path: str, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Entries by their name inside the archive's one root folder."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1 or any("/" not in i.filename for i in infos):
        raise _refuse(path, "not a torch.export archive (expected one root folder holding every entry)")
    return {i.filename.split("/", 1)[1]: i for i in infos}


def _check_config(path: str, name: str, data: bytes) -> set[str]:
    """The raw payload files a weights / constants config names; refuses any pickled entry."""
    try:
        config = json.loads(data)["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _refuse(path, f"{name} is not a payload config (JSON with a 'config' table)") from None
    prefix = name.rsplit("/", 1)[0] + "/"
    raw = set()
    for fqn, meta in items:
        file = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(file, str) or not _RAW[prefix].fullmatch(file):
            raise _refuse(
                path, f"{prefix}{file} ({fqn!r}) is a pickled object, not a raw tensor; loading it would run pickle"
            )
        if meta.get("use_pickle", True) is not False:
            raise _refuse(
                path,
                f"{prefix}{file} ({fqn!r}) is a pickled tensor; loading it would run torch.load(weights_only=False)",
            )
        raw.add(prefix + file)
    return raw


def check_pt2(path: str | os.PathLike) -> None:
    """Raise :class:`UnsafeArchiveError` unless the ``.pt2`` at ``path`` loads without unpickling
    (see the module docstring for what is accepted); ``ValueError`` for a file that is not a zip."""
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a .pt2 exported program (not a zip archive: {exc})") from None
    with zf:
        entries = _entries(path, zf)
        raw: set[str] = set()
        for name in sorted(entries):
            if _CONFIG.fullmatch(name):
                raw |= _check_config(path, name, zf.read(entries[name]))
        for name in sorted(entries):
            if (
                name in _BOOKKEEPING
                or name.startswith((".data/", "extra/"))
                or _MODEL.fullmatch(name)
                or _CONFIG.fullmatch(name)
                or name in raw
            ):
                continue
            if _SAMPLE.fullmatch(name):
                try:
                    torch.load(io.BytesIO(zf.read(entries[name])), map_location="cpu", weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any failure means torch would unpickle fully
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise _refuse(path, f"{name} needs full unpickling (a weights-only load fails: {first})") from None
                continue
            why = (
                "compiled AOTInductor code"
                if name.startswith("data/aotinductor/")
                else "a pickled object"
                if "_obj_" in name or name.endswith((".pt", ".pkl"))
                else "an entry with no use_pickle=false config"
                if name.startswith(tuple(_RAW))
                else "not a data entry of a torch.export archive"
            )
            raise _refuse(path, f"{name} is {why}; loading it could run code")


def load_exported_program(path: str | os.PathLike) -> Any:
    """``torch.export.load(path)`` after :func:`check_pt2` (nothing in the archive is unpickled)."""
    check_pt2(path)
    try:
        return torch.export.load(os.fspath(path))
    except (RuntimeError, AssertionError, KeyError) as exc:  # a damaged archive: torch's message, with the path
        raise ValueError(
            f"{os.fspath(path)}: cannot load the exported program ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from exc


def load_torchscript(path: str | os.PathLike) -> Any:
    """``torch.jit.load(path, map_location="cpu")``; a file it cannot read is a ``ValueError`` naming it."""
    path = os.fspath(path)
    try:
        return torch.jit.load(path, map_location="cpu")
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: not a TorchScript file or .pt2 exported program ({str(exc).splitlines()[0]})"
        ) from None


def load_program(path: str | os.PathLike) -> tuple[str, Any]:
    """``("pt2", ExportedProgram)`` for a ``.pt2`` file, else ``("torchscript", ScriptModule)``; never unpickles."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path!r}")
    if path.endswith(".pt2"):
        return "pt2", load_exported_program(path)
    return "torchscript", load_torchscript(path)
