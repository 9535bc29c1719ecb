"""Slurm for the study: settings, the queue as ``squeue`` shows it, torch.distributed from Slurm's variables,
and the job that trains one run (a ``submitit.helpers.Checkpointable``).

The driver that submits the runs and the ``status`` command live in :mod:`vfu_nb.study.executors`; this module holds
what the jobs themselves need, plus the settings both share. Reference: docs/study.md, "On a Slurm cluster".

* :class:`SlurmSettings`: the ``slurm:`` block of a plan (partition, gpus, cpus, mem_gb, time, account, qos, ...)
  with command-line overrides, turned into submitit parameters (:meth:`SlurmSettings.submitit_parameters`).
* :func:`queue`: the caller's jobs in ``squeue`` (array elements one per line), states included; Slurm without
  accounting forgets a job ``MinJobAge`` seconds after it ends, so callers read the run directory first.
* :func:`torch_env`: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT`` from ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_JOB_NODELIST`` ..., so a run
  with several tasks (one process each, on one or several nodes) trains with DistributedDataParallel.
* :class:`RunJob`: the callable each array element runs. It holds only the plan and the run's spec; every start
  (the first, a requeue after preemption or a time limit, a resubmission) returns at once when the run is
  exported and otherwise resumes it from its last checkpoint, so a requeued run ends with the metrics of an
  uninterrupted one. Its ``checkpoint`` (called by submitit on the ``USR2`` that Slurm sends before a time limit
  or a preemption) returns a fresh ``RunJob`` for the same run: submitit pickles it and requeues the job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import filelock
import submitit

from vfu_nb.study import runner
from vfu_nb.study.plan import exported

#: squeue's job states (squeue(1), "JOB STATE CODES"), grouped the way ``study status`` reports them.
QUEUED_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                           "SPECIAL_EXIT", "SUSPENDED", "STOPPED", "RESIZING"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})

#: Where the driver keeps submitit's files (job scripts, pickles, logs) inside the plan's ``runs`` folder.
SUBMITIT_DIR = "_slurm"
#: Per run directory: the driver's record of the run's job (id, log paths, earlier jobs) ...
RECORD = "slurm.json"
#: ... and one line per start of the run inside a job (job id, restart count, host, time), appended by the job.
STARTS = "slurm_starts.jsonl"


class SlurmError(RuntimeError):
    """Slurm cannot be reached or refuses a request; the message says which command and why."""


# ----------------------------------------------------------------------------------------------------------
# Settings


def parse_time(value) -> int:
    """A Slurm time limit in whole minutes: ``90``, ``"90"``, ``"MM:SS"``, ``"HH:MM:SS"``, ``"D-HH[:MM[:SS]]"``
    (sbatch(1) ``--time``); seconds round up."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"time limit {value!r}: must be positive")
        return int(-(-value // 1))
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"time limit {value!r}: expected minutes or [D-]HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:     # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = int(a), int(b or 0), int(c or 0)
    elif c is not None:      # HH:MM:SS
        h, mi, s = int(a), int(b), int(c)
    elif b is not None:      # MM:SS
        h, mi, s = 0, int(a), int(b)
    else:                    # MM
        h, mi, s = 0, int(a), 0
    minutes = int(days or 0) * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes <= 0:
        raise ValueError(f"time limit {value!r}: must be positive")
    return minutes


@dataclass
class SlurmSettings:
    """Where and how the runs of a study are submitted (the plan's ``slurm:`` block; options override it).

    Every element of an array gets the same resources: one run per element, ``nodes`` x ``tasks_per_node``
    processes per run (DistributedDataParallel when more than one; ``batch_size`` is per process).
    """

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    gpus: Optional[int] = None              # per node
    cpus: Optional[int] = None              # per task
    mem_gb: Optional[float] = None          # per node
    time: object = 60                       # per job: minutes or [D-]HH:MM:SS
    nodes: int = 1
    tasks_per_node: int = 1
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    comment: Optional[str] = None
    name: str = "vfu_nb"                    # job name
    array_parallelism: int = 256            # elements of one array running at once
    max_timeouts: int = 10                  # requeues after a time limit before the job fails (preemptions: no limit)
    signal_delay_s: int = 120               # USR2 this long before the time limit: checkpoint() and requeue
    checkpoint_every: Optional[int] = None  # steps; also save checkpoints inside epochs (lost work on a kill)
    setup: list = field(default_factory=list)   # shell lines before the job starts (module load ...)
    sbatch: dict = field(default_factory=dict)  # more sbatch options, {"flag": value}; True gives a bare --flag
    poll_s: float = 30.0                    # how often the waiting driver looks at the queue

    @classmethod
    def from_dict(cls, block: Optional[dict], overrides: Optional[dict] = None) -> "SlurmSettings":
        """Settings from a plan's ``slurm:`` block, then ``overrides`` (None values are ignored; ``sbatch`` and
        ``setup`` are merged). Unknown keys are refused with the list of known ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        merged: dict = {}
        for source, what in ((block or {}, "slurm block"), (overrides or {}, "Slurm option")):
            unknown = sorted(set(source) - set(names))
            if unknown:
                raise ValueError(f"{what}: unknown keys {unknown}; allowed: {names}")
            for k, v in source.items():
                if v is None:
                    continue
                if k == "sbatch":
                    merged[k] = {**merged.get(k, {}), **dict(v)}
                elif k == "setup":
                    merged[k] = [*merged.get(k, []), *([v] if isinstance(v, str) else list(v))]
                else:
                    merged[k] = v
        settings = cls(**merged)
        settings.check()
        return settings

    def check(self) -> None:
        self.minutes    # parses the time limit
        for name in ("nodes", "tasks_per_node", "array_parallelism"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"slurm {name} {getattr(self, name)!r}: must be at least 1")
        if int(self.max_timeouts) < 0:
            raise ValueError(f"slurm max_timeouts {self.max_timeouts!r}: must be 0 or more")
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 1:
            raise ValueError(f"slurm checkpoint_every {self.checkpoint_every!r}: must be at least 1 (steps)")

    @property
    def minutes(self) -> int:
        return parse_time(self.time)

    @property
    def tasks(self) -> int:
        """Processes per run."""
        return int(self.nodes) * int(self.tasks_per_node)

    def submitit_parameters(self, repo: Path) -> dict:
        """Keyword arguments of ``AutoExecutor.update_parameters`` (submitit 1.5).

        Always: ``--requeue`` (Slurm may put the job back after a preemption or ``scontrol requeue``); the job's
        Python finds this checkout first (``PYTHONPATH``); ``OMP_NUM_THREADS`` is the task's CPU count unless set.
        """
        params = {"name": self.name, "timeout_min": self.minutes, "nodes": int(self.nodes),
                  "tasks_per_node": int(self.tasks_per_node), "slurm_array_parallelism": int(self.array_parallelism),
                  "slurm_signal_delay_s": int(self.signal_delay_s),
                  "slurm_setup": [f"export PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}",
                                  "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}",
                                  *self.setup],
                  "slurm_additional_parameters": {"requeue": True, **self.sbatch}}
        optional = {"cpus_per_task": self.cpus, "gpus_per_node": self.gpus, "mem_gb": self.mem_gb,
                    "slurm_partition": self.partition, "slurm_account": self.account, "slurm_qos": self.qos,
                    "slurm_constraint": self.constraint, "slurm_exclude": self.exclude,
                    "slurm_comment": self.comment}
        params.update({k: v for k, v in optional.items() if v is not None})
        if self.tasks > 1:     # a task that fails ends the others (instead of leaving them in a collective)
            params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        return params

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# The queue


@dataclass(frozen=True)
class QueuedJob:
    """One line of ``squeue``: a job or an array element (``<array id>_<index>``)."""

    job_id: str
    state: str
    reason: str
    elapsed: str
    nodes: str

    @property
    def queued(self) -> bool:
        return self.state in QUEUED_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def ended(self) -> bool:
        return not (self.queued or self.running)


def available() -> bool:
    """Whether Slurm's client commands are installed (not whether a cluster answers)."""
    return all(shutil.which(c) for c in ("sbatch", "squeue", "scontrol"))


def _run(cmd: list, timeout: float = 60) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: this machine has no Slurm client (or PATH lacks it)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(cmd)} did not answer within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed (exit {out.returncode}): {out.stderr.strip()[:500]}")
    return out.stdout


def parse_squeue(text: str) -> dict:
    """``{job id: QueuedJob}`` from ``squeue -h -r -o '%i|%T|%r|%M|%N'`` output."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 5 or not parts[0]:
            continue
        jobs[parts[0]] = QueuedJob(parts[0], parts[1], parts[2], parts[3], parts[4])
    return jobs


def queue(user: Optional[str] = None) -> dict:
    """The user's jobs that Slurm still knows (waiting, running, and ended ones until ``MinJobAge``), one entry
    per array element: ``{job id: QueuedJob}``. Raises :class:`SlurmError` when Slurm does not answer."""
    import getpass

    user = user or getpass.getuser()
    return parse_squeue(_run(["squeue", "-h", "-r", "-t", "all", "-u", user, "-o", "%i|%T|%r|%M|%N"]))


# ----------------------------------------------------------------------------------------------------------
# torch.distributed from Slurm's environment


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: ``"gpu[07-09,12],cpu3"`` -> ``"gpu07"`` (what ``scontrol show
    hostnames`` prints first)."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m or not m.group(1):
        raise ValueError(f"cannot read a host from the Slurm node list {nodelist!r}")
    prefix, ranges = m.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks on node ``node`` from ``SLURM_TASKS_PER_NODE`` (``"2(x3),1"``: nodes 0-2 run 2, node 3 runs 1)."""
    counts = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM_TASKS_PER_NODE {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node] if node < len(counts) else counts[-1]


def torch_env(environ=None) -> dict:
    """The variables of ``torch.distributed``'s ``env://`` rendezvous for this Slurm task (srun launched one
    process per task): ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``, ``LOCAL_RANK`` =
    ``SLURM_LOCALID``, ``LOCAL_WORLD_SIZE`` = this node's share of ``SLURM_TASKS_PER_NODE``, ``MASTER_ADDR`` =
    the first host of ``SLURM_JOB_NODELIST``, ``MASTER_PORT`` = one port per job and restart (so every task of
    an attempt agrees, and a requeued attempt does not meet the previous one's socket), unless already set.
    {} outside a multi-task Slurm step."""
    env = os.environ if environ is None else environ
    world = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if world <= 1 or "SLURM_PROCID" not in env:
        return {}
    node = int(env.get("SLURM_NODEID", "0"))
    job = int(env.get("SLURM_JOB_ID", "0"))
    restart = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    port = env.get("MASTER_PORT") or str(20000 + (job % 9973) * 4 + restart % 4)
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(world), "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(tasks_on_node(env.get("SLURM_TASKS_PER_NODE", str(world)), node)),
            "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST",
                                                                        env.get("SLURM_NODELIST", "localhost"))),
            "MASTER_PORT": port}


# ----------------------------------------------------------------------------------------------------------
# The job


def record_start(run_dir: Path, extra: Optional[dict] = None) -> dict:
    """Append this start of the run to ``<run_dir>/slurm_starts.jsonl`` (job id, restart count, host, time)."""
    env = os.environ
    array, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    entry = {"job_id": f"{array}_{index}" if array and index else env.get("SLURM_JOB_ID"),
             "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0), "host": socket.gethostname(),
             "time": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid(),
             "tasks": int(env.get("SLURM_NTASKS", "1")), **(extra or {})}
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / STARTS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def read_starts(run_dir: Path) -> list:
    path = Path(run_dir) / STARTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunJob(submitit.helpers.Checkpointable):
    """Train (or resume) one run of a study and export it: what one element of a Slurm array runs.

    Pickled state: the plan (a :class:`vfu_nb.study.plan.Plan`), the run's :class:`vfu_nb.study.plan.RunSpec` and the
    trainer settings the executor adds (``checkpoint_every``); nothing that changes while it trains. Each task
    of a multi-task job runs it: rank 0 trains, writes and exports; the others train with it (DDP).
    """

    def __init__(self, plan, spec, overrides: Optional[dict] = None):
        self.plan = plan
        self.spec = spec
        self.overrides = dict(overrides or {})

    def run_spec(self):
        """The spec the job trains: the planned config with the executor's (resume-safe) settings."""
        return dataclasses.replace(self.spec, config={**self.spec.config, **self.overrides})

    def __call__(self) -> dict:
        plan, spec = self.plan, self.run_spec()
        done = exported(plan, spec.key)
        if done is not None:                       # never train a finished run twice (a rerun after completion)
            return {"key": spec.key, "already_exported": True, "failed": done.get("failed")}
        dist = torch_env()
        os.environ.update(dist)
        rank = int(dist.get("RANK", "0"))
        run_dir = plan.run_dir(spec.key)
        if rank == 0:
            start = record_start(run_dir)
            print(f"[study] {spec.key}: start {len(read_starts(run_dir))} (job {start['job_id']}, restart "
                  f"{start['restart_count']}, {start['tasks']} task(s)) in {run_dir}", flush=True)
        try:
            if rank == 0:
                (plan.runs_dir / SUBMITIT_DIR).mkdir(parents=True, exist_ok=True)
                lock = filelock.FileLock(plan.runs_dir / SUBMITIT_DIR / "export.lock")   # jobs share results/labels
                runner.train_and_export(plan, spec, False, export_lock=lock, skip_locked=False)
            else:
                runner._train(plan, spec, False)
        finally:
            import torch.distributed as tdist

            if tdist.is_available() and tdist.is_initialized():
                tdist.destroy_process_group()
        return {"key": spec.key, "rank": rank, "metrics": exported(plan, spec.key) if rank == 0 else None}

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on USR2 (preemption or time limit): the same run, resumed by the next start from
        its last checkpoint on disk (the trainer writes them atomically; nothing is saved from the handler)."""
        print(f"[study] {self.spec.key}: interrupted; requeued to resume from its last checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(RunJob(self.plan, self.spec, self.overrides))

