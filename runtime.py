"""How the toolkit uses a CPU machine: how many cores it may use, and how the C heap is tuned for them.

Worker pools (feature extraction, demo Dataset generation) run one single-threaded process per
core returned by :func:`usable_cores`: the cores the process may run on, and inside a Slurm job
no more than the job's ``--cpus-per-task`` (a cluster without CPU binding leaves the whole node in
the affinity mask, and every job on it would start a worker per core).

Small models on the CPU allocate and free many tensors of tens of megabytes per batch.
glibc serves blocks that large with ``mmap`` and returns them with ``munmap`` on every free, so
each new tensor starts on fresh pages. Faulting those pages in took about 15 % of a cold demo
run's CPU time: 248 s of system time and 1e8 minor page faults. :func:`keep_freed_memory` makes
the heap keep and reuse freed memory instead. Peak memory stays the same; it is simply not
handed back between batches.

A pool's worker ends with the process that started it (:func:`exit_with_parent`): killed with
``kill -9``, a run would otherwise leave its workers to finish their batch and then wait for work
forever.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["usable_cores", "use_usable_cores", "keep_freed_memory", "exit_with_parent"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_applied = False


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), capped by
    ``SLURM_CPUS_PER_TASK`` inside a Slurm job."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    allotted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(cores, int(allotted))) if allotted.isdigit() and int(allotted) > 0 else cores


def use_usable_cores() -> int:
    """Size torch's thread pool to :func:`usable_cores` and return it. torch sizes it by the machine,
    so a Slurm job given 4 of a node's 64 cores would otherwise run 64 threads on them."""
    import torch

    cores = usable_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it: no page faults on reused memory.

    Applies to this process and is idempotent. Returns ``False`` where the C library is not glibc
    (macOS, musl), which is left untouched.
    """
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied


def exit_with_parent() -> None:
    """In a worker process of a pool (its initializer): end this process as soon as the process that
    started it is gone. A daemon thread waits on the parent's sentinel; what the worker was writing
    is left as a ``*.tmp`` file at most (:mod:`atomic`), which the feature store clears."""
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def wait_for_parent() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=wait_for_parent, name="exit-with-parent", daemon=True).start()
