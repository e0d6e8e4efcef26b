"""The compiled CPU kernel: the mask contract, ``dropout_mul``, ``uniform``, ``normal`` and ``gaussian_mul`` in SIMD C.

The C sources in this folder (plain C on raw pointers, no dependence on torch's C++ ABI;
``dropkit_cpu.h`` holds the ABI) are built into ``_dropkit_cpu.so`` when the package is
installed (``pip install``, ``pip wheel``, ``pip install -e``: see ``setup.py``, which also
writes the library's SHA-256 into ``_dropkit_cpu.so.sha256``) and loaded from the installed
package with :mod:`ctypes` (which releases the GIL during each call) **only after its SHA-256
matched**: a truncated, damaged or replaced library is never opened (one warning, then the
reference backend), so the process never dies of it.

The package is split in three:

* :mod:`~dropkit.kernels.cpu._build` -- first-use builds: a source tree without a built
  library (or with one older than its sources) compiles the kernel with the system C compiler
  into a private folder of the user's cache (``$DROPKIT_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/dropkit``, else ``~/.cache/dropkit``; subfolder ``cpu-kernel``), created
  with mode 0700 and verified along its whole path before every use, the library file and its
  digest too. A folder that fails the check is never used (the build then goes to a fresh
  private temporary folder for this process), and a cached library that does not load or is
  not the current build is rebuilt.
* :mod:`~dropkit.kernels.cpu._abi` -- the ctypes signatures, the digest check and loading,
  the ISA and thread-team selection (:data:`~dropkit.kernels.cpu._abi._state`).
* :mod:`~dropkit.kernels.cpu._torch` -- the C++ registration (``dk_torch.cpp``) of the CPU kernels of
  ``dropkit::dropout``, ``dropout_`` and ``gaussian_dropout``: built at first import against the torch in
  use (torch's C++ ABI changes between versions), cached and verified like a first-use build, then
  registered with the dispatcher over this library's entry points; where it cannot be built, the Python
  registration (:mod:`dropkit.ops.kernels` over the wrappers below) serves the same bits.
* :mod:`~dropkit.kernels.cpu._wrappers` -- the Python functions re-exported here:
  :func:`keep_mask`, :func:`dropout_mul`, :func:`uniform`, :func:`normal`, :func:`gaussian_mul`,
  :func:`mask_fold`, :func:`available`, :func:`status`, :func:`isa`, :func:`set_isa`,
  :func:`supported_isas`.

One build runs on any x86-64 or arm64 CPU: the library has a body per instruction set and
runs the best one this CPU supports (:func:`status` says which). The results are
bit-identical to :mod:`dropkit.kernels.reference` on every ISA and for every thread count,
because each element's mask depends only on its global index.

Parallel calls run on torch's own OpenMP thread team when torch uses OpenMP (found with
``dlopen(RTLD_NOLOAD)``: already loaded, never loaded by us), else on the kernel's own
pthread pool.

Environment (read and validated once, at import; a bad value is reported by one warning
naming the variable and ignored):

* ``DROPKIT_NO_KERNEL=1``: do not build or load the kernel (the reference backend serves CPU).
* ``DROPKIT_CPU_ISA=scalar|avx2|avx512|neon``: run this ISA (for tests; the best one if the CPU lacks it).
* ``CC``: the C compiler of a first-use build (default ``cc``, then ``gcc``, then ``clang``).
* ``CXX``: the C++ compiler of the C++ registration (default ``c++``, then ``g++``, then ``clang++``).
* ``DROPKIT_CPP_KERNELS=0``: do not build or load the C++ registration (the Python registration serves).
* ``DROPKIT_CPU_POOL=pthread``: use the kernel's own thread pool instead of torch's OpenMP team.
* ``DROPKIT_CPU_SPIN_US``: how long an idle worker of the own pool spins before it sleeps (default 200).
* ``DROPKIT_CPU_CFLAGS``: extra flags of a first-use build (e.g. ``-fsanitize=address``; also makes
  the loader skip the installed library).

Without the library and without a working compiler, :func:`available` is ``False``, one
``RuntimeWarning`` (pointing at the user's call) says why and how to get the fast path,
and :func:`status` keeps the reason.
"""

from __future__ import annotations

from dropkit.kernels.cpu._abi import ISAS
from dropkit.kernels.cpu._wrappers import (
    available,
    dropout_mul,
    gaussian_mul,
    isa,
    keep_mask,
    mask_fold,
    normal,
    parallel_threshold,
    set_isa,
    status,
    supported_isas,
    uniform,
)

__all__ = [
    "available",
    "status",
    "keep_mask",
    "dropout_mul",
    "isa",
    "set_isa",
    "supported_isas",
    "ISAS",
    "parallel_threshold",
    "mask_fold",
    "uniform",
    "normal",
    "gaussian_mul",
    "CAPABILITIES",
]

#: The primitives of :mod:`dropkit.kernels` this backend computes itself (the dispatcher sends
#: the others to :mod:`dropkit.kernels.reference`).
CAPABILITIES = frozenset({"keep_mask", "dropout_mul", "uniform", "normal", "gaussian_mul", "mask_fold"})
