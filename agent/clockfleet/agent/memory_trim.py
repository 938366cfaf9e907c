"""An idle agent gives back the memory its start-up freed.

Reading agent.yaml, importing, and the first sync's buffers leave freed blocks in the C
library's heap, which glibc keeps for the process's life unless asked: an agent idles for
hours between syncs. After its first acknowledged report, the service runs one full garbage
collection and glibc's malloc_trim(0) (bench/footprint.py measures the RSS after it). Where
the C library has no malloc_trim (musl), nothing happens.
"""

from __future__ import annotations

import ctypes
import gc


def give_back_freed_memory() -> bool:
    """True when the C library returned memory to the kernel."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
