"""The study's result files and its trainers' errors, made safe at the edges (the other modules of
:mod:`vfu_nb.study` call these).

* **Result files** (``results/runs/<key>/{metrics,config,history}.json``, ``predictions.npz``,
  ``results/labels/<tag>.npz``, ``results/baselines/<tag>.json``, ``results/study.json``) are read through
  :func:`read_json` / :func:`read_npz`: a truncated, damaged or hand-edited file raises
  :class:`CorruptResultError`, one line naming the file and the way out (``git checkout`` it, or re-export the run
  with ``python -m vfu_nb.study export PLAN KEY``: :func:`vfu_nb.study.runner.reexport`). :func:`check_predictions`
  also holds a run's ``metrics.json`` to its ``predictions.npz`` (top-k accuracy and attribute mAP recomputed from
  the predictions agree exactly for every exported run), so an edited number does not pass silently.
* **Baselines stand alone** (:func:`tree_baselines`): the baselines of each data tree are committed with the study
  in ``results/baselines/<tag>.json``, written when the tree is present and read when it is absent, so every
  number of the report comes from ``results/``. A tree whose baselines are needed but neither stored nor on disk
  stops the report before it writes anything (it never writes a README that lost numbers).
* **Trainers**: :func:`trainer_command` starts ``study train-one`` so that it dies with the study
  (:mod:`vfu_nb.lifeline`); :func:`trainer_error` turns a failed trainer into one line (its last error line and
  the log), and a run locked by another live process into :class:`vfu_nb.training.rundir.RunLockedError`, which the
  study skips. :class:`BusyRuns` finds such runs before they are started: the study trains the others first, then
  waits for them, saying so in one line each.
* **Writes** (:func:`write_atomic`, :func:`write_npz`): readers see the old file or the whole new one, and a full
  disk is one line.
* :func:`one_line_errors`: the study's command line prints these errors as one line (exit 2; 75 for a run locked
  by another process) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from vfu_nb.diskspace import DiskFullError, atomic_write
from vfu_nb.paths import relative
from vfu_nb.training.rundir import RunDirError, RunLock, RunLockedError

#: Exit status of ``study train-one`` (and ``study run``) when a run is locked by another live process.
LOCKED_EXIT = 75
BASELINE_SPLIT = "test"


class CorruptResultError(ValueError):
    """A result file that cannot be read or does not hold what it should; the message names it and the way out."""


class StudyInputError(RuntimeError):
    """Something the report needs is missing (e.g. a data tree's baselines); the message says what to do."""


class TrainingFailed(RuntimeError):
    """A study trainer (``study train-one``) failed, or several runs did (``--keep-going``); the message has the
    last error line and the log. ``diverged``: the trainer stopped on a non-finite loss (anywhere in this
    attempt's lines, even when another line came last)."""

    def __init__(self, message: str, diverged: bool = False):
        super().__init__(message)
        self.diverged = diverged


def export_dir(results_dir, key: str) -> Path:
    """Where run ``key``'s export lives in a study's results: ``<results>/runs/<key>``."""
    return Path(results_dir) / "runs" / key


def labels_path(results_dir, tag: str) -> Path:
    """The test labels of data tree ``tag`` that its runs' exports share: ``<results>/labels/<tag>.npz``."""
    return Path(results_dir) / "labels" / f"{tag}.npz"


def rel(path) -> str:
    """``path`` relative to the repository root when inside it, symlinks followed (for messages and commands)."""
    return relative(path, follow_links=True)


# ----------------------------------------------------------------------------------------------------------
# Reading result files


def results_dir_of(run_path, key: str) -> Path:
    """``results/`` of an exported run's folder ``results/runs/<key>``."""
    return Path(run_path).parents[len(key.split("/"))]


def restore_hint(path) -> str:
    return f"restore the committed file with `git checkout -- {rel(path)}`"


def reexport_hint(results_dir, key: str) -> str:
    """The command that writes a run's export again from its run directory."""
    plan = Path(results_dir) / "plan.yaml"
    return f"`python -m vfu_nb.study export {rel(plan) if plan.exists() else 'PLAN'} {key}`"


def run_way_out(results_dir, key: str, path) -> str:
    return f"{restore_hint(path)}, or re-export the run from its run directory with {reexport_hint(results_dir, key)}"


def read_json(path, way_out: str, check: Optional[Callable[[object], Optional[str]]] = None):
    """The JSON content of ``path``; :class:`CorruptResultError` when it does not parse, or when ``check(content)``
    returns a reason."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResultError(f"{rel(path)} is damaged or truncated ({type(exc).__name__}: {exc}); "
                                 f"{way_out}") from None
    problem = check(content) if check else None
    if problem:
        raise CorruptResultError(f"{rel(path)} does not hold what it should ({problem}); {way_out}")
    return content


def read_npz(path, keys: Sequence[str], way_out: str) -> dict:
    """The arrays of ``path`` (at least ``keys``) as a dict; :class:`CorruptResultError` when it cannot be read."""
    path = Path(path)
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise CorruptResultError(f"{rel(path)} is missing; {way_out}") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CorruptResultError(f"{rel(path)} is damaged or truncated ({type(exc).__name__}: {exc}); "
                                 f"{way_out}") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise CorruptResultError(f"{rel(path)} does not hold what it should (no {', '.join(missing)}); {way_out}")
    return arrays


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def metrics_problem(m) -> Optional[str]:
    """Why a run's metrics.json content is malformed, or None."""
    if not isinstance(m, dict):
        return f"a {type(m).__name__}, not an object"
    if m.get("failed"):
        return None
    for part in ("val", "test"):
        values = m.get(part)
        if not isinstance(values, dict):
            return f"no '{part}' metrics"
        bad = next((k for k, v in values.items() if not _number_or_null(v)), None)
        if bad is not None:
            return f"{part}.{bad} is {values[bad]!r}, not a number"
    for key in ("best_epoch", "epochs_run"):
        if key in m and not (m[key] is None or isinstance(m[key], int) and not isinstance(m[key], bool)):
            return f"{key} is {m[key]!r}, not a whole number"
    return None


def read_metrics(results_dir, key: str) -> Optional[dict]:
    """An exported run's metrics.json, or None when the export has not finished (no metrics.json)."""
    path = export_dir(results_dir, key) / "metrics.json"
    if not path.exists():
        return None
    return read_json(path, run_way_out(results_dir, key, path), metrics_problem)


def read_run_json(results_dir, key: str, name: str) -> dict:
    """``config.json`` or ``history.json`` of an exported run (an object)."""
    path = export_dir(results_dir, key) / name
    if not path.exists():
        raise CorruptResultError(f"{rel(path)} is missing; {run_way_out(results_dir, key, path)}")
    return read_json(path, run_way_out(results_dir, key, path),
                     lambda c: None if isinstance(c, dict) else f"a {type(c).__name__}, not an object")


def epoch_seconds(history: dict) -> float:
    """Seconds a run spent training and evaluating, summed over the epochs of its ``history.json`` (so across
    resumes too; an epoch without a time counts as none)."""
    return float(sum(e.get("seconds") or 0.0 for e in history.get("epochs", [])))


def trained_seconds(results_dir, key: str) -> float:
    """:func:`epoch_seconds` of an exported run."""
    return epoch_seconds(read_run_json(results_dir, key, "history.json"))


PREDICTION_KEYS = ("category_rank", "attribute_logits")     # what the report uses (export also writes "index")


def read_predictions(run_path, key: str) -> dict:
    """A run's predictions.npz, checked for its arrays and their lengths."""
    run_path = Path(run_path)
    results_dir = results_dir_of(run_path, key)
    path = run_path / "predictions.npz"
    way_out = run_way_out(results_dir, key, path)
    p = read_npz(path, PREDICTION_KEYS, way_out)
    lengths = {k: len(p[k]) for k in (*PREDICTION_KEYS, "index") if k in p}
    if len(set(lengths.values())) != 1 or p["attribute_logits"].ndim != 2:
        raise CorruptResultError(f"{rel(path)} does not hold what it should (arrays of lengths {lengths}); {way_out}")
    return p


def check_predictions(run_path, key: str, metrics: dict, predictions: dict, labels: dict) -> None:
    """Hold a run's metrics.json to its predictions.npz: one row per test image of the tree's labels, and the
    test top-k category accuracies and attribute mAP that metrics.json gives recomputed from the predictions
    (they agree exactly for every exported run: both come from the same checkpoint)."""
    run_path = Path(run_path)
    results_dir = results_dir_of(run_path, key)
    n = len(labels["category"])
    if len(predictions["category_rank"]) != n:
        path = run_path / "predictions.npz"
        raise CorruptResultError(f"{rel(path)} has {len(predictions['category_rank'])} test images, the labels of "
                                 f"its tree {n}; {run_way_out(results_dir, key, path)}")
    from vfu_nb.metrics import average_precision

    test = metrics.get("test") or {}
    recomputed = {f"category_top{k}": float(np.mean(predictions["category_rank"] < k)) for k in (1, 3, 5)}
    if "attr_map_all" in test:
        attrs = labels["attributes"]
        ap = average_precision(predictions["attribute_logits"], attrs > 0, attrs != 0)
        recomputed["attr_map_all"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan
    for name, value in recomputed.items():
        given = test.get(name)
        if given is None or not math.isfinite(value):
            continue
        if abs(float(given) - value) > 1e-6:
            path = run_path / "metrics.json"
            raise CorruptResultError(
                f"{rel(path)} gives test {name} {float(given):.4f} but its predictions.npz gives {value:.4f} (an "
                f"edited file?); {restore_hint(run_path)}, or re-export the run from its run directory with "
                f"{reexport_hint(results_dir, key)}")


def read_labels(results_dir, tag: str) -> dict:
    path = labels_path(results_dir, tag)
    plan = Path(results_dir) / "plan.yaml"
    return read_npz(path, ("category", "attributes"),
                    f"{restore_hint(path)}, or delete it and re-export any run of tree {tag} with `python -m "
                    f"vfu_nb.study export {rel(plan) if plan.exists() else 'PLAN'} KEY` (it writes them again)")


def read_study(path) -> Optional[dict]:
    """``study.json``, or None when it has not been written yet."""
    path = Path(path)
    if not path.exists():
        return None
    plan = path.parent / "plan.yaml"
    return read_json(path, f"{restore_hint(path)}, or write it again with `python -m vfu_nb.study report "
                           f"{rel(plan) if plan.exists() else 'PLAN'}`",
                     lambda c: None if isinstance(c, dict) else f"a {type(c).__name__}, not an object")


# ----------------------------------------------------------------------------------------------------------
# Baselines committed with the results


def baselines_path(results_dir, tag: str) -> Path:
    return Path(results_dir) / "baselines" / f"{tag}.json"


def _generate_hint(settings: dict) -> str:
    root = settings.get("root", "?")
    if settings.get("synthetic", True) is False:
        return f"put the tree at {root}"
    options = "".join(f" --{k.replace('_', '-')} {v}" for k, v in settings.items()
                      if k not in ("root", "n", "seed", "synthetic"))
    return (f"generate the tree (`python -m vfu_nb.data.synthetic --out {root} --n {settings.get('n')} --seed "
            f"{settings.get('seed', 0)}{options}`)")


def tree_baselines(results_dir, tag: str, settings: dict, root: Path, required: bool, log=print) -> dict:
    """The test-split baselines of data tree ``tag`` (plan settings ``settings``, on disk at ``root``).

    Read from ``results/baselines/<tag>.json`` when it was computed for these settings and the tree is absent or
    unchanged (same annotation files); computed and written there when the tree is present and the file is
    missing or stale. Without either: ``{}``, or :class:`StudyInputError` when ``required`` (the report shows
    them).
    """
    path = baselines_path(results_dir, tag)
    way_out = (f"{restore_hint(path)}, or delete it and run the report again with the tree at "
               f"{settings.get('root')}")

    def check(content):
        if not isinstance(content, dict) or not isinstance(content.get("baselines"), dict):
            return "no 'baselines' object"
        for name, values in content["baselines"].items():
            if not isinstance(values, dict) or not all(_number_or_null(v) for v in values.values()):
                return f"baseline {name!r} is not an object of numbers"
        return None

    stored = read_json(path, way_out, check) if path.exists() else None
    from vfu_nb.data.identity import annotations_digest

    present = (root / "Anno").is_dir() or (root / "Anno_coarse").is_dir()
    if present:
        digest = annotations_digest(root)
        if stored is not None and stored.get("settings") == settings and stored.get("annotations_sha256") == digest:
            return stored["baselines"]
        from vfu_nb.baselines import compute_baselines
        from vfu_nb.metrics import jsonable

        if stored is not None:
            log(f"[study] {rel(path)} was computed for another tree than {settings.get('root')} now holds: "
                f"recomputed")
        content = {"data": tag, "settings": settings, "split": BASELINE_SPLIT, "annotations_sha256": digest,
                   "baselines": compute_baselines(root, BASELINE_SPLIT)}
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(jsonable(content), indent=1, allow_nan=False) + "\n"
        write_atomic(path, text)
        return json.loads(text)["baselines"]
    if stored is not None and stored.get("settings") == settings:
        return stored["baselines"]
    if not required:
        return {}
    if stored is not None:
        raise StudyInputError(
            f"{rel(path)} holds the baselines of tree {tag} with settings {stored.get('settings')}, but the plan "
            f"now gives {settings}, and the tree is not at {root} to compute them again; {_generate_hint(settings)} "
            f"and run the report again (nothing was written)")
    raise StudyInputError(
        f"the baselines of data tree {tag} are neither in {rel(path)} nor computable (no tree at {root}); "
        f"{restore_hint(path)}, or {_generate_hint(settings)}, and run the report again (nothing was written)")


def shown_trees(study: dict) -> set:
    """The data tags whose baselines the report shows (the seeds' tree, the learning curve's, the dial's)."""
    tags = set()
    if "seeds" in study:
        tags.add(study["seeds"]["data"])
    if "learning_curve" in study:
        tags.add(study["learning_curve"]["data"])
    tags.update(row["data"] for row in study.get("dial", []))
    return tags


# ----------------------------------------------------------------------------------------------------------
# Trainers and runs locked by other processes


def trainer_command(request) -> list:
    """``study train-one REQUEST`` as a child that dies with this process (:func:`vfu_nb.lifeline.command`)."""
    from vfu_nb.lifeline import command

    return command("vfu_nb.study", "train-one", str(request))


def last_error_line(log_path, start: int = 0) -> str:
    """The last line of a trainer log that says what went wrong (its one-line error, or a traceback's last
    line), looking only after byte ``start`` (where this attempt began: the log is appended to)."""
    text = _attempt_text(log_path, start, limit=20000)
    if text is None:
        return "(no log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        m = re.match(r"^python -m vfu_nb\.\w+(?: [\w-]+)?: (?:error: )?(.*)$", line)
        if m:
            return m.group(1)
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line):
            return line
    return lines[-1] if lines else "(empty log)"


def trainer_error(key: str, code: int, log_path, start: int = 0) -> Exception:
    """The exception for a trainer that exited with ``code``: RunLockedError for a run another process holds,
    else :class:`TrainingFailed` with the trainer's last error line (after byte ``start`` of its log) and its
    log."""
    line = last_error_line(log_path, start)
    diverged = "NonFiniteLossError" in (_attempt_text(log_path, start) or "")
    if code == LOCKED_EXIT:
        return RunLockedError(line)
    if code < 0:
        import signal

        with contextlib.suppress(ValueError):
            line = f"killed by {signal.Signals(-code).name}"
    return TrainingFailed(f"training {key} failed (exit {code}): {line}; the whole log: {rel(log_path)}",
                          diverged=diverged)


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a full disk: :class:`DiskFullError` here, or a trainer that failed on one."""
    return isinstance(error, DiskFullError) or (isinstance(error, TrainingFailed)
                                                and "no space left on the device" in str(error))


def _attempt_text(log_path, start: int, limit: int = 1 << 20) -> Optional[str]:
    """The log's text after byte ``start`` (this attempt's; at most the last ``limit`` bytes), None without a
    log: the one reader of a trainer's appended log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(start, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return None


class BusyRuns:
    """Runs of a study that another live process is training (its ``train.lock`` is held).

    :meth:`free` leaves them out of the queue, so the study trains the others first, and says so once per run;
    :meth:`waiting` says, once, that only such runs are left and the study waits for them (it polls every
    ``poll_s`` seconds; a released run is then trained, i.e. resumed or merely exported).
    """

    poll_s = 10.0

    def __init__(self, runs_dir, log=print):
        self.runs_dir, self.log = Path(runs_dir), log
        self.held: dict = {}
        self.announced_wait: set = set()

    def free(self, specs: Sequence) -> list:
        out = []
        for spec in specs:
            holder = RunLock.held_by(self.runs_dir / spec.key)
            if holder is None:
                if self.held.pop(spec.key, None) is not None:
                    self.log(f"[study] {spec.key}: the other process let it go; training it here")
                out.append(spec)
            elif spec.key not in self.held:
                self.held[spec.key] = holder
                self.log(f"[study] {spec.key} is being trained by another process ({holder}): skipped for now, "
                         f"the other runs first")
        return out

    def waiting(self) -> None:
        new = [k for k in self.held if k not in self.announced_wait]
        if new:
            self.announced_wait.update(new)
            self.log(f"[study] waiting for {len(self.held)} run(s) that another process is training "
                     f"({'; '.join(f'{k}: {h}' for k, h in self.held.items())}); stop that process to train them "
                     f"here")


# ----------------------------------------------------------------------------------------------------------
# Writing result files, command line


def write_atomic(path: Path, text) -> None:
    """Write ``text`` (str or bytes) so that readers see the old file or the whole new one (metrics.json marks a finished run);
    no ``.tmp`` is left after a failure, and a full disk is one line (:class:`vfu_nb.diskspace.DiskFullError`)."""
    atomic_write(path, text, "free space, then run the same command again (finished runs are only exported again)")


def write_npz(path: Path, **arrays) -> None:
    """``np.savez_compressed`` written as :func:`write_atomic` writes."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())


ONE_LINE = (RunDirError, DiskFullError, CorruptResultError, StudyInputError, TrainingFailed)


@contextlib.contextmanager
def one_line_errors(prog: str = "python -m vfu_nb.study"):
    """Print the study's expected failures as one line on stderr and exit (75 for a run locked by another process,
    2 otherwise); anything else keeps its traceback."""
    from vfu_nb.training.config import ConfigError
    from vfu_nb.weights import WeightsUnavailableError

    try:
        yield
    except RunLockedError as exc:
        print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        sys.exit(LOCKED_EXIT)
    except (*ONE_LINE, ConfigError, WeightsUnavailableError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
