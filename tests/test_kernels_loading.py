"""Where the compiled CPU kernel is loaded from, and what is refused (docs/security.md, "Native code").

Each case runs in a fresh interpreter (the library is loaded once per process). A "planted"
library is a tiny C library whose constructor writes a marker file when it is loaded: the
marker must never appear.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import dropkit
from dropkit.kernels import cpu
from dropkit.kernels.cpu import _abi, _build, _sources

SRC = str(Path(dropkit.__file__).resolve().parent.parent)
CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

#: The library built into the package is ignored in every case here: FAST_BUILD's extra build flags make the
#: loader build its own (a prelude cannot patch the loader: ``import dropkit`` registers the ops' CPU kernel,
#: which loads the library, before any line after it runs).
NO_PACKAGED = ""
#: The cache of the tests that do not choose one (one first-use build for all of them).
_SHARED_CACHE = tempfile.mkdtemp(prefix="dropkit-test-cache-")
#: First-use builds in these tests skip optimisation (5x faster to compile; the bits are the same).
FAST_BUILD = {"DROPKIT_CPU_CFLAGS": "-O0", "DROPKIT_CPP_KERNELS": "0"}  # the C++ registration: tests/test_native.py

_SCRIPT = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch
        from dropkit import kernels
        from dropkit.kernels import cpu
        info = __import__("dropkit").backend_info("cpu")
        ok = bool(torch.equal(kernels.for_device("cpu").keep_mask(1000, 0.5, 1, 2, 3, torch.device("cpu")),
                              torch.from_numpy(__import__("dropkit").rng.keep_mask_numpy(1000, 0.5, 1, 2, 3))))
    print(json.dumps({"info": info, "ok": ok, "warnings": [[str(w.message), w.filename, w.lineno] for w in caught
                                                         if "dropkit" in str(w.message)]}))
    """
)


def _run(env_extra: dict[str, str], prelude: str = NO_PACKAGED, script: str = _SCRIPT, args=()) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    env.update(FAST_BUILD, DROPKIT_CACHE_DIR=_SHARED_CACHE)  # never the user's own cache
    env.update(env_extra, PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", prelude + script] if not args else [sys.executable, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected_name(cc: list[str] | None = None) -> str:
    """The file name a first-use build has in the tests' environment (FAST_BUILD; ``cc``: $CC)."""
    cc = cc or _build._find_compiler()
    assert cc is not None
    return _build._library_name(cc, [*_sources.CFLAGS, "-shared", *FAST_BUILD["DROPKIT_CPU_CFLAGS"].split()],
                             _build._current_hash())


#: Refusal tests make the rebuild fail at once (CC=false): what matters is what is never loaded.
NO_BUILD = {"CC": "false"}


def _plant(path: Path, marker: Path) -> None:
    """A shared library at ``path`` whose constructor creates ``marker`` (with a matching SHA-256 file)."""
    c = path.parent / "plant.c"
    c.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void planted(void) {{
            FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("loaded", f); fclose(f); }}
        }}
        const char *dk_source_hash(void) {{ return "{_build._current_hash()}"; }}
    """))
    subprocess.run([CC, "-shared", "-fPIC", str(c), "-o", str(path)], check=True, capture_output=True)
    c.unlink()
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


@needs_cc
def test_planted_library_in_a_world_writable_cache_folder_is_never_loaded(tmp_path):
    cache = tmp_path / "cache"
    folder = cache / "cpu-kernel"
    folder.mkdir(parents=True)
    marker = tmp_path / "MARKER"
    _plant(folder / _expected_name(["false"]), marker)
    folder.chmod(0o777)
    res = _run({"DROPKIT_CACHE_DIR": str(cache), **NO_BUILD})
    assert not marker.exists(), "the planted library was loaded"
    assert res["ok"] and res["info"]["backend"] == "reference"
    assert "cache folder refused" in res["info"]["reason"] and "writable by group or others" in res["info"]["reason"]
    assert any("kernel cache folder is refused" in w[0] for w in res["warnings"])


@needs_cc
def test_planted_library_writable_by_others_in_a_private_folder_is_never_loaded(tmp_path):
    folder = tmp_path / "cache" / "cpu-kernel"
    folder.mkdir(parents=True, mode=0o700)
    marker = tmp_path / "MARKER"
    lib = folder / _expected_name(["false"])
    _plant(lib, marker)
    lib.chmod(0o777)
    res = _run({"DROPKIT_CACHE_DIR": str(tmp_path / "cache"), **NO_BUILD})
    assert not marker.exists(), "the planted library was loaded"
    assert res["ok"] and "rebuilt the cached library" in res["info"]["reason"]
    assert "writable by group or others" in res["info"]["reason"]


@needs_cc
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_planted_library_in_a_folder_owned_by_another_user_is_never_loaded(tmp_path):
    cache = tmp_path / "cache"
    folder = cache / "cpu-kernel"
    folder.mkdir(parents=True, mode=0o700)
    marker = tmp_path / "MARKER"
    lib = folder / _expected_name(["false"])
    _plant(lib, marker)
    for path in (folder, lib, lib.with_name(lib.name + ".sha256")):
        os.chown(path, 65534, 65534)
    res = _run({"DROPKIT_CACHE_DIR": str(cache), **NO_BUILD})
    assert not marker.exists(), "the planted library was loaded"
    assert res["ok"] and "owned by uid 65534" in res["info"]["reason"]


@needs_cc
def test_the_old_shared_temp_location_is_never_looked_at(tmp_path):
    """Before: $TMPDIR/dropkit-<uid>/<name> was loaded if present, whoever put it there. Now an
    unusable cache means a build in a fresh private folder, removed once loaded."""
    tmpdir = tmp_path / "tmp"
    shared = tmpdir / f"dropkit-{os.getuid()}"
    shared.mkdir(parents=True)
    marker = tmp_path / "MARKER"
    _plant(shared / _expected_name(), marker)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / "cpu-kernel").write_text("not a folder")  # the cache cannot be used
    res = _run({"DROPKIT_CACHE_DIR": str(readonly), "TMPDIR": str(tmpdir)})
    assert not marker.exists(), "the planted library was loaded"
    assert res["ok"] and res["info"]["backend"].startswith("cpu-")
    assert "private temporary folder" in res["info"]["reason"]
    assert not list(tmpdir.glob("dropkit-kernel-*"))  # the private build folder is removed after loading


@needs_cc
def test_corrupt_cached_library_is_rebuilt_not_opened(tmp_path):
    if not cpu.available():
        pytest.skip("no compiled kernel to copy")
    folder = tmp_path / "cache" / "cpu-kernel"
    folder.mkdir(parents=True, mode=0o700)
    good = Path(_abi._state["path"]).read_bytes()
    lib = folder / _expected_name()
    lib.write_bytes(good[: len(good) // 3])  # truncated: opening it would kill the process with SIGBUS
    lib.chmod(0o700)
    lib.with_name(lib.name + ".sha256").write_text(hashlib.sha256(good).hexdigest() + "\n")
    res = _run({"DROPKIT_CACHE_DIR": str(tmp_path / "cache")})
    assert res["ok"] and res["info"]["backend"].startswith("cpu-")
    assert "rebuilt the cached library" in res["info"]["reason"] and "does not match its SHA-256" in res["info"]["reason"]
    assert lib.read_bytes()[:4] == b"\x7fELF" and oct(folder.stat().st_mode & 0o777) == oct(0o700)
    again = _run({"DROPKIT_CACHE_DIR": str(tmp_path / "cache")})
    assert again["ok"] and "cached first-use build" in again["info"]["reason"] and not again["warnings"]


@needs_cc
def test_stale_installed_library_is_not_used(tmp_path):
    """A library built from other sources (a source tree edited after `pip install -e`) is skipped."""
    stale = tmp_path / "stale.so"
    _plant(stale, tmp_path / "MARKER")
    with pytest.raises(_abi._Unusable, match="not a current dropkit kernel"):
        _abi._open(stale, _build._current_hash())
    if cpu.available():
        with pytest.raises(_abi._Unusable, match="built from other sources"):
            _abi._open(Path(_abi._state["path"]), "0" * 20)


def test_no_compiler_warns_once_at_the_users_import(tmp_path):
    """The ops register their CPU kernel at ``import dropkit``: the warning points at the user's import."""
    script = tmp_path / "user_code.py"
    script.write_text(NO_PACKAGED + textwrap.dedent("""
        import json, warnings
        import torch
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import dropkit  # USER LINE
            x = torch.ones(1000, requires_grad=True)
            y = dropkit.nn.Dropout(0.5)(x)
            y.sum().backward()
            dropkit.nn.Dropout(0.5)(x)
        print(json.dumps([[str(w.message), w.filename, w.lineno] for w in caught if "dropkit" in str(w.message)]))
    """))
    env = {"CC": "no-such-compiler-dropkit", "DROPKIT_CACHE_DIR": str(tmp_path / "cache")}
    caught = _run(env, args=[str(script)])
    assert len(caught) == 1, caught
    message, filename, lineno = caught[0]
    assert filename == str(script)
    assert "USER LINE" in script.read_text().splitlines()[lineno - 1]
    assert "no C compiler found" in message and "wheel built for this platform" in message


def test_library_name_and_abi_come_from_the_library():
    if not cpu.available():
        pytest.skip(f"no compiled kernel: {cpu.status()[1]}")
    lib = _abi._state["lib"]
    assert lib.dk_source_hash().decode() == _build._current_hash()
    assert lib.dk_abi_constant(b"DK_ISA_AVX512") == _abi._state["codes"]["avx512"]
    assert lib.dk_abi_constant(b"no such constant") == -1


def test_parallelism_needs_no_proc_maps():
    src = Path(cpu.__file__).resolve().parents[2]
    hits = [p for p in src.rglob("*.py") if "/proc/self/maps" in p.read_text()]
    assert not hits
    if cpu.available() and "OpenMP" in __import__("torch").__config__.parallel_info():
        assert "torch's OpenMP team" in cpu.status()[1]


@pytest.mark.parametrize("bad", [
    {"DROPKIT_CPU_SPIN_US": "abc", "DROPKIT_CPU_ISA": "sse9", "DROPKIT_NO_KERNEL": "maybe",
     "DROPKIT_CPU_POOL": "fibers"},
    {"DROPKIT_CPU_SPIN_US": "-5"},
], ids=["five-variables", "negative-spin"])
def test_bad_environment_values_warn_once_at_import_naming_the_variable(bad):
    script = textwrap.dedent("""
        import json, warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as at_import:
            import dropkit, dropkit.kernels, dropkit.kernels.cpu
        with warnings.catch_warnings(record=True) as later:
            import torch
            x = torch.ones(1 << 16)
            y = dropkit.functional.dropout(x, 0.5, training=True, seed=1)
            info = dropkit.backend_info("cpu")
        print(json.dumps({"import": [str(w.message) for w in at_import], "later": [str(w.message) for w in later],
                          "info": info, "ok": True, "warnings": []}))
    """)
    res = _run(bad, prelude="", script=script)
    for var, value in bad.items():
        named = [m for m in res["import"] if f"{var}={value!r}" in m]
        assert len(named) == 1, (var, res["import"])
        assert "not valid (accepted:" in named[0]
        assert not any(var in m for m in res["later"])  # validated once, not at every call
    assert res["info"]["backend"].startswith("cpu-")  # every bad value was ignored


# ---------------------------------------------------------------------------
# Issue 21: the packaged library is verified (SHA-256 from setup.py) before it is opened
# ---------------------------------------------------------------------------
_DAMAGE_SCRIPT = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch, dropkit
        from dropkit import kernels
        x = torch.randn(5000)
        y = dropkit.functional.dropout(x, 0.3, training=True, seed=7)
        z = dropkit.functional.dropout(x, 0.3, training=True, seed=7)
        info = dropkit.backend_info("cpu")
        scale = dropkit.rng.inverted_scale(0.3)
        ref = kernels.backend("reference").dropout_mul(x, 0.3, scale, 7, 0, 0)
    print(json.dumps({"info": info, "ok": bool(torch.equal(y, ref) and torch.equal(z, ref)),
                      "warnings": [str(w.message) for w in caught if "dropkit" in str(w.message)]}))
    """
)


def _package_copy(tmp_path: Path) -> Path:
    """A copy of the dropkit package (library and digest included) in a folder of its own; returns the library."""
    if not cpu.available() or "installed with the package" not in cpu.status()[1]:
        pytest.skip(f"no packaged library with its digest to copy: {cpu.status()[1]}")
    dst = tmp_path / "pkg" / "dropkit"
    shutil.copytree(Path(dropkit.__file__).resolve().parent, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst / "kernels" / "cpu" / _sources.LIBRARY


def _run_package(lib: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    env.update(PYTHONPATH=str(lib.parents[3]), CC="false", DROPKIT_CACHE_DIR=str(lib.parents[4] / "cache"))
    proc = subprocess.run([sys.executable, "-c", _DAMAGE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the process died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_packaged_library_is_loaded_after_its_digest_matched(tmp_path):
    lib = _package_copy(tmp_path)
    res = _run_package(lib)
    assert res["ok"] and res["info"]["backend"].startswith("cpu-") and not res["warnings"]
    assert "SHA-256 verified" in res["info"]["reason"] and str(lib) in res["info"]["reason"]


@pytest.mark.parametrize("damage", ["truncated-4k", "truncated-half", "flipped-code", "flipped-header", "no-digest"])
def test_damaged_packaged_library_warns_once_and_falls_back(tmp_path, damage):
    """MEDIUM: a truncated library ended in SIGBUS inside ctypes.CDLL, flipped code bytes in SIGSEGV. Now it is
    never opened: the process lives, warns once, and the reference gives the same bits."""
    lib = _package_copy(tmp_path)
    data = bytearray(lib.read_bytes())
    if damage == "truncated-4k":
        data = data[:4096]
    elif damage == "truncated-half":
        data = data[: len(data) // 2]
    elif damage == "flipped-code":
        for i in range(len(data) // 3, len(data) // 3 + 4096, 7):
            data[i] ^= 0xFF
    elif damage == "flipped-header":
        data[20] ^= 0x01
    else:
        Path(str(lib) + _sources.DIGEST_SUFFIX).unlink()
    lib.write_bytes(bytes(data))
    res = _run_package(lib)
    assert res["ok"] and res["info"]["backend"] == "reference"
    assert len(res["warnings"]) == 1, res["warnings"]
    why = "cannot be verified" if damage == "no-digest" else "does not match"
    assert why in res["info"]["reason"] and why in res["warnings"][0] and "Reinstall dropkit" in res["warnings"][0]


def test_built_library_has_no_runpath():
    """LOW: the library needs libc only; the build machine's RUNPATH (Python's LDSHARED) is not linked in."""
    lib = Path(cpu.__file__).resolve().parent / _sources.LIBRARY
    readelf = shutil.which("readelf")
    if not lib.is_file() or readelf is None:
        pytest.skip("no built library or no readelf")
    dynamic = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "(RUNPATH)" not in dynamic and "(RPATH)" not in dynamic, dynamic


@needs_cc
def test_world_writable_grandparent_of_the_cache_is_refused(tmp_path):
    """LOW: the check covered only cpu-kernel/ and its parent; a world-writable, non-sticky folder higher up
    lets anyone swap the whole cache. Now every folder on the way is checked."""
    from dropkit._cache import private_dir

    grand = tmp_path / "shared"
    cache = grand / "me" / "cache"
    folder = cache / "cpu-kernel"
    folder.mkdir(parents=True, mode=0o700)
    folder.parent.chmod(0o700)
    (grand / "me").chmod(0o755)
    grand.chmod(0o777)
    marker = tmp_path / "MARKER"
    _plant(folder / _expected_name(["false"]), marker)
    with pytest.raises(PermissionError, match=f"{grand} .*writable by group or others and not sticky"):
        private_dir(folder)
    res = _run({"DROPKIT_CACHE_DIR": str(cache), **NO_BUILD})
    assert not marker.exists(), "the planted library was loaded"
    assert "cache folder refused" in res["info"]["reason"] and str(grand) in res["info"]["reason"]
    grand.chmod(0o1777)  # sticky, like /tmp: nobody can rename what others own in it
    assert private_dir(folder) == folder.resolve()
