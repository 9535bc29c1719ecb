"""The study on Slurm: settings, queue parsing, torch.distributed from Slurm's variables, run states (fast, no
cluster), and the executor against a real one-node Slurm (markers ``slurm`` and ``slow``; tests/slurm_helpers.py
starts the cluster, or they are skipped saying why).

The cluster tests check what docs/study.md promises: a plan trained through Slurm gives the metrics of the
local executor; a run requeued mid-epoch (``scontrol requeue``) or signalled like a time limit
(``scancel --signal=USR2``: submitit's checkpoint and requeue) resumes from its last step checkpoint and ends with
the metrics of an uninterrupted run; a failing run is reported with its log; a second ``study run`` while jobs
wait submits nothing twice; ``study status`` shows the queue; one run over two Slurm tasks trains with DDP.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from slurm_helpers import cluster, restarts, slurm_cluster, wait_for  # noqa: F401 (fixtures)
from vfu_nb.study import cli, executors, runner
from vfu_nb.study import plan as plans
from vfu_nb.study import slurm as sl

REPO = Path(__file__).resolve().parents[1]
TIMING = {"timing", "wall_seconds", "train_seconds", "eval_seconds", "seconds", "images_per_s"}


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def read_json(path):
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------------------------
# Without a cluster


@pytest.mark.parametrize("value,minutes", [(90, 90), ("90", 90), ("1:30:00", 90), ("45:30", 46), ("2-00", 2880),
                                           ("1-12:00:00", 2160), ("0:00:30", 1), (0.5, 1)])
def test_time_limits_read_as_sbatch_does(value, minutes):
    assert sl.parse_time(value) == minutes


@pytest.mark.parametrize("value", ["", "1h", "1:2:3:4", 0, "0:00:00", -5])
def test_bad_time_limits_are_refused(value):
    with pytest.raises(ValueError, match="time limit"):
        sl.parse_time(value)


def test_settings_merge_the_plan_block_and_options_into_submitit_parameters():
    block = {"partition": "gpu", "gpus": 1, "cpus": 8, "mem_gb": 64, "time": "12:00:00", "account": "vision",
             "qos": "normal", "setup": ["module load cuda"], "sbatch": {"requeue": False, "mail-type": "END"}}
    s = sl.SlurmSettings.from_dict(block, {"time": "1-00:00:00", "partition": None, "sbatch": {"hold": True},
                                           "setup": "echo hi"})
    assert (s.partition, s.minutes, s.tasks) == ("gpu", 1440, 1)
    p = s.submitit_parameters(Path("/repo"))
    assert p["timeout_min"] == 1440 and p["gpus_per_node"] == 1 and p["cpus_per_task"] == 8 and p["mem_gb"] == 64
    assert (p["slurm_partition"], p["slurm_account"], p["slurm_qos"]) == ("gpu", "vision", "normal")
    assert p["slurm_additional_parameters"] == {"requeue": False, "mail-type": "END", "hold": True}
    assert p["slurm_setup"][0] == "export PYTHONPATH=/repo${PYTHONPATH:+:$PYTHONPATH}"
    assert p["slurm_setup"][2:] == ["module load cuda", "echo hi"]
    assert "slurm_srun_args" not in p and "slurm_constraint" not in p
    two = sl.SlurmSettings.from_dict({"nodes": 2, "tasks_per_node": 4}).submitit_parameters(Path("/repo"))
    assert (two["nodes"], two["tasks_per_node"], two["slurm_srun_args"]) == (2, 4, ["--kill-on-bad-exit=1"])
    assert sl.SlurmSettings.from_dict(None).submitit_parameters(Path("/r"))["slurm_additional_parameters"] == {
        "requeue": True}


def test_settings_refuse_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"slurm block: unknown keys \['gpu'\]; allowed: \['partition'"):
        sl.SlurmSettings.from_dict({"gpu": 1})
    with pytest.raises(ValueError, match="tasks_per_node 0: must be at least 1"):
        sl.SlurmSettings.from_dict({"tasks_per_node": 0})
    with pytest.raises(ValueError, match="time limit 'soon'"):
        sl.SlurmSettings.from_dict({}, {"time": "soon"})


def test_a_plan_carries_its_slurm_block(tmp_path):
    plan = plans.Plan.load({**plans.smoke_plan(tmp_path), "slurm": {"partition": "gpu", "time": "4:00:00"}})
    assert plan.slurm == {"partition": "gpu", "time": "4:00:00"}
    assert plans.Plan.load(plans.smoke_plan(tmp_path)).slurm == {}


@pytest.mark.parametrize("nodelist,host", [("vm", "vm"), ("gpu[07-09,12],cpu3", "gpu07"), ("a1,b2", "a1"),
                                           ("node[3]", "node3"), ("rack1-n[0010-0020]", "rack1-n0010")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert sl.first_host(nodelist) == host


def test_torch_distributed_variables_come_from_slurms():
    env = {"SLURM_NTASKS": "6", "SLURM_PROCID": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
           "SLURM_TASKS_PER_NODE": "2(x3)", "SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_JOB_ID": "12345"}
    out = sl.torch_env(env)
    assert out == {"RANK": "4", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + (12345 % 9973) * 4)}
    restarted = sl.torch_env({**env, "SLURM_RESTART_COUNT": "1"})
    assert int(restarted["MASTER_PORT"]) == int(out["MASTER_PORT"]) + 1       # a new port per attempt
    assert sl.torch_env({**env, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"
    assert sl.torch_env({**env, "SLURM_NTASKS": "1"}) == {} and sl.torch_env({}) == {}
    assert sl.tasks_on_node("2(x3),1", 3) == 1 and sl.tasks_on_node("4", 0) == 4


def test_squeue_lines_become_jobs():
    jobs = sl.parse_squeue("12_0|RUNNING|None|0:07|vm\n12_1|PENDING|JobArrayTaskLimit|0:00|\n"
                           "13|COMPLETED|None|0:03|vm\n\n")
    assert set(jobs) == {"12_0", "12_1", "13"}
    assert jobs["12_0"].running and jobs["12_1"].queued and jobs["13"].ended
    assert jobs["12_1"].reason == "JobArrayTaskLimit"


def small_plan(root: Path, data_root, models=("mtl", "cat"), seeds=1, backbone="vgg16_bn", **base) -> dict:
    """Tuning of ``models`` on one setting plus ``seeds`` seeds each: 2 runs by default, seconds each."""
    return {"data": {"default": {"root": str(data_root), "synthetic": False}},
            "base": {"image_size": 32, "width": 0.125, "batch_size": 8, "epochs": 1, "max_items": 32,
                     "device": "cpu", "threads": 1, **base},
            "tuning": {"data": "default", "models": list(models), "grid": {"lr": [1e-3], "backbone": [backbone]}},
            "seeds": {"data": "default", "models": {m: seeds for m in models}, "pairs": []},
            "results": str(root / "results"), "runs": str(root / "runs"), "figures": str(root / "figures"),
            "bootstrap": 20, "slurm": {"time": 30, "cpus": 1, "poll_s": 1}}


def test_a_run_a_live_local_process_holds_is_running_and_a_dead_ones_lock_is_not(tmp_path):
    import socket

    plan = plans.Plan.load(small_plan(tmp_path, tmp_path / "df"))
    spec = plan.tuning_specs()[0]
    run = plan.runs_dir / spec.key
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,lr\n1,0.001\n2,0.001\n")
    (run / "train.lock").write_text(f"pid {os.getpid()} on {socket.gethostname()} since 2026-12-06 10:00:00\n")
    row = executors.run_status(plan, spec, queue={})
    assert (row.state, row.detail) == ("running", f"local, pid {os.getpid()}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "train.lock").write_text(f"pid {dead.pid} on {socket.gethostname()} since 2026-12-06 10:00:00\n")
    row = executors.run_status(plan, spec, queue={})
    assert (row.state, row.detail) == ("pending", "2 epochs done")
    (run / "train.lock").write_text(f"pid {os.getpid()} on another-host since 2026-12-06 10:00:00\n")
    assert executors.run_status(plan, spec, queue={}).state == "pending"      # another host's: not this machine's


def test_run_states_from_exports_records_queue_and_results(tmp_path):
    plan = plans.Plan.load(small_plan(tmp_path, tmp_path / "df",
                                      models=("mtl", "cat", "mtl_bi", "mtl_pool", "mtl_no_landmarks")))
    mtl, cat, bi, pool, nolm = plan.tuning_specs()
    folder = plan.runs_dir / sl.SUBMITIT_DIR
    now = time.time()

    def record(spec, job):
        d = plan.runs_dir / spec.key
        d.mkdir(parents=True)
        (folder / job).mkdir(parents=True)
        (d / sl.RECORD).write_text(json.dumps({"job_id": job, "folder": str(folder / job), "submitted_unix": now,
                                               "stdout": str(folder / job / f"{job}_0_log.out")}))
    record(mtl, "7_0")
    record(cat, "7_1")
    record(bi, "7_2")
    record(pool, "7_3")
    record(nolm, "7_4")
    with open(folder / "7_1" / "7_1_0_result.pkl", "wb") as f:
        pickle.dump(("error", "Traceback (most recent call last):\n  ...\nValueError: no such tree\n"), f)
    with open(folder / "7_4" / "7_4_0_result.pkl", "wb") as f:
        pickle.dump(("success", {"key": nolm.key}), f)
    queue = sl.parse_squeue("7_0|PENDING|Priority|0:00|\n7_2|RUNNING|None|1:02|vm\n7_3|CANCELLED|None|0:09|vm\n")
    rows = {r.key: r for r in executors.status(plan, queue=queue)["runs"]}
    assert (rows[mtl.key].state, rows[mtl.key].job_id, rows[mtl.key].detail) == ("queued", "7_0", "pending (Priority)")
    assert rows[mtl.key].log.endswith("_slurm/7_0/7_0_0_log.out")
    assert (rows[cat.key].state, rows[cat.key].detail) == ("failed", "ValueError: no such tree")
    assert (rows[bi.key].state, rows[bi.key].detail) == ("running", "1:02 on vm")
    assert (rows[pool.key].state, rows[pool.key].detail) == ("failed", "job cancelled without finishing the run")
    # returned, but its export is not there (deleted, or not visible yet): pending, so the driver submits it again
    assert (rows[nolm.key].state, rows[nolm.key].detail) == ("pending", "job 7_4 ended without an export of the run")
    gone = executors.status(plan, queue={})["runs"]                      # Slurm forgot the jobs (MinJobAge)
    assert [r.state for r in gone] == ["failed"] * 4 + ["pending"]
    assert executors.run_status(plan, mtl, None).state == "unknown"             # Slurm did not answer
    # a finished export wins over everything; a run nobody submitted is pending
    d = plan.results_dir / "runs" / mtl.key
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"best_epoch": 3, "epochs_run": 7, "val": {"category_top3": 0.5},
                                                "test": {}}))
    fresh = plans.Plan.load(small_plan(tmp_path / "other", tmp_path / "df"))
    result = executors.status(plan, queue=queue)
    assert result["runs"][0].state == "done" and result["runs"][0].detail == "best val epoch 3 of 7"
    assert [r.state for r in executors.status(fresh, queue={})["runs"]] == ["pending", "pending"]
    text = executors.format_status(result, relative_to=tmp_path)
    assert text.splitlines()[0].startswith("5 runs known: 1 pending, 0 queued, 1 running, 1 done, 2 failed")
    assert result["run_seconds"] is None and text.splitlines()[1].startswith("state")   # no history: no estimate
    (d / "history.json").write_text(json.dumps({"epochs": [{"seconds": 600.0}, {"seconds": 1200.0}, {"seconds": None}, {}]}))
    result = executors.status(plan, queue=queue)
    assert (result["run_seconds"], result["runs_left"]) == (1800.0, 2)                # the running one and the pending
    assert executors.format_status(result).splitlines()[1] == (
        "2 runs to go: about 1.0 hours of training at the median finished run (30 min; 0.5 h with two at a time, "
        "as `--jobs 2`)")
    # what the running and the interrupted run have trained already is not counted again (each at most a median)
    for spec_, seconds in ((bi, 1200.0), (nolm, 5000.0)):
        (plan.runs_dir / spec_.key).mkdir(parents=True, exist_ok=True)
        (plan.runs_dir / spec_.key / "history.json").write_text(json.dumps({"epochs": [{"seconds": seconds}]}))
    result = executors.status(plan, queue=queue)
    assert result["seconds_done"] == 1200.0 + 1800.0
    assert executors.time_left(result).startswith("2 runs to go: about 0.2 hours of training")
    (plan.runs_dir / nolm.key / "history.json").write_text('{"epochs": [')                # being rewritten
    assert executors.status(plan, queue=queue)["seconds_done"] == 1200.0
    assert re.search(r"^failed +7_1 +default/cat/vgg16_bn_lr0.001_f1/seed0 +runs/_slurm/7_1/7_1_0_log.out +"
                     r"ValueError: no such tree$", text, re.M)
    # Slurm installed but no cluster answers: one line saying so, the runs' states from their exports
    def no_cluster():
        raise sl.SlurmError("squeue -h -r failed (exit 1): squeue: error: DNS SRV lookup failed\nsqueue: error: x")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sl, "available", lambda: True)
        mp.setattr(sl, "queue", no_cluster)
        shown = executors.format_status(executors.status(plan), relative_to=tmp_path).splitlines()
    assert shown[0].endswith("(Slurm: no answer: squeue -h -r failed (exit 1): squeue: error: DNS SRV lookup failed)")
    assert re.search(r"^done +7_0 +default/mtl/vgg16_bn_lr0.001_f1/seed0 ", "\n".join(shown), re.M)
    # an old result of the same job id (a cluster set up again) does not count
    os.utime(folder / "7_1" / "7_1_0_result.pkl", (now - 3600, now - 3600))
    assert executors.job_error(executors.read_record(plan, cat.key)) is None


def test_status_leaves_slurm_alone_when_no_run_was_submitted_to_it(tmp_path, monkeypatch):
    """A plan trained locally on a machine with Slurm installed but no cluster: squeue is not asked (its DNS errors
    would only be noise), and the header says why; once a run has a Slurm record, squeue is asked."""
    plan = plans.Plan.load(small_plan(tmp_path, tmp_path / "df"))
    asked = []

    def no_cluster():
        asked.append(1)
        raise sl.SlurmError("squeue -h -r failed (exit 1): squeue: error: DNS SRV lookup failed")
    monkeypatch.setattr(sl, "queue", no_cluster)
    monkeypatch.setattr(sl, "available", lambda: False)
    assert executors.status(plan)["slurm"] == "not installed" and not asked
    monkeypatch.setattr(sl, "available", lambda: True)
    result = executors.status(plan)
    assert (result["slurm"], asked) == ("not asked: no run was submitted to it", [])
    assert executors.format_status(result).splitlines()[0].endswith("(Slurm: not asked: no run was submitted to it)")
    spec = plan.tuning_specs()[0]
    (plan.runs_dir / spec.key).mkdir(parents=True)
    (plan.runs_dir / spec.key / sl.RECORD).write_text(json.dumps({"job_id": "3_0"}))
    assert executors.status(plan)["slurm"].startswith("no answer: squeue -h -r failed") and asked == [1]
    assert executors.status(plan, queue={})["slurm"] == "answered"


def test_the_local_executor_is_the_default_and_refuses_slurm_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "train_pending", lambda plan, jobs, log, keep_going: calls.append((jobs, keep_going)))
    assert executors.train(small_plan(tmp_path, tmp_path), jobs=2) is True and calls == [(2, False)]
    assert executors.train(small_plan(tmp_path, tmp_path), keep_going=True) and calls[-1] == (1, True)
    with pytest.raises(ValueError, match=r"Slurm settings \['partition'\] need the slurm executor"):
        executors.train(small_plan(tmp_path, tmp_path), slurm={"partition": "gpu"})
    with pytest.raises(ValueError, match="unknown executor 'k8s'"):
        executors.train(small_plan(tmp_path, tmp_path), "k8s")


def test_one_driver_per_plan(tmp_path):
    plan = plans.Plan.load(small_plan(tmp_path, tmp_path / "df"))
    driver = executors.SlurmDriver(plan, sl.SlurmSettings.from_dict(plan.slurm))
    with executors._DriverLock(driver.folder / "driver.lock"):
        with pytest.raises(executors.DriverLockedError, match=rf"another study run drives {tmp_path}/runs \(pid "
                                                              rf"{os.getpid()} on "):
            driver.run(wait=False, log=lambda line: None)
    assert not (plan.runs_dir / plan.tuning_specs()[0].key).exists()          # nothing was submitted


def test_run_options_reach_the_settings():
    import argparse

    parser = argparse.ArgumentParser()
    executors.add_run_arguments(parser)
    args = parser.parse_args(["--executor", "slurm", "--time", "4:00:00", "--gpus", "1", "--sbatch", "hold=true",
                              "--sbatch", "mail-type=END", "--setup", "module load cuda", "--poll", "5"])
    assert args.executor == "slurm" and not args.no_wait
    assert executors.slurm_overrides(args) == {"time": "4:00:00", "gpus": 1, "poll_s": 5.0,
                                               "setup": ["module load cuda"],
                                               "sbatch": {"hold": True, "mail-type": "END"}}
    assert parser.parse_args([]).executor == "local" and executors.slurm_overrides(parser.parse_args([])) == {}


def test_notebook_05_and_the_pipeline_choose_the_executor():
    from vfu_nb import pipeline

    assert pipeline.notebook_parameters("05_controls_and_seeds")["executor"] == "local"
    given = pipeline.parse_assignments([("executor", "slurm"), ("slurm", "{partition: gpu, time: '4:00:00'}")])
    p = pipeline.parameters("study", "05_controls_and_seeds", given)
    assert p["executor"] == "slurm" and p["slurm"] == {"partition": "gpu", "time": "4:00:00"}
    assert pipeline.parameters("study", "05_controls_and_seeds")["executor"] == "local"


def test_the_cluster_script_refuses_unknown_commands_and_reports_a_stopped_cluster(tmp_path):
    script = REPO / "tools" / "slurm_cluster.sh"
    bad = subprocess.run(["bash", str(script), "restart", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr
    st = subprocess.run(["bash", str(script), "status", str(tmp_path / "none")], capture_output=True, text=True)
    assert st.returncode == 3 and "not running" in st.stdout
    stop = subprocess.run(["bash", str(script), "stop", str(tmp_path / "none")], capture_output=True, text=True)
    assert stop.returncode == 0                                                  # idempotent


# ----------------------------------------------------------------------------------------------------------
# On a real Slurm (tools/slurm_cluster.sh)



def exports(plan: dict) -> dict:
    root = Path(plan["results"]) / "runs"
    return {str(p.parent.relative_to(root)): strip_timing(read_json(p)) for p in root.glob("*/*/*/*/metrics.json")}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_study_on_slurm_gives_the_local_executors_results(cluster, synth_root, tmp_path):
    """The smoke plan without its learning curve (4 runs in two waves: tuning, then the seed runs it unlocks)."""
    def plan(where):
        p = plans.smoke_plan(tmp_path / where, data_root=synth_root)
        p["base"]["threads"] = 1
        p.pop("learning_curve")
        return {**p, "slurm": {"time": 30, "cpus": 1, "poll_s": 1}}

    local, on_slurm = plan("local"), plan("slurm")
    a = cli.run(local, log=lambda line: None)
    log = []
    b = cli.run(on_slurm, executor="slurm", log=log.append)
    waves = [int(m.group(1)) for m in map(re.compile(r"\[study\] slurm: submitted (\d+) runs? ").match, log) if m]
    assert waves[0] == 2 and sum(waves) == 4 and len(waves) >= 2, log   # the tuning, then the seed runs it unlocks
    assert exports(local) == exports(on_slurm) and len(exports(local)) == 4
    assert a["runs"].pop("train_hours") > 0 and b["runs"].pop("train_hours") > 0
    assert a == b                                                                  # the whole report
    rows = executors.status(on_slurm)["runs"]
    assert [r.state for r in rows] == ["done"] * 4 and all(re.fullmatch(r"\d+(_\d+)?", r.job_id) for r in rows)
    for r in rows:                                # each run's Slurm log beside it, and one start per run
        d = Path(on_slurm["runs"]) / r.key
        assert (d / "slurm.out").resolve() == Path(r.log).resolve() and "Job completed successfully" in (
            d / "slurm.err").read_text() + (d / "slurm.out").read_text()
        assert [s["job_id"] for s in sl.read_starts(d)] == [r.job_id]


def long_plan(root: Path, data_root, **slurm) -> dict:
    """One run of one long epoch (~140 steps of batch 4 at 128 px, tens of seconds), step checkpoints every 2
    steps under Slurm, so an interruption lands inside the epoch and the resume starts from a step checkpoint."""
    return {"data": {"default": {"root": str(data_root), "synthetic": False}},
            "base": {"image_size": 128, "width": 0.25, "batch_size": 4, "epochs": 1, "device": "cpu", "threads": 1},
            "tuning": {"data": "default", "models": ["mtl"], "grid": {"lr": [1e-3], "backbone": ["vgg16_bn"]}},
            "seeds": {"data": "default", "models": {"mtl": 1}, "pairs": []},
            "results": str(root / "results"), "runs": str(root / "runs"), "figures": str(root / "figures"),
            "slurm": {"time": 60, "cpus": 1, "poll_s": 1, "checkpoint_every": 2, **slurm}}


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory):
    """The long run trained locally, uninterrupted: (plan, run key)."""
    plan = long_plan(tmp_path_factory.mktemp("uninterrupted"), synth_root)
    assert executors.train(plan, "local", log=lambda line: None)
    (spec,) = plans.Plan.load(plan).tuning_specs()
    return plan, spec.key


def interrupt_and_finish(plan: dict, key: str, interrupt) -> tuple:
    """Submit the run, wait for its first step checkpoint, ``interrupt(job_id)``, then drive it to the end."""
    assert executors.train(plan, "slurm", wait=False, log=lambda line: None) is False
    run_dir = Path(plan["runs"]) / key
    job_id = read_json(run_dir / sl.RECORD)["job_id"]
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists(), 240, "the first step checkpoint")
    assert not (run_dir / "metrics.json").exists()
    interrupt(job_id)
    wait_for(lambda: len(sl.read_starts(run_dir)) >= 2, 240, "the job to start again")
    log = []
    assert executors.train(plan, "slurm", log=log.append) is True
    assert not any("submitted" in line for line in log), log                     # resumed by Slurm, not by us
    return run_dir, job_id


def assert_resumed_to_the_same_results(plan, key, reference, run_dir):
    starts = sl.read_starts(run_dir)
    assert [s["restart_count"] for s in starts] == [0, 1] and starts[0]["job_id"] == starts[1]["job_id"]
    resumed = re.findall(r"resuming \S+ after epoch 0, step (\d+)", (run_dir / "train.log").read_text())
    assert len(resumed) == 1 and int(resumed[0]) >= 2                     # from a step checkpoint inside epoch 1
    ref_plan, ref_key = reference
    assert exports(plan) == exports(ref_plan) and list(exports(plan)) == [key]   # metrics identical to the bit
    ref_dir = Path(ref_plan["runs"]) / ref_key
    a, b = read_json(ref_dir / "history.json"), read_json(run_dir / "history.json")
    assert a["batches"] == b["batches"] and strip_timing(a["epochs"]) == strip_timing(b["epochs"])
    steps = [int(line.split(",")[2]) for line in (run_dir / "batches.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(a["batches"]["step"]) + 1))               # redone steps not repeated


@pytest.mark.slurm
@pytest.mark.slow
def test_a_run_requeued_mid_epoch_resumes_to_the_uninterrupted_metrics(cluster, synth_root, uninterrupted, tmp_path):
    plan = long_plan(tmp_path, synth_root)
    key = uninterrupted[1]
    run_dir, job_id = interrupt_and_finish(
        plan, key, lambda job: subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True))
    assert restarts(job_id) == 1
    assert_resumed_to_the_same_results(plan, key, uninterrupted, run_dir)


@pytest.mark.slurm
@pytest.mark.slow
def test_usr2_before_a_time_limit_checkpoints_requeues_and_resumes_to_the_same_metrics(cluster, synth_root,
                                                                                        uninterrupted, tmp_path):
    """``scancel --signal=USR2`` is what Slurm sends ``signal_delay_s`` before the time limit (and, where the
    site enables it, on preemption): submitit calls RunJob.checkpoint, requeues the job and exits."""
    plan = long_plan(tmp_path, synth_root, time=5)      # <= 10 min: submitit reads every USR2 as a time limit
    key = uninterrupted[1]
    run_dir, job_id = interrupt_and_finish(
        plan, key, lambda job: subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True))
    log = (run_dir / "slurm.err").read_text() + (run_dir / "slurm.out").read_text()
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log
    assert "interrupted; requeued to resume from its last checkpoint" in log
    assert restarts(job_id) == 1
    assert_resumed_to_the_same_results(plan, key, uninterrupted, run_dir)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_failing_run_is_reported_failed_with_its_log(cluster, tmp_path):
    plan = small_plan(tmp_path, tmp_path / "no_such_tree", models=("mtl",))
    log = []
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed on Slurm.*default/mtl/vgg16_bn_lr0.001_f1/seed0: "
                                           r"[\w.]+Error: .*no_such_tree.*\(log /\S+_0_log.out\)"):
        cli.run(plan, executor="slurm", log=log.append)
    assert any(line.startswith("[study] FAILED default/mtl/") for line in log), log
    (row,) = executors.status(plan)["runs"]
    assert row.state == "failed" and "no_such_tree" in row.detail
    assert "Traceback" in Path(row.log.replace("_log.out", "_log.err")).read_text()
    assert (Path(plan["runs"]) / row.key / "slurm.err").read_text().count("Traceback") >= 1
    status = subprocess.run([sys.executable, "-m", "vfu_nb.study", "status", write_plan(plan, tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert status.returncode == 1 and re.search(r"^failed +\d+ +default/mtl/\S+ +\S+_0_log.out +[\w.]+Error",
                                                status.stdout, re.M), status.stdout + status.stderr


def write_plan(plan: dict, where: Path) -> str:
    path = where / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_second_run_while_jobs_wait_submits_nothing_and_status_shows_the_queue(cluster, synth_root, tmp_path):
    plan = small_plan(tmp_path, synth_root)
    path = write_plan(plan, tmp_path)
    first = subprocess.run([sys.executable, "-m", "vfu_nb.study", "run", path, "--executor", "slurm", "--no-wait",
                            "--sbatch", "hold=true"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert first.returncode == 0 and "submitted 2 runs as job array" in first.stdout, first.stdout + first.stderr
    keys = [s.key for s in plans.Plan.load(plan).tuning_specs()]
    jobs = [read_json(Path(plan["runs"]) / k / sl.RECORD)["job_id"] for k in keys]
    assert set(jobs) <= cluster.live_jobs()
    again = subprocess.run([sys.executable, "-m", "vfu_nb.study", "run", path, "--executor", "slurm", "--no-wait"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0 and "nothing new to submit; 2 run(s) queued or running" in again.stdout, again.stdout
    assert [read_json(Path(plan["runs"]) / k / sl.RECORD)["job_id"] for k in keys] == jobs
    shown = subprocess.run([sys.executable, "-m", "vfu_nb.study", "status", path], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith("2 runs known: 0 pending, 2 queued"), shown.stdout
    for key, job in zip(keys, jobs):
        assert re.search(rf"^queued +{job} +{re.escape(key)} +\S+/{job}/{job}_0_log.out +pending \(JobHeldUser\)$",
                         shown.stdout, re.M), shown.stdout
    subprocess.run(["scontrol", "release", jobs[0].split("_")[0]], check=True, capture_output=True)
    result = cli.run(plan, executor="slurm", log=lambda line: None)
    assert result["runs"]["exported"] == 2
    for key in keys:                                                             # each trained once
        assert len(sl.read_starts(Path(plan["runs"]) / key)) == 1
    log = []
    assert executors.train(plan, "slurm", wait=False, log=log.append) is True    # nothing left, nothing submitted
    assert not any("submitted" in line for line in log)


@pytest.mark.slurm
@pytest.mark.slow
def test_one_run_on_two_slurm_tasks_trains_with_ddp_like_one_process(cluster, synth_root, tmp_path):
    """2 tasks x batch 4 (gloo, torch.distributed from SLURM_PROCID/SLURM_NTASKS/SLURM_JOB_NODELIST) = the same
    global batches as 1 process x batch 8 (vfu_nb.training's DDP sampler), so the losses agree to float precision.
    Plain VGG-16: batch norm would normalise over each process's 4 images (no SyncBatchNorm), not over 8."""
    common = {"max_items": 40, "max_batches": 4, "backbone": "vgg16"}
    one = small_plan(tmp_path / "one", synth_root, models=("mtl",), batch_size=8, **common)
    two = small_plan(tmp_path / "two", synth_root, models=("mtl",), batch_size=4, **common)
    two["slurm"].update(tasks_per_node=2, cpus=1)
    assert executors.train(one, "local", log=lambda line: None)
    assert executors.train(two, "slurm", log=lambda line: None)
    (key,) = exports(two)
    d1, d2 = Path(one["runs"]) / key, Path(two["runs"]) / key
    h1, h2 = read_json(d1 / "history.json"), read_json(d2 / "history.json")
    assert len(h1["batches"]["total"]) == len(h2["batches"]["total"]) == 4
    for term in ("category", "attribute", "landmark", "total"):
        np.testing.assert_allclose(h2["batches"][term], h1["batches"][term], rtol=1e-4, err_msg=term)
    m = read_json(Path(two["results"]) / "runs" / key / "metrics.json")
    assert m["timing"]["world_size"] == 2 and read_json(d2 / "config.json")["resolved"]["world_size"] == 2
    (start,) = sl.read_starts(d2)
    assert start["tasks"] == 2
