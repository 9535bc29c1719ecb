"""Case selection (vfu_nb.training.runs.select_cases), map reductions (vfu_nb.maps) and the figures of
vfu_nb.plots.attention (per-image error: test_runs.py)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vfu_nb.maps import attention_strength, feature_energy, heatmap_strength  # noqa: E402
from vfu_nb.plots import attention  # noqa: E402
from vfu_nb.training.runs import select_cases  # noqa: E402


def predictions(logits, category, pred=None, gt=None, vis=None, maps=None):
    logits = np.asarray(logits, dtype=float)
    z = np.exp(logits - logits.max(1, keepdims=True))
    prob = (z / z.sum(1, keepdims=True))[np.arange(len(logits)), category]
    n = len(category)
    return SimpleNamespace(category_logits=logits, category=np.asarray(category), category_prob=prob,
                           landmarks_pred=pred, landmarks=gt if gt is not None else np.zeros((n, 8, 2)),
                           visibility=vis if vis is not None else np.zeros((n, 8), dtype=int), maps=maps or {})


def test_select_cases_by_confidence_and_by_landmark_error():
    logits = [[5, 0], [0, 5], [1, 0], [0, 0]]      # p(true): 0.993, 0.993 (true=1), 0.731, 0.5
    p = predictions(logits, [0, 1, 0, 0])
    cases = select_cases(p, "category_confidence", 2)
    assert cases["best"] == [0, 1] and cases["worst"] == [3, 2]
    gt = np.zeros((4, 8, 2))
    pred = np.zeros((4, 8, 2))
    pred[:, :, 0] = np.array([0.2, 0.05, 0.4, 0.0])[:, None]
    vis = np.zeros((4, 8), dtype=int)
    vis[3] = 1                               # image 3 has no visible landmark: left out
    cases = select_cases(predictions(logits, [0, 1, 0, 0], pred, gt, vis), "landmark_error", 5)
    assert cases["best"] == [1, 0, 2] and cases["worst"] == [2, 0, 1]
    with pytest.raises(ValueError):
        select_cases(p, "loss")


def test_map_reductions():
    heat = np.stack([np.full((4, 4), -1.0), np.full((4, 4), 0.5), np.full((4, 4), 2.0)])
    assert heatmap_strength(heat).tolist() == np.ones((4, 4)).tolist()
    att = np.arange(2 * 2 * 3, dtype=float).reshape(3, 2, 2)
    assert np.allclose(attention_strength(att), att.mean(0))
    windows = np.random.default_rng(0).random((8, 2, 2))
    assert np.allclose(attention_strength(windows), windows.max(0))
    e = feature_energy(np.stack([np.array([[1.0, -3.0]]), np.array([[1.0, 1.0]])]))
    assert e.tolist() == [[0.5, 1.0]]


def test_case_figure_has_a_row_per_image_and_three_panels_with_maps():
    rng = np.random.default_rng(0)
    maps = {i: {"heatmaps": rng.random((8, 32, 32)), "attention": rng.standard_normal((16, 4, 4)),
                "features": rng.random((16, 4, 4))} for i in range(2)}
    p = predictions(rng.standard_normal((2, 3)), [0, 2], rng.random((2, 8, 2)), rng.random((2, 8, 2)),
                    np.zeros((2, 8), dtype=int), maps)
    images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    fig = attention.plot_cases(p, images, [0, 1], ["a", "b", "c"], title="t")
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title().startswith("a\npred")
    assert "attention" in fig.axes[2].get_title()
    cat = predictions(rng.standard_normal((2, 3)), [0, 2], maps={i: {"features": rng.random((16, 4, 4))}
                                                                    for i in range(2)})
    fig = attention.side_by_side({"mtl": p, "cat": cat}, images, [0, 1], ["a", "b", "c"])
    assert len(fig.axes) == 6
    assert fig.axes[2].get_title().startswith("CAT feature energy")
    plt.close("all")


def test_case_points_are_the_visible_landmarks_and_their_predictions_in_slot_colours():
    from matplotlib.colors import to_rgba

    from vfu_nb.conventions import LANDMARK_COLORS

    rng = np.random.default_rng(1)
    gt, pred = rng.random((1, 8, 2)), rng.random((1, 8, 2))
    vis = np.zeros((1, 8), dtype=int)
    vis[0, [2, 5]] = (1, 2)                                  # occluded and absent: not drawn
    p = predictions(rng.standard_normal((1, 3)), [0], pred, gt, vis, {0: {"heatmaps": rng.random((8, 32, 32))}})
    fig = attention.plot_cases(p, rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), [0], ["a", "b", "c"])
    lines = fig.axes[0].get_lines()
    drawn = {m: [ln for ln in lines if ln.get_marker() == m and np.isfinite(ln.get_xydata()).all()] for m in "oP"}
    assert len(drawn["o"]) == len(drawn["P"]) == 6
    shown = [s for s in range(8) if vis[0, s] == 0]
    for s, dot, mark in zip(shown, drawn["o"], drawn["P"]):
        assert np.allclose(dot.get_xydata(), gt[0, s] * 32 - 0.5)
        assert np.allclose(mark.get_xydata(), pred[0, s] * 32 - 0.5)
        assert to_rgba(dot.get_color()) == to_rgba(mark.get_color()) == to_rgba(LANDMARK_COLORS[s])
    plt.close("all")
