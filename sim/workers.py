"""Worker processes that end with the command that started them.

A command killed with SIGKILL (``kill -9``, the out-of-memory killer) cannot stop its pool;
on Linux its workers would go on simulating and writing point files, then wait forever
on a pipe no one writes. Each worker asks the kernel to kill it when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), and exits at once if the parent is already gone."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

#: prctl's option to set the signal a process gets when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: this process is killed when ``parent_pid`` dies (Linux, where
    the pools fork their workers from the command itself; a no-op elsewhere, where a
    worker of a killed command may outlive it)."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl in this libc: nothing to ask for
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _context() -> Any:
    """Fork on Linux: the workers are then this process's children (under forkserver,
    Python 3.14's default, their parent would be the server, and the parent-death
    signal would follow it instead); the platform's default elsewhere."""
    import multiprocessing

    return multiprocessing.get_context("fork") if sys.platform == "linux" else None


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def pool_kwargs() -> dict[str, Any]:
    """The same for a :class:`multiprocessing.pool.Pool` of a fork context."""
    return {"initializer": die_with_parent, "initargs": (os.getpid(),)}
