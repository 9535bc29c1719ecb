"""vfu_nb.runs: train-or-resume, refusing a different configuration, predictions that reproduce metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from train_helpers import synth_root  # noqa: F401 (fixture)
from vfu_nb import runs

TINY = dict(batch_size=8, image_size=32, width=0.125, max_items=24, seed=0, num_workers=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny runs gain nothing from 2 threads, and spinning OpenMP threads crawl when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("runs") / "mtl"
    runs.ensure_run(run_dir, "mtl", data_root=str(synth_root), epochs=1, **TINY)
    return run_dir


def test_finished_run_is_read_back_and_more_epochs_resume(tiny_run, synth_root):  # noqa: F811
    first = json.loads((tiny_run / "history.json").read_text())
    stamp = (tiny_run / "metrics.json").stat().st_mtime_ns
    again = runs.ensure_run(tiny_run, "mtl", data_root=str(synth_root), epochs=1, **TINY)
    assert (tiny_run / "metrics.json").stat().st_mtime_ns == stamp            # not retrained
    assert again["epochs_run"] == 1
    more = runs.ensure_run(tiny_run, "mtl", data_root=str(synth_root), epochs=2, **TINY)
    assert more["epochs_run"] == 2
    history = json.loads((tiny_run / "history.json").read_text())
    assert history["epochs"][0]["test"] == first["epochs"][0]["test"]          # epoch 1 kept, epoch 2 added
    assert runs.is_finished(tiny_run, 2) and not runs.is_finished(tiny_run, 3)


def test_a_different_configuration_is_refused(tiny_run, synth_root):  # noqa: F811
    with pytest.raises(runs.RunMismatchError, match="image_size"):
        runs.ensure_run(tiny_run, "mtl", data_root=str(synth_root), epochs=2, **{**TINY, "image_size": 64})
    with pytest.raises(runs.RunMismatchError, match="model"):
        runs.ensure_run(tiny_run, "cat", data_root=str(synth_root), epochs=2, **TINY)


def test_predictions_of_best_checkpoint_reproduce_the_stored_test_metrics(tiny_run):
    run = runs.load_run(tiny_run)
    pred = runs.predict(tiny_run, keep_maps=[0, 3])
    assert pred.epoch == run.best_epoch and pred.model == "mtl"
    assert len(pred.category) == 24 and pred.category_logits.shape[0] == 24
    assert pred.landmarks_pred.shape == (24, 8, 2)
    again = pred.metrics()
    for key in ("category_top1", "category_top3", "attr_top3_texture", "attr_top3_all_grouped", "landmark_ne_mean"):
        assert math.isclose(again[key], run.metrics["test"][key], abs_tol=1e-6), key
    assert set(pred.maps) == {0, 3}
    assert pred.maps[0]["heatmaps"].shape == (8, 32, 32)
    assert pred.maps[0]["attention"].shape[1:] == (4, 4)
    assert np.allclose(pred.category_prob, np.exp(pred.category_logits)[np.arange(24), pred.category]
                       / np.exp(pred.category_logits).sum(1), atol=1e-6)
    images = runs.images_of(tiny_run, [0, 3])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert runs.data_description(tiny_run).startswith("the synthetic benchmark (200 images")


def test_resolve_run_uses_a_given_run_or_trains_a_fallback(tiny_run, synth_root, tmp_path):  # noqa: F811
    assert runs.resolve_run(str(tiny_run), "mtl", tmp_path / "unused") == tiny_run
    assert not (tmp_path / "unused").exists()
    with pytest.raises(FileNotFoundError, match="no finished run"):
        runs.resolve_run(str(tmp_path / "nothing"), "mtl", tmp_path / "unused")
    out = runs.resolve_run("", "cat", tmp_path / "fallback", data_root=str(synth_root), epochs=1, **TINY)
    assert out == tmp_path / "fallback" and runs.load_run(out).metrics["model"] == "cat"
