"""BLAS threads of a training worker, set before NumPy loads its BLAS (`python -m worker` does it first).

OpenBLAS, NumPy's BLAS, starts one thread per core when it loads and reads its thread count only
then. Its idle threads spin: two jobs on two cores, each with OpenBLAS's default of two threads,
trained ten times slower than with one thread each (docs/worker.md). A worker therefore sets the
thread variables of every common BLAS build to `Settings.blas_threads_for()` before anything
imports NumPy. Imports only the standard library.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import MutableMapping

from shared.config import Settings

#: Variables that BLAS libraries read when they load: OpenBLAS, OpenMP builds (OpenBLAS's and
#: others'), Intel MKL, BLIS and Apple's Accelerate.
VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: Functions that report an OpenBLAS's thread count, by the names its builds export (NumPy's
#: wheels bundle a 64-bit-integer build with prefixed names).
OPENBLAS_GETTERS = (
    "openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads64_",
)


def limit(settings: Settings, environ: MutableMapping[str, str] = os.environ) -> int:
    """Set the BLAS thread variables in `environ` for one worker; return the thread count.

    MNIST_BLAS_THREADS, when set, overrides every variable; automatic (0) fills in only the
    variables not already set, so that an explicit OPENBLAS_NUM_THREADS keeps working.
    """
    threads = settings.blas_threads_for()
    for variable in VARIABLES:
        if settings.blas_threads or not environ.get(variable):  # an empty variable is unset to BLAS
            environ[variable] = str(threads)
    return threads


def in_use() -> int | None:
    """Return the thread count of the OpenBLAS loaded in this process, or None if none is found."""
    try:
        with open("/proc/self/maps") as maps:  # Linux: the shared libraries mapped in this process
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)  # already loaded: this only looks its symbols up
        except OSError:
            continue
        for name in OPENBLAS_GETTERS:
            getter = getattr(library, name, None)
            if getter is not None:
                getter.restype = ctypes.c_int
                return int(getter())
    return None
