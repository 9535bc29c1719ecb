"""CPU thread settings for a small machine shared with other jobs: :func:`shared_cpu_env`, the one place that sets
them (notebooks, the pipeline's kernels, the study's and the GPU check's child processes).

torch's OpenMP threads busy-wait for work before they sleep. With OpenMP's default spin time a second busy process
on a small shared CPU slows training several-fold; ``GOMP_SPINCOUNT=1000`` makes them sleep soon, at a cost of a
few percent on an idle machine. OpenMP reads it when torch is imported, so it must be set before that: at the top
of a notebook (:mod:`vfu_nb.notebook`), or in the environment of a child process. Standard library only, so it
can be imported before torch.
"""

from __future__ import annotations

import os
from typing import MutableMapping, Optional

#: Variables set where they are not set already.
SHARED_CPU_ENV = {"GOMP_SPINCOUNT": "1000"}


def shared_cpu_env(env: Optional[MutableMapping] = None) -> MutableMapping:
    """Set :data:`SHARED_CPU_ENV` in ``env`` (default: this process's ``os.environ``) where unset; returns ``env``."""
    env = os.environ if env is None else env
    for name, value in SHARED_CPU_ENV.items():
        env.setdefault(name, value)
    return env
