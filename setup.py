"""Builds the compiled CPU kernel (plain C, loaded with ctypes) into the package.

``pip install .``, ``pip wheel .`` and ``pip install -e .`` compile
``src/dropkit/kernels/cpu/*.c`` into ``dropkit/kernels/cpu/_dropkit_cpu.so`` and write its SHA-256
next to it (``_dropkit_cpu.so.sha256``): the loader opens the library only when it matches. The
library is linked without the build machine's RUNPATH (it needs libc only). The wheel is
tagged ``py3-none-<platform>``: the library uses no Python or torch ABI, only the C ABI.
If the build fails (no C compiler), the install still succeeds and dropkit compiles the
kernel at first use instead (or runs the slower torch/NumPy reference, with a warning).
Everything else is in pyproject.toml.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
KDIR = HERE / "src" / "dropkit" / "kernels" / "cpu"

_spec = importlib.util.spec_from_file_location("_dropkit_kernel_sources", KDIR / "_sources.py")
assert _spec is not None and _spec.loader is not None
_src = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_src)


class BuildPlainC(build_ext):
    """build_ext for a plain C library: no Python ABI suffix in the file name, and a failed
    build is a warning (the package falls back to compiling at first use)."""

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")[:-1], _src.LIBRARY)

    def get_export_symbols(self, ext):  # no PyInit_* function: this is not a Python module
        return []

    def build_extensions(self) -> None:
        # Python's LDSHARED may carry -Wl,-rpath,<its lib folder> (pyenv, conda): the library needs libc only,
        # and a RUNPATH of the build machine would make the loader search there on every user's machine.
        for attr in ("linker_so", "linker_so_cxx"):
            cmd = getattr(self.compiler, attr, None)
            if cmd:
                setattr(self.compiler, attr, [a for a in cmd if not a.startswith(("-Wl,-rpath", "-Wl,-R", "-R/"))])
        super().build_extensions()
        for ext in self.extensions:  # the digest the loader checks before it opens the library
            lib = Path(self.get_ext_fullpath(ext.name))
            if lib.is_file():
                Path(str(lib) + _src.DIGEST_SUFFIX).write_text(hashlib.sha256(lib.read_bytes()).hexdigest() + "\n")

    def get_outputs(self) -> list[str]:  # the digests travel with the libraries (wheel, editable install)
        outs = super().get_outputs()
        return outs + [o + _src.DIGEST_SUFFIX for o in outs]

    def _get_output_mapping(self):
        for regular, inplace in super()._get_output_mapping():
            yield regular, inplace
            if regular.endswith(_src.LIBRARY):
                yield regular + _src.DIGEST_SUFFIX, inplace + _src.DIGEST_SUFFIX

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, regular = self._get_inplace_equivalent(build_py, ext)
            if os.path.exists(regular + _src.DIGEST_SUFFIX):
                self.copy_file(regular + _src.DIGEST_SUFFIX, inplace + _src.DIGEST_SUFFIX, level=self.verbose)

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure: install without the library
            if os.environ.get("DROPKIT_REQUIRE_KERNEL", "").strip() not in ("", "0"):
                raise
            print(
                f"WARNING: dropkit's C kernel was not built ({exc}); it will be compiled at first use "
                "if a C compiler is found then, else the slower reference backend runs",
                file=sys.stderr,
            )


cmdclass: dict = {"build_ext": BuildPlainC}
try:  # setuptools >= 70.1 ships bdist_wheel; older ones take it from the wheel package
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]


class PlatformWheel(bdist_wheel):
    """``py3-none-<platform>``: platform-specific (a native library inside), any Python 3."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        return "py3", "none", super().get_tag()[2]


cmdclass["bdist_wheel"] = PlatformWheel

setup(
    ext_modules=[
        Extension(
            "dropkit.kernels.cpu._dropkit_cpu",
            sources=[str((KDIR / s).relative_to(HERE)) for s in _src.SOURCES],
            depends=[str((KDIR / h).relative_to(HERE)) for h in _src.HEADERS],
            include_dirs=[str(KDIR.relative_to(HERE))],
            define_macros=[("DK_SOURCE_HASH", f'"{_src.source_hash(KDIR)}"')],
            extra_compile_args=[*(f for f in _src.CFLAGS if f != "-fPIC"), "-g0"],
            extra_link_args=["-pthread"],
        )
    ],
    cmdclass=cmdclass,
)
