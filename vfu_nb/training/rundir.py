"""The run directory of a training run: claimed by one process, never clobbered, checkpoints, logs.

    <run_dir>/config.json          settings + the ``resolved`` per-device values (rewritten at every start)
             history.json          per-step losses and per-epoch metrics (every epoch end)
             metrics.json          best val epoch and its val/test metrics (end of run)
             metrics.csv           one row per epoch: train losses, val/test metrics, lr, timings
             batches.csv           one row per step: the loss terms (appended, flushed every log_every steps)
             train.log             what was printed, plus the setup of every start (device, precision, data)
             tensorboard/          optional TensorBoard events
             checkpoints/last.pt   latest state (epoch end, or every checkpoint_every steps)
             checkpoints/best.pt   state at the best val epoch
             train.lock            held (flock) by the process that writes the run

:func:`claim_run_dir` refuses a folder that holds a run unless ``resume`` is set, and a resume whose settings
differ (:func:`vfu_nb.train_config.config_differences`); :class:`RunLock` keeps a second process out.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from vfu_nb.conventions import LOSS_TERMS
from vfu_nb.diskspace import appending, atomic_save, atomic_write
from vfu_nb.metrics import jsonable
from vfu_nb.train_config import TrainConfig, config_differences

BATCH_COLUMNS = ("epoch", "batch", "step", *LOSS_TERMS)


class RunDirError(Exception):
    """A run directory cannot be used as asked; the one-line message says why and what to do."""


class RunExistsError(RunDirError, FileExistsError):
    """The run directory already holds a run and ``resume`` is not set."""


class RunMismatchError(RunDirError, ValueError):
    """The run directory holds a run with other settings (it is never overwritten)."""


class RunLockedError(RunDirError):
    """Another live process is writing the run directory."""


class CorruptCheckpointError(RunDirError):
    """A checkpoint file is damaged or truncated."""


# ----------------------------------------------------------------------------------------------------------
# Files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file + fsync + os.replace; no temp file survives a failure, a full disk is a DiskFullError."""
    atomic_write(path, data)


def write_json(path, obj, indent: Optional[int] = 1) -> None:
    """Strict JSON (nan/inf -> null), written atomically (temp file + os.replace)."""
    text = json.dumps(jsonable(obj), indent=indent, separators=None if indent else (",", ":"))
    _atomic_write_bytes(Path(path), (text + "\n").encode())


def write_csv(path, rows: list, columns: Optional[list] = None) -> None:
    """Rows (dicts) as CSV, written atomically; columns default to the keys in order of first appearance."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_bytes(Path(path), buf.getvalue().encode())


def save_checkpoint(path, payload: dict) -> None:
    """``torch.save`` to ``path.tmp``, then ``os.replace`` (never a half-written checkpoint, no ``.tmp`` left after
    a failure); a full disk raises :class:`vfu_nb.diskspace.DiskFullError` naming the file, the free bytes and
    about how many the checkpoint needs."""
    atomic_save(path, lambda f: torch.save(payload, f), needed=_tensor_bytes(payload))


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested checkpoint payload (about its size on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)``; a damaged file raises :class:`CorruptCheckpointError` saying what to do."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # zip, pickle and EOF errors of a truncated or overwritten file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        best = path.with_name("best.pt")
        if path.name != "best.pt" and best.exists():
            advice = (f"resume from the best epoch instead (cp {best} {path}, then --resume) or start over "
                      f"with a new --run-dir")
        else:
            advice = "start over with a new --run-dir"
        raise CorruptCheckpointError(f"{path} is damaged or incomplete ({reason[:120]}); {advice}") from None


def checkpoint_position(path) -> Optional[tuple]:
    """``(epochs done, steps into the next epoch)`` of a checkpoint, read without loading its tensors; None when
    the file cannot be read."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ck["epoch"]), int(ck.get("batch") or 0)
    except Exception:  # noqa: BLE001  (a damaged file: the caller names what it can)
        return None


def resume_advice(run_dir) -> str:
    """What to do after a run stopped on a full disk: its last good checkpoint (and epoch) and ``--resume``."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.exists():
        return "nothing was saved yet: free space, then start the run again"
    position = checkpoint_position(last)
    if position is None:
        where = f"{last} (unreadable)"
    else:
        epoch, steps = position
        where = f"{last} (epoch {epoch}" + (f" and {steps} steps of epoch {epoch + 1}" if steps else "") + ")"
    return f"the last good checkpoint is {where}; free space, then continue with --resume (the same --run-dir)"


# ----------------------------------------------------------------------------------------------------------
# Claiming a run directory


class HolderLock:
    """An exclusive ``flock`` on the file ``path`` while this process holds it; the file records the holder (pid,
    host, start time) for the message of a refused second process (:meth:`refused`).

    The kernel drops the lock when its process dies, so the lock file of a killed holder is simply taken over.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.fd: Optional[int] = None

    def refused(self, holder: str) -> Exception:
        """The error raised when another live process (``holder``) holds the lock."""
        return RuntimeError(f"{self.path} is held by another process ({holder})")

    def acquire(self) -> "HolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise self.refused(holder) from None
            except OSError as exc:   # a file system without locks: go on unprotected rather than not at all
                os.close(fd)
                warnings.warn(f"{self.path}: cannot lock ({exc.strerror}); nothing stops a second process",
                              stacklevel=2)
                return self
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:   # not a file that its previous holder unlinked meanwhile
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise self.refused("could not take the lock: it keeps being replaced")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "HolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(HolderLock):
    """The lock on ``<run_dir>/train.lock`` while a process writes the run."""

    def __init__(self, run_dir):
        super().__init__(Path(run_dir) / "train.lock")

    def refused(self, holder: str) -> Exception:
        return RunLockedError(f"{self.path.parent} is being written by another process ({holder}); wait for it to "
                              f"finish or stop it, or use another --run-dir")

    @staticmethod
    def held_by(run_dir) -> Optional[str]:
        """Who holds ``run_dir``'s lock now ("pid N on HOST since ..."), or None when no live process does (a probe:
        the lock is taken and given back at once when it is free)."""
        try:
            fd = os.open(Path(run_dir) / "train.lock", os.O_RDWR)
        except OSError:                     # no lock file: nobody trains it
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
        except OSError:
            return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def existing_run_files(run_dir) -> list:
    """The files that make ``run_dir`` hold a run: ``config.json`` and checkpoints."""
    run_dir = Path(run_dir)
    found = [run_dir / "config.json"] if (run_dir / "config.json").exists() else []
    return found + sorted((run_dir / "checkpoints").glob("*.pt"))


def check_resume(run_dir, config: TrainConfig, ignore=()) -> None:
    """Raise :class:`RunMismatchError` when ``run_dir``'s stored settings differ from ``config``.

    The one rule for continuing a run (used by the trainer, :func:`vfu_nb.runs.ensure_run` and the study):
    every setting but :data:`vfu_nb.train_config.RESUME_SAFE_FIELDS` (and ``ignore``) must be unchanged.
    """
    cfile = Path(run_dir) / "config.json"
    if not cfile.exists():
        return
    diffs = config_differences(json.loads(cfile.read_text()), config, ignore)
    if diffs:
        raise RunMismatchError(f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); resume it with "
                               f"its own settings, or start a new run with a new --run-dir")


def read_run_config(run_dir) -> tuple:
    """``(TrainConfig, resolved)`` of a run: its settings, and the per-device values the trainer picked for
    them (``bf16``, ``channels_last``, ``deterministic``, ``num_workers``, ``sync_every``, ``heatmap_sigma``,
    ``eval_batch_size``, ...; ``{}`` for runs written before config.json recorded them)."""
    cfile = Path(run_dir) / "config.json"
    stored = json.loads(cfile.read_text())
    return TrainConfig.from_dict(stored, source=str(cfile)), dict(stored.get("resolved") or {})


def check_run_dir(config: TrainConfig) -> None:
    """Refuse to overwrite a run: without ``resume`` an existing run is an error; with it, changed settings are."""
    run_dir = Path(config.run_dir)
    found = existing_run_files(run_dir)
    if found and not config.resume:
        names = ", ".join(str(p.relative_to(run_dir)) for p in found)
        raise RunExistsError(f"{run_dir} already holds a run ({names}); continue it with --resume, or start a "
                             f"new run with a new --run-dir")
    if found:
        check_resume(run_dir, config)


# ----------------------------------------------------------------------------------------------------------
# Logs


def _epoch_row(rec: dict) -> dict:
    """One metrics.csv row from a history epoch record (nested train/val/test flattened with prefixes)."""
    row = {k: v for k, v in rec.items() if not isinstance(v, dict)}
    for part in ("train", "val", "test"):
        for k, v in (rec.get(part) or {}).items():
            row[f"{part}_{k}"] = v
    return row


class RunLog:
    """The human- and tool-readable logs of a run (rank 0 writes; other ranks get a silent instance).

    ``info`` prints a line (through tqdm while progress bars are shown) and appends it to ``train.log``;
    ``batches`` appends per-step losses to ``batches.csv`` (flushed every ``log_every`` steps) and TensorBoard;
    ``epoch`` rewrites ``metrics.csv`` from the history and adds the epoch's scalars to TensorBoard.
    Opening rewrites ``batches.csv`` from the (checkpointed) history, so rows of steps that a resume redoes
    are not repeated; TensorBoard purges events after the resumed step for the same reason.
    """

    def __init__(self, run_dir, *, active: bool, show: bool, log_every: int, tensorboard: bool,
                 history: Optional[dict] = None, step: int = 0):
        self.run_dir, self.active, self.show, self.log_every = Path(run_dir), active, show, log_every
        self._log = self._batches = self._tb = None
        self._unflushed = 0
        if not active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir / "train.log", "a", buffering=1)
        steps = (history or {}).get("batches") or {}
        rows = [{c: steps[c][i] for c in BATCH_COLUMNS} for i in range(len(steps.get("step", [])))]
        write_csv(self.run_dir / "batches.csv", rows, list(BATCH_COLUMNS))
        self._batches = open(self.run_dir / "batches.csv", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1 if step else None)

    def info(self, line: str, echo: bool = True) -> None:
        """Print ``line`` (unless ``echo`` is False) and append it, time-stamped, to train.log."""
        if not self.active:
            return
        if echo:
            if self.show:
                from tqdm.auto import tqdm

                tqdm.write(line)
            else:
                print(line, flush=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with appending(self.run_dir / "train.log"):
            self._log.write("".join(f"{stamp} {part}\n" for part in line.splitlines()))

    def batches(self, rows: list) -> None:
        """Rows ``(epoch, batch, step, category, attribute, landmark, total)`` of finished steps."""
        if not self.active:
            return
        with appending(self.run_dir / "batches.csv"):
            self._batches.write("".join(",".join(repr(v) for v in row) + "\n" for row in rows))
        self._unflushed += len(rows)
        if self._unflushed >= self.log_every:
            self.flush()
        if self._tb is not None:
            for row in rows:
                for term, value in zip(LOSS_TERMS, row[3:]):
                    self._tb.add_scalar(f"train_step/{term}", value, row[2])

    def epoch(self, epochs: list, step: int) -> None:
        """Rewrite metrics.csv from the history's epoch records; TensorBoard scalars of the last one at ``step``."""
        if not self.active:
            return
        write_csv(self.run_dir / "metrics.csv", [_epoch_row(rec) for rec in epochs])
        if self._tb is not None:
            for key, value in _epoch_row(epochs[-1]).items():
                if isinstance(value, (int, float)) and key != "epoch":
                    part, _, name = key.partition("_")
                    tag = f"{part}/{name}" if part in ("train", "val", "test") else f"epoch/{key}"
                    self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._batches is not None:
            with appending(self.run_dir / "batches.csv"):
                self._batches.flush()
            self._unflushed = 0
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for f in (self._log, self._batches, self._tb):
                if f is not None:
                    try:
                        f.close()
                    except OSError:          # a full disk: the error that matters was raised before
                        pass
            self._log = self._batches = self._tb = None

    def close_after(self, exc_type, exc, tb) -> None:
        """``close`` as an exit callback: after an error the logs are closed quietly (a full disk would otherwise
        replace the first, informative error with a second one about a log file)."""
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(OSError):
                self.close()
