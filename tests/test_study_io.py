"""The study at its edges (vfu_nb.study.store): results that stand alone, damaged result files named with the way
out, trainers that fail in one line, runs locked by another live process skipped and then waited for."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_study import PLAN, export, seed_runs
from vfu_nb.training.rundir import RunLock, RunLockedError
from vfu_nb.data.identity import annotations_digest
from vfu_nb.study import analysis, runner, store
from vfu_nb.study import plan as plans
from vfu_nb.study import report as reports
from vfu_nb.study.plan import Plan
from vfu_nb.study.store import CorruptResultError, StudyInputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plan(tmp_path):
    """PLAN with its results in tmp_path and its trees at paths where there are none."""
    data = {tag: {**d, "root": str(tmp_path / "no_trees" / tag)} for tag, d in PLAN["data"].items()}
    return Plan.load({**PLAN, "data": data, "results": str(tmp_path / "results"), "runs": str(tmp_path / "runs"),
                      "figures": str(tmp_path / "figures")})


def tuned_with_seeds(plan):
    """Tuning complete (mtl and cat choose lr 1e-3) and 3 paired seed runs with consistent predictions."""
    for spec in plan.tuning_specs():
        if spec.config["lr"] != 1e-3:
            export(plan, spec, val=0.1)
    return seed_runs(plan, gain=0.3)


def write_baselines(plan, tag, baselines):
    path = store.baselines_path(plan.results_dir, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": tag, "settings": plan.data[tag], "split": "test", "baselines": baselines}))
    return path


# ----------------------------------------------------------------------------------------------------------
# Baselines committed with the results


def test_the_report_takes_the_baselines_from_results_when_the_tree_is_absent(plan):
    tuned_with_seeds(plan)
    baselines = {"class_prior": {"category_top3": 0.297, "category_top1": 0.14}, "chance": {"category_top3": 0.06}}
    write_baselines(plan, "default", baselines)
    result = reports.report(plan, log=lambda line: None)
    assert result["baselines"] == {"default": baselines, "g1": {}}          # g1 (the dial) has no runs: not needed
    assert "| baseline: class prior | | | 0.297 |" in reports.readme_block(result)


def test_the_report_refuses_without_the_baselines_it_shows_and_writes_nothing(plan):
    tuned_with_seeds(plan)
    with pytest.raises(StudyInputError) as err:
        reports.report(plan, log=lambda line: None)
    path = plan.results_dir / "baselines" / "default.json"
    root = plan.data_root("default")
    assert str(err.value) == (
        f"the baselines of data tree default are neither in {path} nor computable (no tree at {root}); restore the "
        f"committed file with `git checkout -- {path}`, or generate the tree (`python -m vfu_nb.data.synthetic --out "
        f"{root} --n 100 --seed 0`), and run the report again (nothing was written)")
    assert not (plan.results_dir / "study.json").exists() and not plan.resolve(plan.figures).exists()
    write_baselines(plan, "default", {"chance": {"category_top3": 0.06}})
    stale = {**json.loads(path.read_text()), "settings": {**plan.data["default"], "n": 50}}
    path.write_text(json.dumps(stale))                                      # computed for another tree
    with pytest.raises(StudyInputError, match=r"holds the baselines of tree default with settings .*'n': 50.*but "
                                              r"the plan now gives .*'n': 100"):
        reports.report(plan, log=lambda line: None)


def test_baselines_are_stored_when_the_tree_is_present_and_recomputed_only_when_it_changes(synth_root, tmp_path,
                                                                                          monkeypatch):
    from vfu_nb import baselines as B

    results, settings = tmp_path / "results", {"root": str(synth_root), "n": 200, "seed": 0}
    first = store.tree_baselines(results, "t", settings, synth_root, True)
    stored = json.loads((results / "baselines" / "t.json").read_text())
    assert stored["settings"] == settings and stored["baselines"] == first and stored["split"] == "test"
    assert stored["annotations_sha256"] == annotations_digest(synth_root)
    assert first["class_prior"]["category_top3"] == B.compute_baselines(synth_root)["class_prior"]["category_top3"]

    def no_compute(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(B, "compute_baselines", no_compute)
    assert store.tree_baselines(results, "t", settings, synth_root, True) == first      # read back
    assert store.tree_baselines(results, "t", settings, tmp_path / "gone", True) == first   # tree absent
    monkeypatch.undo()
    log = []
    other = {**settings, "n": 201}
    assert store.tree_baselines(results, "t", other, synth_root, True, log.append) == first
    assert log == [f"[study] {results / 'baselines' / 't.json'} was computed for another tree than {synth_root} "
                   f"now holds: recomputed"]
    assert json.loads((results / "baselines" / "t.json").read_text())["settings"] == other


def test_the_committed_baselines_are_those_of_the_committed_study():
    """results/baselines/ holds what results/study.json reports, for the committed plan's trees."""
    plan = Plan.load(REPO / "results" / "plan.yaml")
    committed = json.loads((REPO / "results" / "study.json").read_text())["baselines"]
    for tag, settings in plan.data.items():
        stored = json.loads(store.baselines_path(plan.results_dir, tag).read_text())
        assert stored["settings"] == settings and stored["baselines"] == committed[tag], tag


# ----------------------------------------------------------------------------------------------------------
# Damaged and edited result files


def test_a_truncated_metrics_json_is_named_with_the_way_out(plan):
    spec = plan.tuning_specs()[0]
    export(plan, spec, val=0.5)
    path = plan.results_dir / "runs" / spec.key / "metrics.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(CorruptResultError) as err:
        reports.report(plan, log=lambda line: None)
    assert str(err.value).startswith(f"{path} is damaged or truncated (JSONDecodeError: ")
    assert str(err.value).endswith(f"; restore the committed file with `git checkout -- {path}`, or re-export the "
                                   f"run from its run directory with `python -m vfu_nb.study export PLAN {spec.key}`")
    path.write_text(json.dumps({"val": {"category_top3": "0.8"}, "test": {}}))          # hand-edited: a string
    with pytest.raises(CorruptResultError, match=r"metrics.json does not hold what it should \(val.category_top3 is "
                                                 r"'0.8', not a number\); restore"):
        plans.exported(plan, spec.key)


def test_truncated_predictions_and_edited_metrics_are_caught_by_the_report(plan):
    results = tuned_with_seeds(plan)
    write_baselines(plan, "default", {"chance": {"category_top3": 0.06}})
    run = results[0]
    preds = run.path / "predictions.npz"
    good = preds.read_bytes()
    preds.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptResultError) as err:
        reports.report(plan, log=lambda line: None)
    assert str(err.value).startswith(f"{preds} is damaged or truncated (BadZipFile: ")
    assert f"`python -m vfu_nb.study export PLAN {run.spec.key}`" in str(err.value)
    preds.write_bytes(good)
    metrics = run.path / "metrics.json"
    m = json.loads(metrics.read_text())
    true_top3 = m["test"]["category_top3"]
    m["test"]["category_top3"] = true_top3 + 0.05                       # a number edited by hand
    metrics.write_text(json.dumps(m))
    with pytest.raises(CorruptResultError) as err:
        reports.report(plan, log=lambda line: None)
    assert str(err.value).startswith(f"{metrics} gives test category_top3 {true_top3 + 0.05:.4f} but its "
                                     f"predictions.npz gives {true_top3:.4f} (an edited file?); restore")
    m["test"]["category_top3"] = true_top3
    metrics.write_text(json.dumps(m))
    np.savez(preds, category_rank=np.zeros(10, np.int16), attribute_logits=np.zeros((10, 2), np.float32))
    with pytest.raises(CorruptResultError, match=r"predictions.npz has 10 test images, the labels of its tree 400"):
        reports.report(plan, log=lambda line: None)


def test_a_damaged_study_json_or_baselines_file_is_named(plan):
    (plan.results_dir).mkdir(parents=True)
    (plan.results_dir / "study.json").write_text('{"runs": ')
    with pytest.raises(CorruptResultError, match=r"study.json is damaged or truncated .*; restore the committed "
                                                 r"file .*, or write it again with `python -m vfu_nb.study report"):
        reports.load_study(plan)
    path = write_baselines(plan, "default", {"chance": {"category_top3": "high"}})
    with pytest.raises(CorruptResultError, match=r"default.json does not hold what it should \(baseline 'chance' is "
                                                 r"not an object of numbers\)"):
        analysis.baselines_for(plan)
    assert path.exists()


@pytest.mark.slow
def test_the_study_command_line_names_a_damaged_file_in_one_line(plan, tmp_path):
    spec = plan.tuning_specs()[0]
    export(plan, spec, val=0.5)
    path = plan.results_dir / "runs" / spec.key / "metrics.json"
    path.write_text("{")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({**PLAN, "data": plan.data, "results": str(plan.results_dir),
                                         "runs": str(plan.runs_dir), "figures": str(tmp_path / "figures")}))
    out = subprocess.run([sys.executable, "-m", "vfu_nb.study", "report", str(plan_file)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"python -m vfu_nb.study: error: {path} is damaged or truncated (JSONDecodeError")


@pytest.mark.slow
def test_a_damaged_export_is_written_again_from_its_run_directory(synth_root, tmp_path):
    """python -m vfu_nb.study export PLAN KEY: a real (tiny) run trained and exported, its export damaged, then
    re-exported byte for byte."""
    plan = Plan.load(plans.smoke_plan(tmp_path / "s", data_root=synth_root))
    spec = plan.tuning_specs()[0]
    runner.train_and_export(plan, spec, False, log=lambda line: None)
    dest = plan.results_dir / "runs" / spec.key
    good = {p.name: p.read_bytes() for p in dest.iterdir()}
    (dest / "predictions.npz").write_bytes(good["predictions.npz"][:100])
    (dest / "metrics.json").write_text("{")
    log = []
    assert runner.reexport(plan, spec.key, log.append) == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == good and log == [f"[study] re-exported {spec.key} to "
                                                                                 f"{dest}"]
    with pytest.raises(StudyInputError, match=r"holds no finished run to export default/cat/"):
        runner.reexport(plan, spec.key.replace("/mtl/", "/cat/"))


# ----------------------------------------------------------------------------------------------------------
# Trainers: one line; runs locked by another live process


def test_a_failed_trainer_is_one_line_with_its_last_error(tmp_path):
    log = tmp_path / "stdout.log"
    log.write_text("epoch 1/2 loss 3.1\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "ValueError: something broke\n")
    error = store.trainer_error("k/m/s/seed0", 1, log)
    assert type(error) is store.TrainingFailed
    assert str(error) == f"training k/m/s/seed0 failed (exit 1): ValueError: something broke; the whole log: {log}"
    log.write_text("python -m vfu_nb.study: error: runs/x/checkpoints/last.pt: not written: no space left on the "
                   "device (0 bytes free)\n")
    assert "failed (exit 2): runs/x/checkpoints/last.pt: not written: no space left" in str(
        store.trainer_error("k", 2, log))
    log.write_text("python -m vfu_nb.study: runs/x is being written by another process (pid 7 on h since t)\n")
    locked = store.trainer_error("k", store.LOCKED_EXIT, log)
    assert isinstance(locked, RunLockedError) and str(locked).startswith("runs/x is being written by another")


def test_only_this_attempts_lines_say_why_it_failed_and_whether_it_diverged(tmp_path):
    """stdout.log is appended to: an earlier attempt's divergence must not make a later failure a divergence."""
    log = tmp_path / "stdout.log"
    log.write_text("Traceback (most recent call last):\nvfu_nb.training.loop.NonFiniteLossError: non-finite total "
                   "loss (nan) at epoch 2, batch 7\n")
    old = store.trainer_error("k", 1, log)
    assert runner._diverged(old) and "epoch 2, batch 7" in str(old)
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("== resume\nepoch 3/9 loss 2.0\nKilled\n")
    later = store.trainer_error("k", 137, log, start)
    assert "NonFiniteLossError" not in str(later) and not runner._diverged(later)
    assert "failed (exit 137): Killed;" in str(later)
    assert not runner._diverged(ValueError("NonFiniteLossError"))           # only the trainer's own failure counts
    # a divergence whose traceback is followed by another line (a second study's trainer refused by the lock)
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("Traceback (most recent call last):\nvfu_nb.training.loop.NonFiniteLossError: non-finite total loss "
                "(inf) at epoch 4, batch 2\npython -m vfu_nb.study: runs/x is being written by another process\n")
    assert runner._diverged(store.trainer_error("k", 1, log, start))


def test_a_child_trainers_failure_is_read_from_its_own_attempt(plan, monkeypatch):
    """runner._train through a real child process: the log it appends to holds an earlier divergence."""
    spec = plan.tuning_specs()[0]
    run_dir = plan.runs_dir / spec.key
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").write_text("Traceback (most recent call last):\nvfu_nb.training.loop.NonFiniteLossError: "
                                        "non-finite total loss (nan) at epoch 2, batch 7\n")
    monkeypatch.setattr(runner, "ensure_data", lambda plan_, tags: None)
    monkeypatch.setattr(store, "trainer_command", lambda request: [
        sys.executable, "-c", "import sys; print('epoch 3/9'); sys.exit('ValueError: the tree moved')"])
    with pytest.raises(store.TrainingFailed, match="failed .exit 1.: ValueError: the tree moved") as err:
        runner._train(plan, spec, True)
    assert not runner._diverged(err.value)
    assert (run_dir / "stdout.log").read_text().count("NonFiniteLossError") == 1      # appended, not rewritten


def test_a_run_locked_by_another_process_is_skipped_then_waited_for(plan, monkeypatch):
    """The others are trained first (one line says so), then the study waits (one more line) and trains the run
    once the other process lets it go; never an error."""
    trained = []

    def fake_train(plan_, spec, subprocess_):
        trained.append(spec.key)
        export(plan_, spec, val=0.8 if spec.config["lr"] == 1e-3 else 0.5)

    monkeypatch.setattr(runner, "_train", fake_train)
    monkeypatch.setattr(runner, "export_run", lambda plan_, spec: None)
    monkeypatch.setattr(store.BusyRuns, "poll_s", 0.05)
    locked = plan.tuning_specs()[0]
    lock = RunLock(plan.runs_dir / locked.key).acquire()          # held as another process would hold it
    holder = RunLock.held_by(plan.runs_dir / locked.key)
    assert holder.startswith("pid ")
    log, errors = [], []

    def run():
        try:
            runner.train_pending(plan, jobs=2, log=log.append)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("[study] waiting") for line in log) and time.monotonic() < deadline:
        time.sleep(0.02)
    before = list(trained)          # everything that does not wait on mtl's tuning: its other setting, all of cat
    assert locked.key not in before and not any("/mtl/" in k and "lr0.001" in k for k in before)
    cat = [s.key for s in plan.all_specs({"cat": {"lr": 1e-3, "backbone": "vgg16_bn"}}) if s.model == "cat"]
    assert sorted(k for k in before if "/cat/" in k) == sorted(cat)
    lock.release()
    thread.join(30)
    assert not thread.is_alive() and errors == [] and plans.pending(plan) == []
    assert trained[len(before)] == locked.key
    notes = [line for line in log if line.startswith((f"[study] {locked.key}", "[study] waiting"))]
    assert notes[0] == (f"[study] {locked.key} is being trained by another process ({holder}): skipped for now, the "
                        f"other runs first")
    assert notes[1] == (f"[study] waiting for 1 run(s) that another process is training ({locked.key}: {holder}); "
                        f"stop that process to train them here")
    assert notes[2] == f"[study] {locked.key}: the other process let it go; training it here"
    assert sum(line.startswith("[study] waiting") for line in log) == 1


def test_a_run_that_another_process_locks_at_the_last_moment_is_skipped_not_an_error(plan, monkeypatch):
    calls = []

    def racing(plan_, spec, subprocess_):
        calls.append(spec.key)
        if len(calls) == 1:
            raise RunLockedError(f"{spec.key} is being written by another process (pid 1)")
        export(plan_, spec, val=0.5)

    monkeypatch.setattr(runner, "_train", racing)
    monkeypatch.setattr(runner, "export_run", lambda plan_, spec: None)
    log = []
    runner.train_and_export(plan, plan.tuning_specs()[0], True, log.append)
    assert log[-1] == (f"[study] skip  {calls[0]}: {calls[0]} is being written by another process (pid 1)")
    assert plans.exported(plan, calls[0]) is None
