"""Child processes that die with their parent: the kernel's parent-death signal for every process the project starts.

A worker pool or a training subprocess whose parent is killed (SIGKILL, an OOM kill, a closed terminal's
SIGHUP to the parent only) is not told: Linux reparents it and it goes on, holding CPU, memory and, for a
trainer, the lock on its run directory. :func:`die_with_parent` asks the kernel (``prctl(PR_SET_PDEATHSIG)``)
to send the child a signal the moment its parent ends. Every process the project starts calls it first:

* the image-cache build's pool (:func:`vfu_nb.data.cache.scan_images`) and the synthetic generator's pool
  (:mod:`vfu_nb.data.synthetic`), as the pool's ``initializer``;
* the study's trainers (``study run --jobs N`` starts ``python -m vfu_nb.lifeline PID vfu_nb.study train-one ...``,
  which arms the signal before the trainer's imports take their seconds, then runs the module);
* DataLoader workers of ``--loader items`` (:func:`vfu_nb.training.runtime.seed_worker`, their ``worker_init_fn``).

Two details make it exact. The kernel sends the signal when the *thread* that started the child ends, which for
every caller here is the thread that also waits for the child. And a parent that died before the child armed the
signal cannot be noticed by the kernel any more, so the child compares its parent's pid with the one it was
given and ends itself at once when they differ.

Elsewhere than Linux the call does nothing and returns False (the pools still end when their work queue
closes; a trainer then outlives a killed study, as before).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
from typing import Optional

PR_SET_PDEATHSIG = 1    # <linux/prctl.h>


def die_with_parent(parent_pid: Optional[int] = None, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` (default SIGKILL) to this process when its parent ends.

    ``parent_pid``: the pid this process was started by. When the parent is already gone (this process was
    reparented before it could arm the signal), ``sig`` is sent to this process at once. Returns True where the
    signal is armed (Linux), False where it is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != int(parent_pid):
        os.kill(os.getpid(), sig)
    return True


def pool_options() -> dict:
    """``initializer`` and ``initargs`` for a ``ProcessPoolExecutor`` whose workers die with this process."""
    return {"initializer": die_with_parent, "initargs": (os.getpid(),)}


def command(module: str, *args: str) -> list:
    """``python -m vfu_nb.lifeline <this pid> MODULE ARGS...``: run ``python -m MODULE ARGS...`` as a child that
    dies with this process, armed before anything else is imported."""
    return [sys.executable, "-m", "vfu_nb.lifeline", str(os.getpid()), module, *args]


def main(argv=None) -> None:
    """``python -m vfu_nb.lifeline PARENT_PID MODULE [ARGS...]``: arm the parent-death signal, then run MODULE as
    ``python -m MODULE ARGS...`` would."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m vfu_nb.lifeline PARENT_PID MODULE [ARGS...]")
    die_with_parent(int(argv[0]))
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
