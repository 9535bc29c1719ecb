"""Children die with their parent (vfu_nb.lifeline): the cache build's pool, the synthetic generator's pool and the
study's trainers are gone seconds after their parent is SIGKILLed, and the study then runs again cleanly.

Each test starts the parent as its own process, waits until its workers run, SIGKILLs the parent and times how
long its descendants live on (a zombie, waiting for a reaper, counts as dead). Linux only (the parent-death signal
is Linux's); survivors are killed on the way out so that a failing test leaves no orphans either.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vfu_nb.lifeline import die_with_parent

REPO = Path(__file__).resolve().parents[1]
#: A child must be gone this many seconds after its parent was killed (it takes milliseconds).
WITHIN_S = 5.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _stat(pid: int):
    """(state, ppid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> list:
    """Live descendants of ``pid`` (children, their children, ...)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                parents[int(entry.name)] = stat[1]
    found, frontier = [], [pid]
    while frontier:
        nxt = [p for p, pp in parents.items() if pp in frontier]
        found += nxt
        frontier = nxt
    return found


def kill_parent(parent: subprocess.Popen, children: int, timeout_s: float = 180.0, settle_s: float = 0.5) -> float:
    """Wait until ``parent`` has ``children`` children, SIGKILL it, and return how long the longest-lived of its
    descendants outlived it; asserts they all died within :data:`WITHIN_S`."""
    deadline = time.monotonic() + timeout_s
    while len([p for p in descendants(parent.pid) if _stat(p) and _stat(p)[1] == parent.pid]) < children:
        assert parent.poll() is None, f"the parent ended before its workers ran:\n{parent.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {children} children after {timeout_s:.0f} s"
        time.sleep(0.05)
    time.sleep(settle_s)                                           # the workers are working
    kids = descendants(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.monotonic()
    while any(alive(k) for k in kids) and time.monotonic() - t0 < 2 * WITHIN_S:
        time.sleep(0.01)
    lived = time.monotonic() - t0
    survivors = [k for k in kids if alive(k)]
    for k in survivors:
        os.kill(k, signal.SIGKILL)
    assert survivors == [], f"{len(survivors)} of {len(kids)} children outlived their parent by {lived:.1f} s"
    assert lived < WITHIN_S
    return lived


def start(args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_die_with_parent_arms_the_signal_and_ends_a_child_whose_parent_is_already_gone():
    """A child that finds a parent other than the one it was started by ends at once (the race the kernel cannot
    see); with its own parent it carries on."""
    code = ("import os, sys, time\n"
            "from vfu_nb.lifeline import die_with_parent\n"
            "print(die_with_parent(int(sys.argv[1])), flush=True)\n"
            "time.sleep(0.5)\n")
    ok = subprocess.run([sys.executable, "-c", code, str(os.getpid())], cwd=REPO, capture_output=True, text=True,
                        timeout=60)
    assert (ok.returncode, ok.stdout) == (0, "True\n")
    orphaned = subprocess.run([sys.executable, "-c", code, "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert orphaned.returncode == -signal.SIGKILL and orphaned.stdout == ""
    assert die_with_parent(None, 0) is True                       # signal 0 disarms it again in this process


@pytest.mark.slow
def test_cache_build_workers_die_with_their_parent(synth_root, tmp_path):
    code = ("import sys, time\n"
            "from vfu_nb.data import cache, dataset\n"
            "load = cache.load_rgb\n"
            "cache.load_rgb = lambda path: (time.sleep(0.2), load(path))[1]    # a slow build: killed half-way\n"
            "dataset.DeepFashionC(sys.argv[1], 'train', 32, cache=True, cache_dir=sys.argv[2], workers=2, "
            "progress=False)\n")
    cache = tmp_path / "cache"
    lived = kill_parent(start(["-c", code, str(synth_root), str(cache)]), children=2)
    print(f"cache-build workers outlived their SIGKILLed parent by {lived:.3f} s")
    assert list(cache.glob("*.u8.partial*"))                      # the killed build left its partial file ...
    from vfu_nb.data.dataset import DeepFashionC
    DeepFashionC(synth_root, "train", 32, cache=True, cache_dir=cache, workers=1, progress=False)
    assert not list(cache.glob("*partial*")) and len(list(cache.glob("*.u8"))) == 1   # ... which the next removed


@pytest.mark.slow
def test_synthetic_generator_workers_die_with_their_parent(tmp_path):
    parent = start(["-m", "vfu_nb.data.synthetic", "--out", str(tmp_path / "tree"), "--n", "3000", "--seed", "0",
                    "--workers", "2", "--quiet"])
    lived = kill_parent(parent, children=2)
    print(f"generator workers outlived their SIGKILLed parent by {lived:.3f} s")


@pytest.mark.slow
def test_study_trainers_die_with_the_study_and_the_study_then_runs_again(synth_root, tmp_path):
    """SIGKILL `study run --jobs 2` while both trainers train: they (and their children) die with it, their run
    locks with them, and the next `study run` resumes both runs and finishes (exit 0, no traceback)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "data": {"default": {"root": str(synth_root), "synthetic": False}},
        "base": {"image_size": 32, "width": 0.125, "batch_size": 8, "epochs": 3, "max_items": 48, "device": "cpu",
                 "threads": 1},
        "tuning": {"data": "default", "models": ["mtl", "cat"], "grid": {"lr": [1e-3], "backbone": ["vgg16_bn"]}},
        "seeds": {"data": "default", "models": {"mtl": 1, "cat": 1}, "pairs": [["mtl", "cat"]]},
        "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs"), "figures": str(tmp_path / "figures"),
        "bootstrap": 50}))
    first = start(["-m", "vfu_nb.study", "run", str(plan), "--jobs", "2"])
    lived = kill_parent(first, children=2, settle_s=2.0)
    print(f"study trainers outlived their SIGKILLed study by {lived:.3f} s")
    again = subprocess.run([sys.executable, "-m", "vfu_nb.study", "run", str(plan), "--jobs", "2"], cwd=REPO,
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr and "another process" not in again.stdout
    assert len(list((tmp_path / "results" / "runs").glob("*/*/*/*/metrics.json"))) == 2
