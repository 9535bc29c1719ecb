"""Helpers for the training tests (tests/ is on sys.path through conftest.py, which also holds the session's
synthetic tree, ``synth_root``).

``python -m train_helpers --kill-at EPOCH:BATCH <train options>`` runs the training CLI and SIGKILLs itself
after that optimiser step (and its step checkpoint): a crash at a chosen point, for the resume tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds", "images_per_s", "timing", "wall_seconds",
               "mean_images_per_s"}


def tiny_args(data_root, run_dir, **over) -> list:
    """CLI arguments of a small, fast CPU run (width 0.125, 32 px, 3 epochs)."""
    opts = {"--model": "mtl", "--data-root": str(data_root), "--run-dir": str(run_dir), "--epochs": "3",
            "--batch-size": "8", "--image-size": "32", "--width": "0.125", "--max-items": "40", "--seed": "0",
            "--workers": "0"}
    flags = []
    for k, v in over.items():
        key = "--" + k.replace("_", "-")
        if v is True:
            flags.append(key)
        elif v is False:
            flags.append("--no-" + key[2:])
        elif v is not None:
            opts[key] = str(v)
    return [x for kv in opts.items() for x in kv] + flags + ["--no-progress"]


def run_cli(args, env_extra=None, module="vfu_nb.training", launcher=None, timeout=240) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` (or a launcher such as torchrun) in a fresh process."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(env_extra or {})
    cmd = [sys.executable, *(launcher or []), "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_timing(obj):
    """Drop wall-clock entries (they differ between runs) from metrics/history structures."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def kill_at(spec: str):
    """An ``on_step`` callback that SIGKILLs this process after step ``"epoch:batch"`` (both 1-based)."""
    def on_step(epoch: int, batch: int, step: int) -> None:
        if f"{epoch}:{batch}" == spec:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return on_step


if __name__ == "__main__":
    from vfu_nb.training.cli import main

    argv = sys.argv[1:]
    at = argv.index("--kill-at")
    main(argv[:at] + argv[at + 2:], on_step=kill_at(argv[at + 1]))
