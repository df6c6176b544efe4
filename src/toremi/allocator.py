"""Keep large CPU tensors in malloc's heap instead of a fresh ``mmap`` per allocation.

glibc serves every allocation above its mmap threshold (at most 32 MiB, adjusted at run time) with
its own ``mmap`` and returns it with ``munmap`` on free. A CPU training step allocates and frees
tensors of that size every step (the logits of a 16 x 128 x 4,096 batch are 32 MiB, and their
gradient as much again), so each step page-faults and zeroes them afresh: on 2 cores that was a
third of the wall time as kernel time. Raising the mmap and trim thresholds once lets freed
blocks be reused instead (``bench/malloc_step.py`` measures it; the training result is
bit-identical, only the allocator changes).

Opt out with ``TOREMI_MALLOC=default``. A no-op off glibc (macOS, musl) and on CUDA-only
allocations, which go through PyTorch's caching allocator anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # larger than any single CPU tensor of the sizes trained here

_applied: bool | None = None


def mallopt(option: int, value: int) -> bool:
    """glibc's ``mallopt``; False where there is no glibc (macOS, musl) or it refuses the value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(option, value))
    except (OSError, AttributeError):
        return False


def keep_large_allocations_in_heap() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True if they were set."""
    global _applied
    if _applied is None:
        _applied = (os.environ.get("TOREMI_MALLOC", "").lower() != "default"
                    and mallopt(M_MMAP_THRESHOLD, THRESHOLD) and mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    return _applied


def return_large_allocations_at_once() -> bool:
    """The opposite policy, for a process that only ingests text: fix the mmap threshold at 1 MiB
    so that a freed multi-megabyte buffer leaves the RSS at once (corpus.stream)."""
    return mallopt(M_MMAP_THRESHOLD, 1 << 20)
