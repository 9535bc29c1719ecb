"""vfu_nb.training.runs and .rundir: train-or-resume, refusing a different configuration, the lock of a killed
writer, finding runs, predictions over a split that reproduce metrics.json, one-image predictions and the
per-image landmark error."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.metrics import landmark_normalized_error
from vfu_nb.models import build_model
from vfu_nb.training import runs
from vfu_nb.training.config import TrainConfig
from vfu_nb.training.rundir import RunDir, RunLock, RunLockedError, precision, save_checkpoint

TINY = dict(batch_size=8, image_size=32, width=0.125, max_items=24, seed=0, num_workers=0)


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "mtl"
    runs.ensure_run(run_dir, "mtl", data_root=str(synth_root), epochs=1, **TINY)
    return run_dir


@pytest.fixture(scope="module")
def cat_run(synth_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "cat"
    runs.ensure_run(run_dir, "cat", data_root=str(synth_root), epochs=1, **TINY)
    return run_dir


# ----------------------------------------------------------------------------------------------------------
# Training


def test_finished_run_is_read_back_and_more_epochs_resume(synth_root, tmp_path):
    run_dir = tmp_path / "mtl"
    runs.ensure_run(run_dir, "mtl", data_root=str(synth_root), epochs=1, **TINY)
    first = json.loads((run_dir / "history.json").read_text())
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    again = runs.ensure_run(run_dir, "mtl", data_root=str(synth_root), epochs=1, **TINY)
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp            # not retrained
    assert again["epochs_run"] == 1
    more = runs.ensure_run(run_dir, "mtl", data_root=str(synth_root), epochs=2, **TINY)
    assert more["epochs_run"] == 2
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epochs"][0]["test"] == first["epochs"][0]["test"]          # epoch 1 kept, epoch 2 added
    assert RunDir(run_dir).is_finished(2) and not RunDir(run_dir).is_finished(3)


def test_a_different_configuration_is_refused(tiny_run, synth_root):
    with pytest.raises(runs.RunMismatchError, match="image_size"):
        runs.ensure_run(tiny_run, "mtl", data_root=str(synth_root), epochs=1, **{**TINY, "image_size": 64})
    with pytest.raises(runs.RunMismatchError, match="model"):
        runs.ensure_run(tiny_run, "cat", data_root=str(synth_root), epochs=1, **TINY)


def test_train_settings_are_the_trainconfig_fields_of_a_namespace():
    namespace = {"model": "cat", "epochs": 3, "lr_schedule": "cosine", "out_dir": "x", "run_dir": "y",
                 "resume": False, "nb": object(), "progress": False}
    assert runs.train_settings(namespace) == {"model": "cat", "epochs": 3, "lr_schedule": "cosine",
                                              "progress": False}


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    """A live holder is named in the refusal (pid, since when); once it is killed (SIGKILL: nothing cleans up) the
    lock file it leaves is taken over, and releasing removes it."""
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from vfu_nb.training.rundir import RunLock; "
         f"lock = RunLock({str(run.path)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run.held_by().startswith(f"pid {holder.pid} on ") and " since " in run.held_by()
        with pytest.raises(RunLockedError, match=rf"being written by another process \(pid {holder.pid} on "):
            run.lock().acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert run.lock_file.exists() and run.held_by() is None                  # left behind, held by nobody
    with run.lock():
        assert run.lock_file.read_text().startswith(f"pid {os.getpid()} on ")
        assert RunLock.held_by(run.path).startswith(f"pid {os.getpid()} on ")
    assert not run.lock_file.exists()


# ----------------------------------------------------------------------------------------------------------
# Finding runs


def _as_pipeline_run(source, root, profile, model):
    target = root / "runs" / profile / f"02_train_{model}" / "run"
    shutil.copytree(source, target)
    return target


def test_locate_runs_given_then_make_run_then_smoke(tiny_run, cat_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "PIPELINE_RUN", str(tmp_path / "runs" / "{profile}" / "02_train_{model}" / "run"))
    smoke = []
    monkeypatch.setattr(runs, "smoke_run", lambda model: smoke.append(model) or {"mtl": tiny_run, "cat": cat_run}[model])

    assert runs.locate_runs({"mtl": str(tiny_run), "cat": str(cat_run)}) == {"mtl": tiny_run, "cat": cat_run}
    assert capsys.readouterr().out.startswith(f"Runs: MTL {tiny_run}; CAT {cat_run}")

    # nothing under runs/default: smoke runs, said in the first line
    assert runs.locate_runs({"mtl": "", "cat": ""}) == {"mtl": tiny_run, "cat": cat_run}
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SMOKE RUNS:") and "MTL" in first and "CAT" in first and smoke == ["mtl", "cat"]

    # a finished `make run` MTL is shown; CAT still falls back
    default_mtl = _as_pipeline_run(tiny_run, tmp_path, "default", "mtl")
    smoke.clear()
    assert runs.locate_runs({"mtl": "", "cat": ""}) == {"mtl": default_mtl, "cat": cat_run}
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SMOKE RUNS:") and smoke == ["cat"]

    # a `make run` run that no longer fits the model code is not shown
    default_cat = _as_pipeline_run(cat_run, tmp_path, "default", "cat")
    assert runs.locate_runs({"mtl": "", "cat": ""}) == {"mtl": default_mtl, "cat": default_cat}
    assert capsys.readouterr().out.startswith("Runs: MTL")
    config = json.loads((default_cat / "config.json").read_text())
    (default_cat / "config.json").write_text(json.dumps({**config, "width": 0.25}))
    runs.locate_runs({"mtl": "", "cat": ""})
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SMOKE RUNS:") and "make clean-runs" in first      # and says how to fix it

    with pytest.raises(FileNotFoundError, match="no finished run"):
        runs.locate_runs({"mtl": str(tmp_path / "nothing")})


def test_find_runs_and_load_model(tiny_run, cat_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path / "a" / "mtl_seed0")
    shutil.copytree(cat_run, tmp_path / "b" / "cat_seed0")
    assert runs.find_runs(tmp_path) == {"mtl": tmp_path / "a" / "mtl_seed0", "cat": tmp_path / "b" / "cat_seed0"}
    model = runs.load_model(tiny_run)
    assert not model.training and model.name == "mtl" and model.checkpoint_epoch == 1
    (tmp_path / "a" / "mtl_seed0" / "checkpoints" / "best.pt").unlink()            # falls back to last.pt
    assert runs.load_model(tmp_path / "a" / "mtl_seed0").checkpoint_epoch == 1
    with pytest.raises(FileNotFoundError, match="no config.json"):
        runs.load_model(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------------------
# Predictions over a split


def test_predictions_of_best_checkpoint_reproduce_the_stored_test_metrics_exactly(tiny_run):
    run = runs.load_run(tiny_run)
    pred = runs.predict(tiny_run, keep_maps=[0, 3])
    assert pred.epoch == run.best_epoch and pred.model == "mtl"
    assert len(pred.category) == 24 and pred.category_logits.shape[0] == 24
    assert pred.landmarks_pred.shape == (24, 8, 2)
    assert runs.metrics_tolerance(tiny_run, "cpu") == 0.0                      # CPU, fp32: exact
    again = pred.metrics()
    for key in ("category_top1", "category_top3", "attr_top3_texture", "attr_top3_all_grouped", "landmark_ne_mean"):
        assert again[key] == run.metrics["test"][key], key
    assert set(pred.maps) == {0, 3}
    assert pred.maps[0]["heatmaps"].shape == (8, 32, 32)
    assert pred.maps[0]["attention"].shape[1:] == (4, 4)
    assert np.allclose(pred.category_prob, np.exp(pred.category_logits)[np.arange(24), pred.category]
                       / np.exp(pred.category_logits).sum(1), atol=1e-6)
    images = runs.images_of(tiny_run, [0, 3])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert runs.data_description(tiny_run).startswith("the synthetic benchmark (200 images, 30 test, max 24")


def test_precision_comes_from_the_resolved_block(tiny_run, tmp_path):
    assert precision({}) == {"bf16": False, "channels_last": False}           # absent: fp32
    resolved = {"resolved": {"bf16": True, "channels_last": True}}
    assert precision(resolved) == {"bf16": True, "channels_last": True}
    run_dir = shutil.copytree(tiny_run, tmp_path / "bf16")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, **resolved}))
    assert runs.metrics_tolerance(run_dir, "cpu") == 0.02
    pred = runs.predict(run_dir)                                                # bf16 autocast, channels_last
    stored = runs.load_run(run_dir).metrics["test"]
    assert abs(pred.metrics()["category_top3"] - stored["category_top3"]) <= 0.1   # 24 images: a few flips at most


def test_landmark_errors_are_the_metric_of_each_image_alone():
    gt = np.zeros((3, 8, 2))
    pred = np.zeros((3, 8, 2))
    pred[0, :, 0] = 0.3                      # every landmark 0.3 off
    pred[1, 0] = [0.3, 0.4]                  # slot 0 off by 0.5, slot 1 off by 1.0 but occluded
    pred[1, 1] = [1.0, 0.0]
    vis = np.zeros((3, 8), dtype=int)
    vis[1, 1:] = 1
    vis[2, :] = 2                            # nothing visible
    err = runs.landmark_errors(pred, gt, vis)
    assert err[0] == pytest.approx(0.3) and err[1] == pytest.approx(0.5) and math.isnan(err[2])
    assert err[1] == landmark_normalized_error(pred[1:2], gt[1:2], vis[1:2] == 0)["mean"]
    assert np.isnan(runs.landmark_errors(None, gt, vis)).all()


# ----------------------------------------------------------------------------------------------------------
# One image


@pytest.fixture(scope="module")
def ann(synth_root):
    return DeepFashionC(synth_root, "train", image_size=32, progress=False).annotations


@pytest.fixture(scope="module")
def tiny_models(ann):
    torch.manual_seed(0)
    return {name: build_model(name, len(ann.category_names), len(ann.attribute_names), image_size=32, width=0.125)
            for name in ("mtl", "cat")}


@pytest.fixture(scope="module")
def image(synth_root):
    return DeepFashionC(synth_root, "test", image_size=32, progress=False)[0]["image"]


def test_predict_one_restores_training_mode_and_needs_no_grad(tiny_models, image):
    mtl = tiny_models["mtl"]
    mtl.train()
    pred = runs.predict_one(mtl, image)
    assert mtl.training
    mtl.eval()
    assert pred.landmarks.shape == (8, 2) and pred.heatmaps.shape == (8, 32, 32)
    assert pred.attention.shape == (32, 32) and pred.feature_energy.shape == (32, 32)
    assert np.isclose(pred.category_probs.sum(), 1, atol=1e-5)
    assert ((pred.landmarks > 0) & (pred.landmarks < 1)).all()
    assert np.array_equal(pred.heatmap(), pred.heatmaps.max(axis=0)) and np.array_equal(pred.heatmap(2),
                                                                                         pred.heatmaps[2])
    cat = runs.predict_one(tiny_models["cat"], image[None])
    assert cat.landmarks is None and cat.heatmaps is None and cat.attention is None and cat.heatmap() is None
    with pytest.raises(ValueError, match="one image"):
        runs.predict_one(mtl, torch.zeros(2, 3, 32, 32))


def test_predict_one_of_a_loaded_run_equals_the_original_model(tiny_models, image, ann, synth_root, tmp_path):
    model = tiny_models["mtl"]
    run = tmp_path / "mtl_seed0"
    (run / "checkpoints").mkdir(parents=True)
    config = TrainConfig(model="mtl", image_size=32, width=0.125, run_dir=str(run), data_root=str(synth_root))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    save_checkpoint(run / "checkpoints" / "best.pt",
                    {"model": model.state_dict(), "num_categories": len(ann.category_names),
                     "num_attributes": len(ann.attribute_names), "model_name": "mtl", "epoch": 1})
    loaded = runs.load_model(run)
    assert not loaded.training and loaded.image_size == 32
    a, b = runs.predict_one(model, image), runs.predict_one(loaded, image)
    assert np.allclose(a.category_probs, b.category_probs) and np.allclose(a.heatmaps, b.heatmaps)


def test_predict_refuses_a_tree_whose_vocabulary_changed_since_training(tiny_run):
    """A regenerated tree with other attributes: one error naming the run and the tree, not a shape mismatch."""
    config = runs.load_run(tiny_run).config
    model = runs.load_model(tiny_run)
    categories, attributes = model.config.num_categories, model.config.num_attributes
    stale = build_model("mtl", categories, attributes - 11, 8, config["image_size"], config["width"], pretrained=None)
    with pytest.raises(ValueError, match=rf"mtl was trained for {categories} categories and {attributes - 11} "
                                         rf"attributes, but .* now has {categories} and {attributes}: the tree changed"):
        runs.predict(tiny_run, model=stale)


def test_a_run_whose_best_epoch_is_its_last_is_flagged_not_converged():
    assert runs.selection_note({"best_epoch": 7, "epochs_run": 11, "early_stopped": True}) == "best val epoch 7 of 11"
    assert runs.selection_note({"best_epoch": 9, "epochs_run": 10, "early_stopped": False}) == "best val epoch 9 of 10"
    assert runs.selection_note({"best_epoch": 10, "epochs_run": 10, "early_stopped": False}) == \
        "best val epoch 10 of 10, not converged"
    assert not runs.converged({"best_epoch": 10, "epochs_run": 10}) and runs.converged({"best_epoch": 3, "epochs_run": 10})
