"""How a study trains its runs on this machine, and how a finished run becomes its export in ``results/``.

* :func:`train_pending` trains every pending run (:func:`vfu_nb.study.plan.pending`), ``jobs`` at a time, each in
  a thread; the queue is rebuilt whenever a run finishes, so a model's seed runs start as soon as its tuning is
  complete. This is the ``local`` executor (:mod:`vfu_nb.study.executors`); the Slurm jobs
  (:mod:`vfu_nb.study.slurm`) call the same :func:`train_and_export` (with an export lock, and a locked run an
  error) and, on the other ranks of a multi-GPU job, :func:`_train`.
* :func:`_train` trains (or resumes) one run in ``<runs>/<key>/``: in this process, or with ``jobs > 1`` in a
  child process (``study train-one``) that dies with the study (:mod:`vfu_nb.lifeline`). Its data tree is made
  first when missing (:func:`ensure_data`).
* :func:`export_run` copies a finished run's small files into ``results/runs/<key>/``: ``config.json``,
  ``metrics.json``, a compacted ``history.json`` and ``predictions.npz`` (per test image: rank of the true
  category, attribute logits, where attention and saliency fall) for the image-level statistics. ``metrics.json``
  is written last: it marks the export complete, and a run whose export exists is never trained again. A run whose
  loss diverged is exported as a failure (:func:`export_failure`) and not retried.
* :func:`import_reused` copies finished runs of the plan's ``reuse`` folders whose key and settings match;
  :func:`reexport` writes a run's export again from its run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vfu_nb.metrics import jsonable
from vfu_nb.training.rundir import RunDir, RunLockedError
from vfu_nb.study import store
from vfu_nb.study.plan import (REPO, Plan, RunSpec, choose_settings, config_differences, exported, pending,
                               portable_config, tuning_lrs)
from vfu_nb.study.store import write_atomic, write_npz
from vfu_nb.threads import shared_cpu_env


def _train(plan: Plan, spec: RunSpec, subprocess_: bool) -> None:
    """Train (or resume) one run: in this process, or in a child process when several run at once. Its data tree
    is made first if missing (so a tree is made when its first run starts)."""
    ensure_data(plan, [spec.data])
    run_dir = plan.run_dir(spec.key)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**spec.config, "run_dir": str(run_dir), "resume": True, "progress": False}
    if not subprocess_:
        from vfu_nb.training.loop import train

        train(config)
        return
    request = run_dir / "request.json"
    write_atomic(request, json.dumps(config, indent=1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    shared_cpu_env(env)
    with open(run_dir / "stdout.log", "a") as log:      # the trainer dies with this process (vfu_nb.lifeline)
        start = log.tell()                              # earlier attempts' lines stay above this attempt's
        code = subprocess.call(store.trainer_command(request), stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=REPO)
    if code != 0:        # one line: the trainer's last error line and its log; RunLockedError for a locked run
        raise store.trainer_error(spec.key, code, run_dir / "stdout.log", start)


_DATA_LOCK = threading.Lock()


def ensure_data(plan: Plan, tags: Sequence[str]) -> None:
    """Generate the synthetic trees ``tags`` (the generator returns at once when a tree is up to date); one
    generation at a time, so that two runs on a new tree wait for the same one."""
    from vfu_nb.data.synthetic import driver as synthetic

    with _DATA_LOCK:
        for tag in tags:
            d = dict(plan.data[tag])
            root = plan.data_root(tag)
            if d.pop("synthetic", True):
                d.pop("root")
                synthetic.generate(root, **d)


def _diverged(error: Exception) -> bool:
    """True when the run stopped on a non-finite loss: in this process, or in its child (this attempt's log lines
    name the exception; :func:`vfu_nb.study.store.trainer_error`)."""
    from vfu_nb.training.loop import NonFiniteLossError

    return isinstance(error, NonFiniteLossError) or getattr(error, "diverged", False)


def train_and_export(plan: Plan, spec: RunSpec, subprocess_: bool, log=print, export_lock=None,
                     skip_locked: bool = True) -> None:
    """Train (or resume) one run and export it; a diverged run is exported as a failure, not retried.

    A run another live process trains is skipped (logged), or with ``skip_locked=False`` raises
    :class:`RunLockedError`. ``export_lock``: a context manager held while exporting (a Slurm job's: the runs of a
    data tree share ``results/labels/<tag>.npz``)."""
    t0 = time.time()
    export_lock = export_lock or contextlib.nullcontext()
    log(f"[study] start {spec.key}")
    try:
        _train(plan, spec, subprocess_)
    except RunLockedError as locked:               # another live process trains it: the others first, then wait
        if not skip_locked:
            raise
        log(f"[study] skip  {spec.key}: {locked}")
        return
    except Exception as error:                     # a diverged run is a result (recorded); anything else is not
        if not _diverged(error):
            raise
        with export_lock:
            export_failure(plan, spec, f"diverged: {error}")
        log(f"[study] FAILED {spec.key}: the loss diverged (recorded, not retried)")
        return
    with export_lock:
        export_run(plan, spec)
    log(f"[study] done  {spec.key} ({(time.time() - t0) / 60:.1f} min)")


def train_pending(plan: Plan, jobs: int = 1, log=print, keep_going: bool = False) -> None:
    """Train every pending run, ``jobs`` at a time. The queue is rebuilt whenever a run finishes, so a model's
    seed runs start as soon as its tuning is complete. An error stops the study once the runs in progress end;
    with ``keep_going`` (``--keep-going``) the failed run is left out and the others go on (but a full disk stops
    them all), and at the end one error lists every failed run."""
    running, errors, failed, cond = set(), [], {}, threading.Condition()
    fatal = []                # errors that stop every worker even with keep_going: interrupts, an unreadable plan
    todo = pending(plan)
    log(f"[study] {len(todo)} runs to train (first: {todo[0].key if todo else '-'})")
    busy = store.BusyRuns(plan.runs_dir, log)    # runs another live process trains: skipped, then waited for

    def next_run() -> Optional[RunSpec]:
        """The next run to train (waiting while only locked or locking runs are left); None: nothing more."""
        while True:
            stop = fatal or (errors and not keep_going)
            if not stop:
                import_reused(plan, log)
            todo = [] if stop else [s for s in pending(plan) if s.key not in running and s.key not in failed]
            queue = busy.free(todo)
            if queue or stop or not (todo or running):
                return queue[0] if queue else None
            if not running:
                busy.waiting()
            cond.wait(busy.poll_s if todo else None)   # finished runs may unlock more; locks are polled

    def worker():
        while True:
            with cond:
                try:
                    spec = next_run()
                except BaseException as error:
                    errors.append(error)
                    fatal.append(error)
                    cond.notify_all()
                    return
                if spec is None:
                    return
                running.add(spec.key)
            try:
                train_and_export(plan, spec, jobs > 1, log)
            except BaseException as error:
                errors.append(error)
                failed[spec.key] = error
                if keep_going and isinstance(error, Exception) and not store.disk_full(error):
                    log(f"[study] ERROR {spec.key}: {error} (going on with the other runs)")
                else:                  # a full disk fails every run after it too: stop
                    fatal.append(error)
            finally:
                with cond:
                    running.discard(spec.key)
                    cond.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if fatal or len(errors) == 1:
        raise (fatal or errors)[0]
    if errors:
        raise store.TrainingFailed(f"{len(failed)} runs failed (the others were trained): "
                                   + "; ".join(f"{key}: {error}" for key, error in failed.items()))


def import_reused(plan: Plan, log=print) -> list[str]:
    """Copy into the plan's results every finished run of the ``reuse`` folders whose key matches a planned run
    and whose config.json records exactly its settings (so the same seed rule and setting); ``origin.json`` in
    the copy names its source. Repeats while imports settle more choices. Returns the keys imported."""
    imported = []
    while plan.reuse:
        chosen, _ = choose_settings(plan, partial=True)
        new = []
        for spec in plan.all_specs(chosen, tuning_lrs(plan)):
            if exported(plan, spec.key) is not None:
                continue
            for folder in plan.reuse:
                source = plan.resolve(folder)
                if (store.export_dir(source, spec.key) / "metrics.json").exists() and not config_differences(
                        store.read_run_json(source, spec.key, "config.json"), spec):
                    _copy_export(plan, source, spec)
                    new.append(spec.key)
                    break
        if not new:
            break
        imported += new
        log(f"[study] reused {len(new)} finished runs of {', '.join(plan.reuse)} (same key and settings)")
    return imported


def _copy_export(plan: Plan, source: Path, spec: RunSpec) -> None:
    """Copy one exported run (metrics.json last: it marks the export complete) and its tree's labels."""
    import shutil

    src, dest = store.export_dir(source, spec.key), plan.export_dir(spec.key)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir(), key=lambda f: f.name == "metrics.json"):
        shutil.copyfile(f, dest / f.name)
    write_atomic(dest / "origin.json", json.dumps({"reused_from": portable_config(
        {"run_dir": str(src)})["run_dir"]}, indent=1) + "\n")
    labels = plan.labels_path(spec.data)
    if not labels.exists() and store.labels_path(source, spec.data).exists():
        labels.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.labels_path(source, spec.data), labels)


def compact_history(history: dict, max_points: int = 200, digits: int = 6) -> dict:
    """history.json made small for the repository: per-epoch records kept, per-batch losses averaged into at
    most ``max_points`` windows, floats rounded to ``digits`` significant digits."""
    def rnd(obj):
        if isinstance(obj, float):
            return obj if not math.isfinite(obj) else float(f"{obj:.{digits}g}")
        if isinstance(obj, dict):
            return {k: rnd(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [rnd(v) for v in obj]
        return obj

    batches = history.get("batches") or {}
    n = len(batches.get("step", []))
    window = max(1, math.ceil(n / max_points))
    compact = {}
    for k, values in batches.items():
        arr = np.asarray(values, dtype=float)
        if k in ("epoch", "batch", "step"):
            compact[k] = [int(v) for v in arr[window - 1::window]] if n else []
        else:
            compact[k] = [float(v) for v in (arr[:n - n % window].reshape(-1, window).mean(1) if n >= window else [])]
    return rnd({"batches": compact, "batch_window": window, "epochs": history.get("epochs", [])})


def export_run(plan: Plan, spec: RunSpec) -> Path:
    """Copy a finished run's small files into ``results/runs/<key>/`` and write its test predictions, with where
    each test image's attention and saliency fall (:mod:`vfu_nb.attention_mass`)."""
    from vfu_nb import attention_mass
    from vfu_nb.training import runs

    src, dest = plan.run_dir(spec.key), plan.export_dir(spec.key)
    dest.mkdir(parents=True, exist_ok=True)
    config = portable_config(RunDir(src).read_config())
    write_atomic(dest / "config.json", json.dumps(config, indent=1) + "\n")
    history = json.loads((src / "history.json").read_text())
    write_atomic(dest / "history.json", json.dumps(jsonable(compact_history(history)), separators=(",", ":")) + "\n")
    pred = runs.predict(src, "test")
    logits = pred.category_logits
    rank = (logits > logits[np.arange(len(logits)), pred.category][:, None]).sum(1)
    where = attention_mass.measure_run(src, "test")
    write_npz(dest / "predictions.npz", index=pred.index.astype(np.int32), category_rank=rank.astype(np.int16),
              attribute_logits=pred.attribute_scores.astype(np.float32), **where)
    _write_labels(plan, spec.data, src)
    write_atomic(dest / "metrics.json", (src / "metrics.json").read_text())   # last: marks the export complete
    return dest


def export_failure(plan: Plan, spec: RunSpec, reason: str) -> None:
    """Record a run that cannot finish (its loss diverged): metrics.json with ``failed`` and no test metrics."""
    dest = plan.export_dir(spec.key)
    dest.mkdir(parents=True, exist_ok=True)
    write_atomic(dest / "config.json", json.dumps(portable_config(spec.config), indent=1) + "\n")
    write_atomic(dest / "metrics.json", json.dumps({"model": spec.model, "seed": spec.seed, "failed": reason,
                                                   "val": {}, "test": {}}, indent=1) + "\n")


def _write_labels(plan: Plan, tag: str, run_dir: Path) -> None:
    """``results/labels/<tag>.npz``: test categories and attribute labels (1/-1/0) of a data tree, once."""
    path = plan.labels_path(tag)
    if path.exists():
        return
    from vfu_nb.training import runs

    ds = runs.dataset_for(run_dir, "test")
    ann = ds.annotations
    index = np.asarray(ds.rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, index=index.astype(np.int32), category=np.asarray(ann.category)[index].astype(np.int16),
              attributes=np.asarray(ann.attributes)[index].astype(np.int8),
              attribute_types=np.asarray(ann.attribute_types).astype(np.int8))


def reexport(plan: Plan, key: str, log=print) -> Path:
    """Export run ``key`` again from ``<plan.runs>/<key>`` (a damaged or edited export); returns its folder."""
    run_dir = plan.run_dir(key)
    if not RunDir(run_dir).is_finished() or not RunDir(run_dir).has_config():
        raise store.StudyInputError(
            f"{store.rel(run_dir)} holds no finished run to export {key} from; restore its files in results/runs/"
            f"{key} with `git checkout -- {store.rel(plan.results_dir / 'runs' / key)}`")
    config = RunDir(run_dir).read_config()
    dest = export_run(plan, RunSpec(key, "export", key.split("/")[0], config))
    log(f"[study] re-exported {key} to {store.rel(dest)}")
    return dest
