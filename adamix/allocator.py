"""Keep glibc's malloc from handing a forward's freed activations back to the kernel between forwards.

By default glibc serves large blocks with fresh `mmap`s and trims the heap's free top after each free, so
forwards pay again for first-touch page faults on their activation buffers (in about three processes in four:
glibc's own dynamic threshold sometimes settles): measured here, 5,000 to 12,000 minor faults and 3 to 5% of a
64-row MiniLM forward's CPU time, varying from call to call (the noise that kept `benchmarks/serving.py` from
resolving 2%). `tune()` raises both thresholds, so blocks up to
`MMAP_THRESHOLD` come from the heap and a freed top under `TRIM_THRESHOLD` stays mapped for the next forward:
after one warm-up forward, 0 faults. The cost is that the process keeps its peak working set below
`TRIM_THRESHOLD` resident instead of returning it. A no-op off glibc (musl, macOS) and where another
allocator is preloaded (jemalloc, tcmalloc: glibc's settings then do not apply); `ADAMIX_MALLOC_TUNING=0` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for this parameter on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20
ENV = "ADAMIX_MALLOC_TUNING"


@functools.cache
def tune() -> bool:
    """Set the thresholds, once per process (later calls return the first answer); True when glibc accepted them."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc tuning (mmap threshold %d MiB, trim threshold %d MiB): %s", MMAP_THRESHOLD >> 20,
              TRIM_THRESHOLD >> 20, "set" if ok else "refused")
    return ok
