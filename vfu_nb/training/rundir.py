"""The run directory of a training run: :class:`RunDir`, the one reader and writer of every file in it.

    <run_dir>/config.json          settings + the ``resolved`` values: per device, and the data tree's digest
                                   (rewritten at every start)
             history.json          per-step losses and per-epoch metrics (every epoch end)
             metrics.json          best val epoch and its val/test metrics (end of run)
             metrics.csv           one row per epoch: train losses, val/test metrics, lr, timings
             batches.csv           one row per step: the loss terms (appended, flushed every log_every steps)
             train.log             what was printed, plus the setup of every start (device, precision, data)
             tensorboard/          optional TensorBoard events
             checkpoints/last.pt   latest state (epoch end, or every checkpoint_every steps)
             checkpoints/best.pt   state at the best val epoch
             train.lock            held (filelock) by the process that writes the run

:meth:`RunDir.check_claim` refuses a folder that holds a run unless ``resume`` is set, and a resume whose
settings differ (:func:`vfu_nb.training.config.config_differences`; a ``data_root`` reached by another path
counts as unchanged when it holds the same tree, :func:`vfu_nb.data.identity.same_tree`); :class:`RunLock`
keeps a second process out.
:class:`RunLog` writes the logs (``train.log``, ``batches.csv``, ``metrics.csv``, TensorBoard).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Mapping, Optional

import filelock
import torch

from vfu_nb.conventions import LOSS_TERMS
from vfu_nb.data.identity import same_tree, tree_digest
from vfu_nb.diskspace import appending, atomic_save, atomic_write
from vfu_nb.metrics import jsonable
from vfu_nb.training.config import TrainConfig, config_differences

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
# File formats: strict JSON, CSV, checkpoints (atomic writes)


def write_json(path, obj, indent: Optional[int] = 1) -> None:
    """Strict JSON (nan/inf -> null), written atomically (temp file + os.replace)."""
    text = json.dumps(jsonable(obj), indent=indent, separators=None if indent else (",", ":"))
    atomic_write(Path(path), (text + "\n").encode())


def write_csv(path, rows: list, columns: Optional[list] = None) -> None:
    """Rows (dicts) as CSV, written atomically; columns default to the keys in order of first appearance."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), buf.getvalue().encode())


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


# ----------------------------------------------------------------------------------------------------------
# The run directory


def precision(config: Mapping) -> dict:
    """``{"bf16": ..., "channels_last": ...}`` a run trained with, from its ``config.json`` mapping: its
    ``resolved`` block, fp32 without one."""
    resolved = config.get("resolved") or {}
    return {"bf16": bool(resolved.get("bf16", False)), "channels_last": bool(resolved.get("channels_last", False))}


def _inside(name: str) -> property:
    """A :class:`RunDir` property: the path of ``name`` in the run directory."""
    return property(lambda self: self.path / name, doc=f"``<run_dir>/{name}``")


class RunDir:
    """One run directory (see the module doc): the path of every file in it, reading and writing them, claiming it.

    ``RunDir(path)`` only names the folder; nothing is read or created until a method asks. ``os.fspath`` of a
    ``RunDir`` is its folder, so it goes wherever a path does.
    """

    def __init__(self, path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- paths
    config_file = _inside("config.json")
    history_file = _inside("history.json")
    metrics_file = _inside("metrics.json")
    metrics_csv = _inside("metrics.csv")
    batches_csv = _inside("batches.csv")
    log_file = _inside("train.log")
    tensorboard_dir = _inside("tensorboard")
    lock_file = _inside("train.lock")
    checkpoint_dir = _inside("checkpoints")

    def checkpoint(self, which: str = "last") -> Path:
        """``checkpoints/<which>.pt`` (``last`` or ``best``)."""
        return self.checkpoint_dir / f"{which}.pt"

    # --- reading
    def has_config(self) -> bool:
        return self.config_file.exists()

    def read_config(self) -> dict:
        """``config.json`` as stored: the settings and the ``resolved`` block."""
        return _read_json(self.config_file)

    def train_config(self) -> tuple:
        """``(TrainConfig, resolved)``: the run's settings, and the per-device values the trainer picked for them
        (``bf16``, ``channels_last``, ``deterministic``, ``num_workers``, ``sync_every``, ``heatmap_sigma``,
        ``eval_batch_size``, ...; ``{}`` when config.json has no ``resolved`` block)."""
        stored = self.read_config()
        return TrainConfig.from_dict(stored, source=str(self.config_file)), dict(stored.get("resolved") or {})

    def precision(self) -> dict:
        """:func:`precision` of the run's config.json."""
        return precision(self.read_config())

    def history(self) -> dict:
        return _read_json(self.history_file)

    def metrics(self) -> dict:
        """``metrics.json``: the best val epoch and its val and test metrics."""
        return _read_json(self.metrics_file)

    def is_finished(self, epochs: Optional[int] = None) -> bool:
        """True when the run has a metrics.json (and, if given, at least ``epochs`` epochs or an early stop)."""
        if not self.metrics_file.exists():
            return False
        if epochs is None:
            return True
        m = self.metrics()
        return bool(m.get("early_stopped")) or int(m.get("epochs_run") or 0) >= int(epochs)

    def model_checkpoint(self, which: str = "best") -> Path:
        """The checkpoint that holds the ``which`` model (``best`` falls back to ``last`` for a run without
        ``best.pt``); FileNotFoundError naming the run when there is none."""
        if not self.has_config():
            raise FileNotFoundError(f"{self.path}: no config.json (not a training run directory)")
        path = self.checkpoint(which)
        if which == "best" and not path.exists():
            path = self.checkpoint("last")
        if not path.exists():
            raise FileNotFoundError(f"{self.path}: no checkpoints/{which}.pt" + (" or last.pt" if which == "best"
                                                                                  else ""))
        return path

    def resume_advice(self) -> str:
        """What to do after a run stopped on a full disk: its last good checkpoint (and epoch) and ``--resume``."""
        last = self.checkpoint("last")
        if not last.exists():
            return "nothing was saved yet: free space, then start the run again"
        position = checkpoint_position(last)
        if position is None:
            where = f"{last} (unreadable)"
        else:
            epoch, steps = position
            where = f"{last} (epoch {epoch}" + (f" and {steps} steps of epoch {epoch + 1}" if steps else "") + ")"
        return f"the last good checkpoint is {where}; free space, then continue with --resume (the same --run-dir)"

    # --- writing (the trainer's rank 0)
    def write_config(self, config: TrainConfig, resolved: dict) -> None:
        resolved = {**resolved, "data_digest": tree_digest(config.data_root) if config.data_root else None}
        write_json(self.config_file, {**config.to_dict(), "resolved": resolved})

    def write_history(self, history: dict) -> None:
        write_json(self.history_file, history, indent=None)  # compact: per-batch lists

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_file, metrics)

    def save_checkpoint(self, payload: dict, which: str = "last") -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.checkpoint(which), payload)

    # --- claiming
    def lock(self) -> "RunLock":
        """The lock that one writing process holds (``with run_dir.lock(): ...``)."""
        return RunLock(self.path)

    def held_by(self) -> Optional[str]:
        """Who writes the run now ("pid N on HOST since ..."), or None when no live process does."""
        return RunLock.held_by(self.path)

    def existing_files(self) -> list:
        """The files that make the folder hold a run: ``config.json`` and checkpoints."""
        found = [self.config_file] if self.has_config() else []
        return found + sorted(self.checkpoint_dir.glob("*.pt"))

    def check_resume(self, config: TrainConfig, ignore=()) -> None:
        """Raise :class:`RunMismatchError` when the stored settings differ from ``config``.

        The one rule for continuing a run (the trainer, :func:`vfu_nb.training.runs.ensure_run` and the study):
        every setting but :data:`vfu_nb.training.config.RESUME_SAFE_FIELDS` (and ``ignore``) must be unchanged;
        a ``data_root`` that moved counts as unchanged when it holds the same tree
        (:func:`vfu_nb.data.identity.same_tree`).
        """
        if not self.has_config():
            return
        stored = self.read_config()
        moved = ("data_root",) if same_tree(stored, config.data_root) else ()
        diffs = config_differences(stored, config, (*ignore, *moved))
        if diffs:
            raise RunMismatchError(f"{self.path} holds a run with other settings ({'; '.join(diffs)}); resume it "
                                   f"with its own settings, or start a new run with a new --run-dir")

    def check_claim(self, config: TrainConfig) -> None:
        """Refuse to overwrite a run: without ``resume`` an existing run is an error; with it, changed settings
        are."""
        found = self.existing_files()
        if found and not config.resume:
            names = ", ".join(str(p.relative_to(self.path)) for p in found)
            raise RunExistsError(f"{self.path} already holds a run ({names}); continue it with --resume, or start "
                                 f"a new run with a new --run-dir")
        if found:
            self.check_resume(config)


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------------------------
# Locks: one writing process


class HolderLock:
    """An exclusive lock (:class:`filelock.FileLock`, ``flock`` underneath) on the file ``path`` while this
    process holds it; the file records the holder ("pid N on HOST since TIME") for the message of a refused
    second process (:meth:`refused`).

    The kernel drops the lock when its process dies, so the lock file of a killed holder is taken over (and its
    record rewritten). Acquiring never waits; the file is removed when the lock is released. The lock lasts as
    long as this object: hold it in a ``with`` block or keep a reference (filelock releases it when the object
    is garbage-collected).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = filelock.FileLock(self.path, timeout=0, on_acquired=_record_holder)

    def refused(self, holder: str) -> Exception:
        """The error raised when another live process (``holder``) holds the lock."""
        return RuntimeError(f"{self.path} is held by another process ({holder})")

    def acquire(self) -> "HolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise self.refused(_holder(self.path)) from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self.path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> "HolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _record_holder(fd: int) -> None:
    """filelock's ``on_acquired``: write who holds the lock into the lock file."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[:200].strip() or "unknown process"
    except OSError:
        return "unknown process"


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
        path = Path(run_dir) / "train.lock"
        if not path.exists():                 # no lock file: nobody trains it
            return None
        probe = filelock.FileLock(path, timeout=0)
        try:
            probe.acquire()
        except filelock.Timeout:
            return _holder(path)
        except OSError:
            return None
        probe.release()
        return None


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
        self.run_dir, self.active, self.show, self.log_every = RunDir(run_dir), active, show, log_every
        self._log = self._batches = self._tb = None
        self._unflushed = 0
        if not active:
            return
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir.log_file, "a", buffering=1)
        steps = (history or {}).get("batches") or {}
        rows = [{c: steps[c][i] for c in BATCH_COLUMNS} for i in range(len(steps.get("step", [])))]
        write_csv(self.run_dir.batches_csv, rows, list(BATCH_COLUMNS))
        self._batches = open(self.run_dir.batches_csv, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir.tensorboard_dir), purge_step=step + 1 if step else None)

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
        with appending(self.run_dir.log_file):
            self._log.write("".join(f"{stamp} {part}\n" for part in line.splitlines()))

    def batches(self, rows: list) -> None:
        """Rows ``(epoch, batch, step, category, attribute, landmark, total)`` of finished steps."""
        if not self.active:
            return
        with appending(self.run_dir.batches_csv):
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
        write_csv(self.run_dir.metrics_csv, [_epoch_row(rec) for rec in epochs])
        if self._tb is not None:
            for key, value in _epoch_row(epochs[-1]).items():
                if isinstance(value, (int, float)) and key != "epoch":
                    part, _, name = key.partition("_")
                    tag = f"{part}/{name}" if part in ("train", "val", "test") else f"epoch/{key}"
                    self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._batches is not None:
            with appending(self.run_dir.batches_csv):
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
