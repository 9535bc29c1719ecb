"""A real one-node Slurm cluster for the tests marked ``slurm`` (import the fixtures into a test module).

``slurm_cluster`` (session): uses the cluster that ``SLURM_CONF`` points at when it answers (``.ci/run`` starts
one with tools/slurm_cluster.sh), else starts its own in a fresh directory under /tmp and stops it at the end.
Where no cluster can start (no slurm-wlm/munge, not root, the daemons fail) the tests are skipped with the
reason, unless ``VFU_SLURM_REQUIRED=1`` (CI), where that is a failure. At the end every job the session
submitted is cancelled, and the daemons it started are stopped, whether the tests passed or not.

``cluster`` (per test): the same cluster; cancels the jobs the test submitted when it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "slurm_cluster.sh"
LIVE = "PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED,REQUEUED,REQUEUE_HOLD,SPECIAL_EXIT,RESIZING,STOPPED"


def restarts(job_id: str) -> int | None:
    """How often Slurm has requeued job ``job_id`` (``Restarts=`` of ``scontrol show job``); None when unknown."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    m = re.search(r"\bRestarts=(\d+)", out.stdout)
    return int(m.group(1)) if m else None


@dataclass
class Cluster:
    conf: str
    directory: str | None      # None: started by someone else (CI), who stops it

    def live_jobs(self) -> set:
        """Ids of the jobs waiting or running now (array elements one by one)."""
        out = subprocess.run(["squeue", "-h", "-r", "-t", LIVE, "-o", "%i"], capture_output=True, text=True,
                             timeout=60)
        return set(out.stdout.split()) if out.returncode == 0 else set()

    def all_jobs(self) -> set:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                             timeout=60)
        return set(out.stdout.split()) if out.returncode == 0 else set()

    def cancel_except(self, keep: set, timeout: float = 60) -> None:
        """scancel every live job not in ``keep`` and wait until they are gone."""
        extra = self.live_jobs() - keep
        if not extra:
            return
        subprocess.run(["scancel", *sorted(extra)], capture_output=True, timeout=60)
        deadline = time.time() + timeout
        while time.time() < deadline and self.live_jobs() & extra:
            time.sleep(0.5)


def _answers(conf: str) -> bool:
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, env=env)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(state in out.stdout for state in ("idle", "mix", "alloc"))


def _unavailable(reason: str):
    if os.environ.get("VFU_SLURM_REQUIRED") == "1":
        pytest.fail(f"VFU_SLURM_REQUIRED=1 but no Slurm cluster: {reason}")
    pytest.skip(f"no Slurm cluster: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's Slurm cluster (see the module docstring)."""
    saved = os.environ.get("SLURM_CONF")
    directory = None
    if saved and _answers(saved):
        cluster = Cluster(saved, None)
    else:
        missing = [exe for exe in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged") if not
                   os.path.exists(exe)] + [exe for exe in ("sbatch", "squeue", "scontrol", "srun") if not
                                           shutil.which(exe)]
        if missing:
            _unavailable(f"{', '.join(missing)} not installed (apt-get install -y slurm-wlm munge)")
        if os.geteuid() != 0:
            _unavailable("tools/slurm_cluster.sh needs root (slurmd runs jobs as their users)")
        directory = tempfile.mkdtemp(prefix="vfu_nb-slurm-", dir="/tmp")   # not tmp_path: munged needs 0755 dirs
        started = subprocess.run(["bash", str(SCRIPT), "start", directory], capture_output=True, text=True,
                                 timeout=300)
        if started.returncode != 0:
            subprocess.run(["bash", str(SCRIPT), "stop", directory], capture_output=True, timeout=300)
            shutil.rmtree(directory, ignore_errors=True)
            _unavailable(f"tools/slurm_cluster.sh start failed: {(started.stderr or started.stdout).strip()[-800:]}")
        cluster = Cluster(os.path.join(directory, "etc", "slurm.conf"), directory)
        os.environ["SLURM_CONF"] = cluster.conf
    before = cluster.live_jobs()
    try:
        yield cluster
    finally:
        try:
            cluster.cancel_except(before)
        finally:
            if directory is not None:
                subprocess.run(["bash", str(SCRIPT), "stop", directory], capture_output=True, timeout=300)
                shutil.rmtree(directory, ignore_errors=True)
                if saved is None:
                    os.environ.pop("SLURM_CONF", None)
                else:
                    os.environ["SLURM_CONF"] = saved


@pytest.fixture
def cluster(slurm_cluster):
    """The session's cluster; the jobs this test submitted are cancelled when it ends (pass or fail)."""
    before = slurm_cluster.live_jobs()
    yield slurm_cluster
    slurm_cluster.cancel_except(before)


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned); fail saying ``what`` after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
