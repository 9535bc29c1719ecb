"""How the study trains its runs, and where each run stands.

    python -m vfu_nb.study run PLAN [--executor local]          # threads on this machine (--jobs N): the default
    python -m vfu_nb.study run PLAN --executor slurm [--time 4:00:00 --gpus 1 ...]   # job arrays through submitit
    python -m vfu_nb.study status PLAN                          # every run: pending/queued/running/done/failed

* ``local`` is :func:`vfu_nb.study.runner.train_pending`: ``--jobs`` threads, each training one run at a time.
* ``slurm`` (:class:`SlurmDriver`) submits the pending runs as a Slurm job array, one run per element
  (:class:`vfu_nb.study.slurm.RunJob`), and waits: whenever runs finish it submits what they unlock, so the tuning goes
  first and each model's seed, learning-curve and dial runs follow once its tuning has chosen (their settings,
  hence their keys, are not known before). The driver is the dependency: Slurm dependencies cannot express
  "whichever setting wins". With ``wait=False`` (``--no-wait``) it submits what is pending now and returns; run it
  again later to submit the next wave. One driver per plan at a time (a lock in ``<runs>/_slurm/``).
* Nothing is submitted twice: a run whose job is waiting or running (``squeue``) is left alone, a finished run is
  never retrained (its export exists), and a run whose job failed is resubmitted only by a later ``study run``
  (it resumes from its last checkpoint). The trainer's run-directory lock keeps a second writer out anyway.
* Per run directory: ``slurm.json`` (the job id, submission time, log paths, earlier jobs), ``slurm.out`` and
  ``slurm.err`` (links to the job's Slurm log, in ``<runs>/_slurm/<job id>/``) and ``slurm_starts.jsonl`` (one
  line per start inside a job: job id, ``SLURM_RESTART_COUNT``, host, time).

:func:`status` reads the run directories and exports first and ``squeue`` second, so it works while jobs wait,
after the driver has exited, and without Slurm accounting (docs/study.md, "On a Slurm cluster").
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vfu_nb.paths import relative
from vfu_nb.training.rundir import HolderLock
from vfu_nb.training.runs import selection_note
from vfu_nb.study import runner
from vfu_nb.study import slurm as sl
from vfu_nb.study import store
from vfu_nb.study.plan import (REPO, Plan, RunSpec, choose_settings, exported, pending, planned_runs,
                               tuning_lrs)

EXECUTORS = ("local", "slurm")
STATES = ("pending", "queued", "running", "done", "failed")


def train(plan, executor: str = "local", jobs: int = 1, slurm: Optional[dict] = None, wait: bool = True,
          log=print, keep_going: bool = False) -> bool:
    """Train the plan's pending runs with ``executor`` (``local`` or ``slurm``); True when every run of the plan
    has been exported, False when runs are still queued or running (``slurm`` with ``wait=False``).

    ``slurm``: settings over the plan's ``slurm:`` block (:class:`vfu_nb.study.slurm.SlurmSettings` fields).
    ``keep_going``: the local executor goes on past a failed run (Slurm's jobs always do).
    """
    plan = Plan.load(plan)
    if executor == "local":
        if slurm:
            raise ValueError(f"Slurm settings {sorted(slurm)} need the slurm executor (--executor slurm)")
        runner.train_pending(plan, jobs, log, keep_going=keep_going)
        return True
    if executor == "slurm":
        return SlurmDriver(plan, sl.SlurmSettings.from_dict(plan.slurm, slurm)).run(wait=wait, log=log)
    raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


# ----------------------------------------------------------------------------------------------------------
# Where a run stands


@dataclass
class RunStatus:
    """One row of ``study status``: the run, its state, its Slurm job and log (if any) and a short detail."""

    key: str
    part: str
    state: str                    # pending | queued | running | done | failed | unknown (Slurm unreachable)
    job_id: Optional[str] = None
    log: Optional[str] = None
    detail: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_record(plan: Plan, key: str) -> dict:
    """The run's ``slurm.json`` (its current job and the earlier ones), or {} when it was never submitted."""
    path = plan.run_dir(key) / sl.RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def job_result(record: dict) -> Optional[tuple]:
    """How the job of ``record`` ended, from the result files submitit writes: ``("error", last line of the
    traceback)`` when a task failed, ``("success", None)`` when it returned, None without a result (still running,
    or killed before it could write one).

    Only result files written after the submission count: a cluster that was set up again numbers its jobs
    from 1, and an old result of the same id must not speak for the new job."""
    folder = Path(record.get("folder", ""))
    if not record.get("job_id") or not folder.is_dir():
        return None
    found = None
    for path in sorted(folder.glob(f"{record['job_id']}_*_result.pkl")):
        if path.stat().st_mtime < record.get("submitted_unix", 0) - 1:
            continue
        try:
            with open(path, "rb") as f:
                outcome, value = pickle.load(f)
        except Exception as exc:      # a result being written, or an unreadable one
            return "error", f"unreadable result {path.name} ({type(exc).__name__})"
        if outcome == "error":
            lines = [line for line in str(value).strip().splitlines() if line.strip()]
            return "error", lines[-1].strip() if lines else "error"
        found = ("success", None)
    return found


def job_error(record: dict) -> Optional[str]:
    """The error the job of ``record`` ended with (the last line of its traceback), or None."""
    result = job_result(record)
    return result[1] if result and result[0] == "error" else None


def _local_writer(plan: Plan, key: str) -> Optional[str]:
    """"pid N" when a live process on this host holds the run's train.lock (a local executor), else None.

    Read-only on purpose: the file names its holder, checked alive with signal 0. Probing the lock itself
    (:meth:`RunLock.held_by`) would take it for an instant, and a trainer starting in that instant would be refused;
    the price is that a lock file left by a killed process whose pid has been reused reads as running."""
    path = plan.run_dir(key) / "train.lock"
    try:
        holder = path.read_text().split()
    except OSError:
        return None
    if len(holder) >= 4 and holder[0] == "pid" and holder[2] == "on" and holder[3] == socket.gethostname():
        try:
            os.kill(int(holder[1]), 0)
            return f"pid {holder[1]}"
        except (OSError, ValueError):
            return None
    return None


def _progress(plan: Plan, key: str) -> str:
    """"epochs done: N" from the run's metrics.csv (cheap; checkpoints are not opened), or ""."""
    path = plan.run_dir(key) / "metrics.csv"
    if not path.exists():
        return ""
    rows = max(0, len(path.read_text().splitlines()) - 1)
    return f"{rows} epoch{'s' if rows != 1 else ''} done"


def run_status(plan: Plan, spec: RunSpec, queue: Optional[dict]) -> RunStatus:
    """Where run ``spec`` stands: its export first (done / failed by divergence), then its Slurm job in
    ``queue`` (:func:`vfu_nb.study.slurm.queue`; None when Slurm did not answer), then the job's result file, then a
    local writer. A job that ended with an error, or ended without a result (cancelled, killed, node failure,
    or no longer known to Slurm), is ``failed``; one that returned without an export is ``pending`` (trained
    again). A run that failed in a local ``study run`` is ``pending`` too: only divergences are recorded."""
    record = read_record(plan, spec.key)
    job_id, log = record.get("job_id"), record.get("stdout")
    row = RunStatus(spec.key, spec.part, "pending", job_id, log)
    metrics = exported(plan, spec.key)
    if metrics is not None:
        if metrics.get("failed"):
            row.state, row.detail = "failed", f"{metrics['failed']} (recorded; not retried)"
        else:
            row.state, row.detail = "done", selection_note(metrics)
        return row
    if job_id:
        job = queue.get(job_id) if queue is not None else None
        if job is not None and job.queued:
            row.state, row.detail = "queued", f"{job.state.lower()} ({job.reason})"
            return row
        if job is not None and job.running:
            row.state = "running"
            row.detail = ", ".join(filter(None, [f"{job.elapsed} on {job.nodes}", _progress(plan, spec.key)]))
            return row
        result = job_result(record)
        if result and result[0] == "error":
            row.state, row.detail = "failed", result[1]
            return row
        if result:                   # returned, yet no export (not visible yet, or deleted since): train it again
            row.detail = f"job {job_id} ended without an export of the run"
            return row
        if job is not None:          # ended, no error result: cancelled, timed out, killed, node failure ...
            row.state, row.detail = "failed", f"job {job.state.lower()} without finishing the run"
            return row
        if queue is None:
            row.state, row.detail = "unknown", "submitted; Slurm did not answer"
            return row
        row.state, row.detail = "failed", "job ended without finishing the run (cancelled or killed?)"
        return row
    writer = _local_writer(plan, spec.key)
    if writer:
        row.state, row.detail = "running", f"local, {writer}"
        return row
    row.detail = _progress(plan, spec.key)
    return row


def status(plan, queue: Optional[dict] = None, log=None) -> dict:
    """Every run of the plan that is known now (tuning, and the later runs of the models whose tuning has
    chosen) with its :class:`RunStatus`; also how many later runs still wait for tuning, and whether Slurm
    answered. ``queue`` defaults to :func:`vfu_nb.study.slurm.queue`, asked only when Slurm is installed and some
    run of the plan was submitted to it (a plan trained locally has nothing in the queue)."""
    plan = Plan.load(plan)
    chosen, _ = choose_settings(plan, partial=True)
    specs = plan.all_specs(chosen, tuning_lrs(plan))
    if queue is not None:
        slurm = "answered"
    elif not sl.available():
        slurm = "not installed"
    elif not any((plan.run_dir(s.key) / sl.RECORD).exists() for s in specs):
        slurm = "not asked: no run was submitted to it"
    else:
        try:
            queue, slurm = sl.queue(), "answered"
        except sl.SlurmError as exc:                 # one line: the command and the first line of its error
            slurm = "no answer: " + str(exc).splitlines()[0]
    rows = [run_status(plan, s, queue) for s in specs]
    waiting = max(0, planned_runs(plan) - len(specs))
    median = _median_run_seconds(plan, rows)
    return {"runs": rows, "waiting_for_tuning": waiting, "run_seconds": median,
            "runs_left": sum(r.state in LEFT for r in rows) + waiting,
            "seconds_done": _seconds_done(plan, rows, median),
            "tuning_unfinished": [m for m in plan.tuning["models"] if m not in chosen],
            "slurm": slurm}


def _median_run_seconds(plan: Plan, rows: list) -> Optional[float]:
    """The median training time of the finished runs (a damaged history leaves its run out); None before any."""
    seconds = []
    for r in rows:
        if r.state == "done":
            try:
                seconds.append(store.trained_seconds(plan.results_dir, r.key))
            except store.CorruptResultError:
                pass
    return statistics.median(seconds) if seconds else None


LEFT = ("pending", "queued", "running", "unknown")      # the states of runs still to train


def _seconds_done(plan: Plan, rows: list, median: Optional[float]) -> float:
    """Seconds the runs still to train have trained already (running or interrupted: their run directories'
    epochs), each counted at most at the median finished run; 0 before any run has finished."""
    if not median:
        return 0.0
    done = 0.0
    for r in rows:
        path = plan.run_dir(r.key) / "history.json"
        if r.state in LEFT and path.exists():
            try:
                done += min(store.epoch_seconds(json.loads(path.read_text())), median)
            except (OSError, ValueError, AttributeError, TypeError):   # being rewritten, or damaged: count none
                pass
    return done


def time_left(result: dict) -> Optional[str]:
    """How much training the runs still to do need: the median finished run per run left, less what the running
    and interrupted ones have trained; None when nothing is left or nothing has finished yet."""
    left, seconds = result.get("runs_left", 0), result.get("run_seconds")
    if not left or not seconds:
        return None
    hours = max(left * seconds - result.get("seconds_done", 0.0), 0.0) / 3600
    return (f"{left} runs to go: about {hours:.1f} hours of training at the median finished run "
            f"({seconds / 60:.0f} min; {hours / 2:.1f} h with two at a time, as `--jobs 2`)")


def format_status(result: dict, relative_to: Optional[Path] = None) -> str:
    """The table ``study status`` prints."""
    rows = result["runs"]
    counts = {s: sum(r.state == s for r in rows) for s in (*STATES, "unknown")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in STATES)
    lines = [f"{len(rows)} runs known: {head}" + (f"; {result['waiting_for_tuning']} more wait for the tuning of "
                                                 f"{', '.join(result['tuning_unfinished'])}"
                                                 if result["waiting_for_tuning"] else "")
             + f" (Slurm: {result['slurm']})"]
    estimate = time_left(result)
    if estimate:
        lines.append(estimate)

    def short(path):
        if not path:
            return "-"
        return relative(path, relative_to or Path.cwd())

    table = [("state", "job", "run", "log", "detail")]
    table += [(r.state, r.job_id or "-", r.key, short(r.log), r.detail) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(t[:4], widths)) + "  " + t[4] for t in table]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------------------
# The Slurm driver


class DriverLockedError(RuntimeError):
    """Another ``study run --executor slurm`` drives the same plan."""


class _DriverLock(HolderLock):
    """One driver per plan: the lock on ``<runs>/<submitit folder>/driver.lock``."""

    def refused(self, holder: str) -> Exception:
        return DriverLockedError(f"another study run drives {self.path.parent.parent} ({holder}); `python -m "
                                 f"vfu_nb.study status` shows its runs")


class SlurmDriver:
    """Submit a plan's pending runs to Slurm as job arrays and (optionally) wait for them; see the module doc."""

    def __init__(self, plan: Plan, settings: sl.SlurmSettings):
        self.plan = Plan.load(plan)
        self.settings = settings
        self.folder = self.plan.runs_dir / sl.SUBMITIT_DIR

    def overrides(self) -> dict:
        """Trainer settings the jobs add to every run (resume-safe ones only: they change no result)."""
        return {"checkpoint_every": int(self.settings.checkpoint_every)} if self.settings.checkpoint_every else {}

    def submit(self, specs: list, log=print) -> list:
        """Submit ``specs`` as one array; records each run's job in its run directory. Returns the job ids."""
        import submitit

        if not specs:
            return []
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm",
                                         slurm_max_num_timeout=int(self.settings.max_timeouts))
        executor.update_parameters(**self.settings.submitit_parameters(REPO))
        jobs = []
        try:
            with executor.batch():
                for spec in specs:
                    jobs.append(executor.submit(sl.RunJob(self.plan, spec, self.overrides())))
        except Exception as exc:     # sbatch refused (partition, account, limits ...): say so in one line
            raise sl.SlurmError(f"sbatch refused the array of {len(specs)} runs: "
                                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
        now = time.time()
        for spec, job in zip(specs, jobs):
            self._record(spec, job, now)
        first, last = jobs[0].job_id, jobs[-1].job_id
        what = (f"1 run as job {first}" if len(jobs) == 1 else
                f"{len(jobs)} runs as job array {first.split('_')[0]} ({first}..{last})")
        log(f"[study] slurm: submitted {what}; logs in {self.folder}")
        return [j.job_id for j in jobs]

    def _record(self, spec, job, now: float) -> None:
        from vfu_nb.training.rundir import write_json

        d = self.plan.run_dir(spec.key)
        d.mkdir(parents=True, exist_ok=True)
        old = read_record(self.plan, spec.key)
        earlier = old.get("earlier", []) + ([{k: old.get(k) for k in ("job_id", "submitted", "stdout", "stderr")}]
                                            if old.get("job_id") else [])
        write_json(d / sl.RECORD, {
            "job_id": job.job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "submitted_unix": now, "folder": str(job.paths.folder), "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr), "tasks": self.settings.tasks, "settings": self.settings.to_dict(),
            "earlier": earlier})
        for name, target in (("slurm.out", job.paths.stdout), ("slurm.err", job.paths.stderr)):
            link = d / name
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(target, d))

    def run(self, wait: bool = True, log=print) -> bool:
        """Submit what is pending (again whenever runs finish, with ``wait``); True once every run is exported.

        A run whose job fails is reported with its log and not resubmitted by this driver; when nothing is left
        waiting or running and runs have failed, :class:`RuntimeError` lists them."""
        s = self.settings
        with _DriverLock(self.folder / "driver.lock"):
            submitted_now: set = set()
            reported: set = set()
            live_before: set = set()
            log(f"[study] slurm executor: {s.tasks} task(s) per run, time limit {s.minutes} min"
                + (f", partition {s.partition}" if s.partition else "") + (f", {s.gpus} GPU(s) per node" if s.gpus
                                                                          else ""))
            silent = 0                   # consecutive times squeue did not answer (a busy controller)
            while True:
                runner.import_reused(self.plan, log)
                todo = pending(self.plan)
                if not todo:
                    log("[study] slurm: every run of the plan is exported")
                    return True
                try:
                    queue = sl.queue()
                    silent = 0
                except sl.SlurmError as exc:
                    silent += 1
                    if silent >= 10 or not wait:
                        raise
                    log(f"[study] slurm: {exc}; trying again in {s.poll_s:g} s")
                    time.sleep(float(s.poll_s))
                    continue
                rows = {spec.key: run_status(self.plan, spec, queue) for spec in todo}
                live = {k for k, r in rows.items() if r.state in ("queued", "running")}
                for key in sorted(live_before - live):
                    if exported(self.plan, key) is not None:
                        log(f"[study] done  {key}")
                failed = {k: r for k, r in rows.items() if r.state == "failed"}
                for key, r in failed.items():
                    if key in submitted_now and key not in reported:
                        log(f"[study] FAILED {key}: {r.detail}; log {r.log}")
                        reported.add(key)
                new = [spec for spec in todo if rows[spec.key].state == "pending"
                       or (rows[spec.key].state == "failed" and spec.key not in submitted_now)]
                self.submit(new, log)
                submitted_now.update(spec.key for spec in new)
                live_before = live | {spec.key for spec in new}
                if not wait:
                    if not new:
                        log(f"[study] slurm: nothing new to submit; {len(live)} run(s) queued or running")
                    return False
                if not live and not new:
                    if any(r.state == "done" for r in rows.values()):
                        continue         # exported between pending() and the look at its job: look again
                    stuck = [r for r in rows.values()]
                    raise RuntimeError(f"{len(stuck)} run(s) failed on Slurm; fix the cause and run the study again "
                                       f"(they resume): " + "; ".join(f"{r.key}: {r.detail} (log {r.log})"
                                                                     for r in stuck))
                time.sleep(float(s.poll_s))


# ----------------------------------------------------------------------------------------------------------
# Command line (the study's run options and its status subcommand)


def add_run_arguments(parser) -> None:
    """``--executor``, ``--no-wait`` and the Slurm settings of ``study run`` (each overrides the plan's block)."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: --jobs threads on this machine (default); slurm: job arrays through submitit")
    parser.add_argument("--no-wait", action="store_true",
                        help="slurm: submit what is pending now and return (run again for the next wave)")
    g = parser.add_argument_group("Slurm settings (override the plan's slurm: block)")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--gpus", type=int, help="GPUs per node")
    g.add_argument("--cpus", type=int, help="CPUs per task")
    g.add_argument("--mem-gb", type=float, help="memory per node (GB)")
    g.add_argument("--time", help="time limit per job: minutes or [D-]HH:MM:SS (requeued when reached)")
    g.add_argument("--nodes", type=int, help="nodes per run")
    g.add_argument("--tasks-per-node", type=int, help="processes per node and run (DDP when the run has >1)")
    g.add_argument("--constraint")
    g.add_argument("--exclude")
    g.add_argument("--array-parallelism", type=int, help="elements of one array running at once")
    g.add_argument("--max-timeouts", type=int, help="requeues after the time limit before a job fails")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints inside an epoch")
    g.add_argument("--poll", type=float, dest="poll_s", help="seconds between looks at the queue")
    g.add_argument("--setup", action="append", help="a shell line run before each job (repeatable)")
    g.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                   help="another sbatch option (repeatable), e.g. --sbatch hold=true")


def slurm_overrides(args) -> dict:
    """The Slurm settings given on the command line (unset ones left out)."""
    import yaml

    names = ("partition", "account", "qos", "gpus", "cpus", "mem_gb", "time", "nodes", "tasks_per_node",
             "constraint", "exclude", "array_parallelism", "max_timeouts", "checkpoint_every", "poll_s", "setup")
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "sbatch", None):
        pairs = {}
        for item in args.sbatch:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--sbatch {item!r}: expected KEY=VALUE")
            pairs[key] = yaml.safe_load(value)
        out["sbatch"] = pairs
    return out


def status_main(plan_path, as_json: bool = False) -> int:
    """``python -m vfu_nb.study status PLAN``: print every run's state; exit status 1 when a run failed."""
    result = status(plan_path)
    if as_json:
        print(json.dumps({**result, "runs": [r.to_dict() for r in result["runs"]]}, indent=1))
    else:
        print(format_status(result))
    sys.stdout.flush()
    return 1 if any(r.state == "failed" for r in result["runs"]) else 0
