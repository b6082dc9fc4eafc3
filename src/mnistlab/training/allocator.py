"""Keep freed memory in the process for the next training step (glibc's malloc on Linux).

Every training step allocates and frees the same activations and gradients. By
default glibc serves a buffer above its mmap threshold (128 KiB at first,
raised as it goes) with a fresh ``mmap`` and unmaps it on free, and it hands
the free top of the heap back to the OS past its trim threshold, so the next
step faults the same memory in again, page by page, zero-filled by the kernel.
For a small CNN those page faults cost more than some of its layers
(``benchmarks/allocator.py``). Raising both thresholds keeps the memory in the
process, where the next step reuses it.
"""

from __future__ import annotations

import ctypes
import sys

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's own ceiling for its dynamic mmap threshold on 64-bit, which every version accepts; buffers
# above it are still mmapped (a big model's activations), where page faults weigh little against the compute.
MMAP_THRESHOLD = 32 << 20
# Free memory at the heap's top is handed back once it exceeds this, so a process that once held
# a lot (a big model's evaluation) does not keep all of it.
TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc's, whose ``mallopt`` knows these settings; else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it; musl's mallopt ignores these settings
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they are (now or already) raised.

    Process-wide and permanent: the settings stay after training (they only make
    the process keep up to ``TRIM_THRESHOLD`` of freed memory; glibc cannot be asked for
    its own dynamic thresholds back, and fixed ones would be another setting again, not the
    caller's). Does nothing and returns False where malloc is not glibc's (macOS, Windows, musl).
    """
    global _done
    if _done is None:
        libc = glibc()
        # mallopt returns 1 on success, 0 for a value it refuses.
        _done = libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return _done


def kept_warning(reuse_memory: bool) -> str | None:
    """A warning for a run with ``train.reuse_memory = false`` in a process where an earlier one raised the
    thresholds: that lasts as long as the process, so this run trains under it all the same (a notebook's
    comparison of the two settings measured nothing)."""
    if reuse_memory or not _done:
        return None
    return ("train.reuse_memory = false, but an earlier run in this process set glibc's malloc to keep freed memory "
            "(train.reuse_memory = true), which lasts as long as the process: this run trains with it all the same; "
            "run it in a fresh process to train without")
