"""tools/gpu_check.py on the CPU: the dry run end to end, the stage guard, and the commands of the CUDA stages."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vfu_nb.data.annotations import load_annotations

REPO = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gc = load_gpu_check()


def drive(out: Path, work: Path, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "GOMP_SPINCOUNT": "1000", "OMP_NUM_THREADS": "1", "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--dry-run", "--work", str(work), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    result = drive(out, work)
    return result, out


@pytest.mark.slow
def test_dry_run_records_every_stage_and_checks_training_resume_and_predict(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    statuses = {s["stage"]: s["status"] for s in summary["stages"]}
    assert list(statuses) == [s.name for s in gc.STAGES]
    assert {k for k, v in statuses.items() if v == "ok"} == {"1_environment", "2_synthetic_tree",
                                                             "6_train_resume_predict"}
    assert all(v == "skipped: no CUDA" for k, v in statuses.items()
               if k not in ("1_environment", "2_synthetic_tree", "6_train_resume_predict"))
    assert summary["passed"] is True and summary["seconds"] < summary["budget_s"]
    for name in statuses:                                        # one JSON per stage, the status in it
        assert json.loads((out / f"{name}.json").read_text())["status"] == statuses[name]

    env = json.loads((out / "1_environment.json").read_text())
    assert env["cuda_available"] is False and env["torch"] and env["cpu_count"] >= 1 and env["devices"] == []
    tree = json.loads((out / "2_synthetic_tree.json").read_text())
    assert tree["images"] == 86 and tree["splits"] == {"train": 61, "val": 13, "test": 12}

    train = json.loads((out / "6_train_resume_predict.json").read_text())
    assert train["checks"] == {k: True for k in train["checks"]} and len(train["checks"]) == 9
    assert train["train_images"] == 61 and train["steps_after_2_epochs"] == 16      # 7 x 8 + 5: 8 steps per epoch
    assert train["resolved"]["bf16"] is True and train["resolved"]["channels_last"] is True
    assert train["predict"]["precision"] == {"bf16": True, "channels_last": True}   # as the trainer evaluated
    compared = train["predict"]["predict"]["metrics"]
    assert set(compared) == set(gc.COMPARED)
    assert all(math.isfinite(m["diff"]) for m in compared.values() if "diff" in m)
    metrics = json.loads((out / "runs" / "mtl" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and train["metrics_test"] == metrics["test"]
    assert "data path batch loader" in (out / "runs" / "mtl" / "train.log").read_text()


@pytest.mark.slow
def test_a_failed_stage_is_recorded_and_the_stages_after_it_still_run(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tree").write_text("a file where the tree folder goes: stage 2 cannot replace it")
    result = drive(tmp_path / "out", work, "--only", "2_synthetic_tree", "6_train_resume_predict")
    assert result.returncode == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    statuses = {s["stage"]: s for s in summary["stages"]}
    assert list(statuses) == ["1_environment", "2_synthetic_tree", "6_train_resume_predict"]
    assert statuses["2_synthetic_tree"]["status"] == "failed" and "NotADirectoryError" in \
        statuses["2_synthetic_tree"]["error"]
    assert statuses["6_train_resume_predict"]["status"].startswith("skipped") and \
        "stage 2" in statuses["6_train_resume_predict"]["status"]
    assert summary["passed"] is False
    stage2 = json.loads((tmp_path / "out" / "2_synthetic_tree.json").read_text())
    assert "Traceback" in stage2["traceback"]


@pytest.mark.slow
def test_the_guard_kills_the_whole_process_group(tmp_path):
    log = tmp_path / "stage.log"
    marker = tmp_path / "survivor"
    t0 = time.perf_counter()
    # a child that starts a grandchild; both must be gone after the guard
    r = gc.run_command(["bash", "-c", f"(sleep 3; touch {marker}) & sleep 30"], log, timeout=1)
    assert r["timed_out"] and r["rc"] < 0 and time.perf_counter() - t0 < 10
    time.sleep(3.5)
    assert not marker.exists()
    ok = gc.run_command([sys.executable, "-c", "print('hello')"], log, timeout=30)
    assert ok == {**ok, "rc": 0, "timed_out": False} and "hello" in log.read_text()


def test_the_cuda_stage_commands_parse_with_the_current_clis(tmp_path):
    """The bench, train and torchrun command lines of the stages the dry run skips are valid options today."""
    from vfu_nb.training.config import parse_config

    bench = gc.load_bench()

    ctx = gc.Context(argparse.Namespace(dry_run=False, out=str(tmp_path), work=str(tmp_path), stage="4a"))
    parser = bench.build_parser()
    for inputs in ("memmap", "random", "loader"):
        for mode in (None, "compile", "cuda-graphs"):
            args = parser.parse_args(gc.bench_train_argv(ctx, "cat", (8, 64), inputs, compile_mode=mode,
                                                         json_path=tmp_path / "b.json"))
            assert (args.model, args.image_size, args.width, args.batch_size, args.amp) == ("cat", 224, 1.0,
                                                                                           [8, 64], "bf16")
            assert args.batch_loader == (inputs == "loader") and args.no_cache == (inputs != "memmap")
            assert args.compile == (mode == "compile") and args.cuda_graphs == (mode == "cuda-graphs")
    config = parse_config(ctx.train_args(tmp_path / "r", **{"--epochs": 3}) + ["--compile"])
    assert (config.image_size, config.width, config.batch_size, config.epochs, config.loader) == (224, 1.0, 48, 3,
                                                                                                  "batch")
    assert config.bf16 is True and config.channels_last is True and config.compile is True
    assert 1400 % config.batch_size != 0                        # the 2,000-image tree's train split: a partial batch


@pytest.mark.slow
def test_sync_audit_runs_the_trainer_step_on_the_cpu(dry_run, tmp_path):
    """The audit's code (without the CUDA debug mode) on the dry run's tree: catches a changed trainer API."""
    _, out = dry_run
    work = Path(json.loads((out / "summary.json").read_text())["work"])
    ctx = gc.Context(argparse.Namespace(dry_run=True, out=str(tmp_path), work=str(work), stage="3_sync_audit"))
    r = gc.audit_model(ctx, "cat", steps_warmup=1)
    assert r["error_mode"] == "not run: no CUDA" and r["step_sync_sites"] == [] and r["loader_sync_sites"] == []
    assert len(r["losses"]) == 4 and all(math.isfinite(v) for v in r["losses"]) and r["losses"][2] == 0.0


@pytest.mark.slow
def test_bench_stages_read_the_bench_results_on_the_cpu(dry_run, tmp_path):
    """The bench stages' code on the CPU at the dry-run sizes: the keys they read from tools/bench.py still exist."""
    _, out = dry_run
    work = str(json.loads((out / "summary.json").read_text())["work"])
    ctx = gc.Context(argparse.Namespace(dry_run=True, out=str(tmp_path), work=work, stage="4a_bench_train_eager"))
    gc.run_bench(ctx, [("cat", (2,), "loader")], None)
    (row,) = ctx.result["rows"]
    attributes = len(load_annotations(Path(work) / "tree").attribute_names)      # the tree's vocabulary
    assert (row["model"], row["batch_size"], row["inputs"], row["attributes"]) == ("cat", 2, "loader", attributes)
    assert row["img_s"] > 0 and row["batch_loader_img_s"] > 0 and row["batch_loader_vs_random"] > 0
    assert json.loads((tmp_path / "bench" / "4a_bench_train_eager_cat_b2_loader.json").read_text())["runs"]
    ctx = gc.Context(argparse.Namespace(dry_run=True, out=str(tmp_path), work=work, stage="5_bench_data"))
    gc.run_bench_data(ctx)
    assert ctx.result["paths"]["batch loader + augmentation (cpu)"] > 0
    assert ctx.result["batch_loader_vs_cache_item_0_workers"] > 0
