"""vfu_nb.history and vfu_nb.plots.curves: values computed from hand-made histories (moving average, epoch selection,
Table 3.1) and the figures drawn from them."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vfu_nb import history  # noqa: E402
from vfu_nb.conventions import baseline_label, reference_baselines  # noqa: E402
from vfu_nb.plots import curves  # noqa: E402

TYPES = ("texture", "fabric", "shape", "part", "style")


def make_history(val_top3, test_top3, test_texture=None, landmark=True, batches_per_epoch=3, seed=0):
    """A history.json-shaped dict: per-batch losses and per-epoch val/test metrics."""
    rng = np.random.default_rng(seed)
    n = len(val_top3)
    steps = n * batches_per_epoch
    batches = {"epoch": [], "batch": [], "step": [], "category": [], "attribute": [], "landmark": [], "total": []}
    for s in range(steps):
        e, b = s // batches_per_epoch + 1, s % batches_per_epoch + 1
        batches["epoch"].append(e)
        batches["batch"].append(b)
        batches["step"].append(s + 1)
        batches["category"].append(float(3.0 - 0.1 * s + 0.01 * rng.standard_normal()))
        batches["attribute"].append(float(0.5 - 0.01 * s))
        batches["landmark"].append(float(0.002 - 0.0001 * s) if landmark else 0.0)
        batches["total"].append(batches["category"][-1] + 20 * batches["attribute"][-1])
    epochs = []
    for i in range(n):
        def split(top3, scale):
            m = {"category_top1": top3 / 2, "category_top3": top3, "category_top5": min(1.0, top3 + 0.1),
                 "attr_top3_all_grouped": 0.3 + 0.01 * i * scale, "landmark_ne_mean": (0.2 - 0.01 * i) if landmark
                 else None}
            for j, t in enumerate(TYPES):
                m[f"attr_top3_{t}"] = 0.1 * (j + 1) + 0.02 * i * scale
                m[f"attr_map_{t}"] = 0.05 * (j + 1) + 0.01 * i * scale
            m["attr_map_all"] = 0.2 + 0.03 * i * scale
            if test_texture is not None and scale == 1:
                m["attr_top3_texture"] = test_texture[i]
            return m
        epochs.append({"epoch": i + 1, "lr": 1e-4, "train": {"category": 1.0}, "val": split(val_top3[i], 2),
                       "test": split(test_top3[i], 1), "seconds": 1.0, "images_per_s": 10.0})
    return {"batches": batches, "epochs": epochs}


def test_moving_average_is_a_trailing_mean_skipping_nans():
    assert history.moving_average([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert history.moving_average([1, 2, 3, 4], 10).tolist() == [1.0, 1.5, 2.0, 2.5]
    out = history.moving_average([np.nan, 2, np.nan, 4], 2)
    assert math.isnan(out[0]) and out[1:].tolist() == [2.0, 2.0, 4.0]
    with pytest.raises(ValueError):
        history.moving_average([1.0], 0)


def test_batch_frame_places_batches_on_the_epoch_axis():
    frame = history.batch_frame(make_history([0.1, 0.2], [0.1, 0.2], batches_per_epoch=4))
    assert frame["epoch_pos"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    assert list(frame.columns[:7]) == ["step", "epoch", "batch", "category", "attribute", "landmark", "total"]
    assert history.default_window(make_history([0.1] * 2, [0.1] * 2, batches_per_epoch=20)) == 4


def test_epoch_selection_on_val_versus_best_test():
    # val peaks at epoch 2 (first of two equal maxima); test peaks at epoch 3
    h = make_history([0.2, 0.5, 0.5, 0.4], [0.25, 0.45, 0.6, 0.3])
    assert history.best_val_epoch(h) == 2
    assert history.best_epoch_value(h, "category_top3", "test", "val") == (2, 0.45)
    assert history.best_epoch_value(h, "category_top3", "test", "best") == (3, 0.6)
    assert history.best_epoch_value(h, "landmark_ne_mean", "test", "best", higher_is_better=False) == \
        (4, pytest.approx(0.17))
    epoch, value = history.best_epoch_value(h, "no_such_metric")
    assert epoch is None and math.isnan(value)
    with pytest.raises(ValueError):
        history.best_epoch_value(h, "category_top3", select="last")


def test_null_metrics_read_as_nan():
    h = make_history([0.2, 0.3], [0.2, 0.3], landmark=False)
    assert history.epoch_frame(h, "test")["landmark_ne_mean"].isna().all()
    assert history.run_summary(h)["test"]["landmark_ne_mean"] is None


def test_table_3_1_values():
    texture = [0.30, 0.50, 0.70]                     # best test texture at epoch 3; best val epoch is 2
    h = make_history([0.2, 0.6, 0.4], [0.2, 0.5, 0.3], test_texture=texture)
    table = history.table_3_1(h)
    assert list(table.index) == ["texture", "fabric", "shape", "part", "style", "all grouped"]
    assert table.at["texture", "ours: test @ best val epoch"] == 0.50
    assert table.at["texture", "ours: best test epoch"] == 0.70
    assert table.at["texture", "best test epoch"] == 3
    assert table.at["fabric", "ours: test @ best val epoch"] == pytest.approx(0.2 + 0.02)
    assert table.at["style", "thesis MTL (DeepFashion-C)"] == 0.3169
    assert table.at["texture", "thesis MTL (DeepFashion-C)"] == 0.5298
    assert math.isnan(table.at["all grouped", "thesis MTL (DeepFashion-C)"])
    assert "thesis MTL (DeepFashion-C)" not in history.table_3_1(h, published=None)


def test_run_summary_matches_the_selected_epoch_and_is_json_clean():
    h = make_history([0.2, 0.6, 0.4], [0.2, 0.5, 0.3])
    s = history.run_summary(h)
    assert s["epochs"] == 3 and s["batches"] == 9 and s["best_val_epoch"] == 2
    assert s["test"]["category_top3"] == 0.5 and s["val"]["category_top3"] == 0.6
    json.dumps(s, allow_nan=False)


def test_load_history_from_a_run_directory(tmp_path):
    h = make_history([0.2], [0.3])
    (tmp_path / "history.json").write_text(json.dumps(h))
    assert history.load_history(tmp_path) == h
    assert history.load_history(tmp_path / "history.json") == h


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_batch_loss_figure_draws_raw_and_moving_average():
    h = make_history([0.2, 0.3], [0.2, 0.3], batches_per_epoch=5)
    fig = curves.plot_batch_loss(h, "category", window=2, model="mtl")
    ax = fig.axes[0]
    raw = _line(ax, "per batch").get_ydata()
    smooth = _line(ax, "moving average (2 batches)").get_ydata()
    assert np.allclose(raw, h["batches"]["category"])
    assert np.allclose(smooth, history.moving_average(h["batches"]["category"], 2))
    assert "Fig. 3.3" in ax.get_title() and ax.get_xlim() == (0.0, 2.0)
    with pytest.raises(ValueError):
        curves.plot_batch_loss(h, "nonsense")
    plt.close("all")


def test_landmark_loss_figure_of_a_model_without_landmarks_says_so():
    h = make_history([0.2, 0.3], [0.2, 0.3], landmark=False)
    ax = curves.plot_batch_loss(h, "landmark", model="cat").axes[0]
    assert any("no landmark loss" in t.get_text() for t in ax.texts)
    plt.close("all")


def test_epoch_figures_plot_the_history_values():
    h = make_history([0.2, 0.6, 0.4], [0.25, 0.5, 0.3])
    ax = curves.plot_category_accuracy(h, model="mtl").axes[0]
    assert _line(ax, "test").get_ydata().tolist() == [0.25, 0.5, 0.3]
    assert _line(ax, "val").get_ydata().tolist() == [0.2, 0.6, 0.4]
    assert any("best val epoch 2" in t.get_text() for t in ax.texts)
    ax = curves.plot_attribute_recall(h, model="mtl").axes[0]
    assert {line.get_label() for line in ax.get_lines()} >= set(TYPES) | {"all (grouped)"}
    assert np.allclose(_line(ax, "shape").get_ydata(), [0.3, 0.32, 0.34])
    ax = curves.plot_landmark_error(h, model="mtl").axes[0]
    assert np.allclose(_line(ax, "test").get_ydata(), [0.2, 0.19, 0.18])
    plt.close("all")


# ----------------------------------------------------------------------------------------------------------
# Attribute mAP and baselines as reference lines

#: Hand-made baselines in the shape of vfu_nb.baselines.compute_baselines (keys a baseline lacks are absent).
BASELINES = {
    "chance": {"n_images": 600.0, "category_top3": 0.06, "attr_top3_all_grouped": 0.29, "attr_map_all": 0.12},
    "class_prior": {"n_images": 600.0, "category_top3": 0.30},
    "attribute_prior_given_category": {"n_images": 600.0, "attr_top3_all_grouped": 0.68, "attr_map_all": 0.41,
                                       **{f"attr_top3_{t}": 0.4 + 0.01 * j for j, t in enumerate(TYPES)},
                                       **{f"attr_map_{t}": 0.2 + 0.01 * j for j, t in enumerate(TYPES)},
                                       "attr_map_style": float("nan")},
    "geometry_knn": {"n_images": 600.0, "knn_k": 45.0, "category_top3": 0.55, "attr_map_all": 0.27},
    "mean_landmarks": {"n_images": 600.0, "landmark_ne_mean": 0.175},
}


def _references(ax):
    """{label: y} of the horizontal reference lines of an axis."""
    return {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()
            if len(set(line.get_ydata())) == 1 and line.get_xdata()[0] == 0 and line.get_xdata()[1] == 1}


def _reference(refs, prefix):
    """y of the one reference line labelled ``prefix: ...``; its label also names the baseline and the value."""
    (label, y), = [(label, y) for label, y in refs.items() if label.startswith(prefix + ":")]
    assert "attribute prior" in label and label.endswith(f"{y:.3f}"), label
    return y


def test_baseline_labels_name_the_chosen_k():
    assert baseline_label("geometry_knn", BASELINES["geometry_knn"]) == \
        "geometry only (k-NN on true landmarks, k = 45)"
    assert baseline_label("geometry_knn") == "geometry only (k-NN on true landmarks)"
    assert baseline_label("class_prior") == "class prior"
    assert reference_baselines("category_top1") == ("class_prior", "geometry_knn")
    assert reference_baselines("attr_map_texture") == ("attribute_prior_given_category",)
    assert reference_baselines("landmark_ne_mean") == ("mean_landmarks",)
    assert reference_baselines("loss_total") == ()


def test_reference_lines_sit_at_the_baseline_values_and_skip_missing_ones():
    ax = plt.subplots()[1]
    lines = curves.reference_lines(ax, BASELINES, "category_top3")
    assert [line.get_label() for line in lines] == ["class prior: 0.300",
                                                    "geometry only (k-NN on true landmarks, k = 45): 0.550"]
    assert [tuple(line.get_ydata()) for line in lines] == [(0.30, 0.30), (0.55, 0.55)]
    assert curves.reference_lines(ax, BASELINES, "attr_map_style") == []          # nan: no line
    assert curves.reference_lines(ax, None, "category_top3") == []
    assert curves.reference_lines(ax, {"class_prior": None}, "category_top3") == []
    chance = curves.reference_lines(ax, BASELINES, "category_top3", names=("chance",), label_prefix="x: ")
    assert chance[0].get_label() == "x: chance: 0.060" and chance[0].get_ydata()[0] == 0.06
    plt.close("all")


def test_epoch_figures_draw_the_baselines_they_are_given():
    h = make_history([0.2, 0.6, 0.4], [0.25, 0.5, 0.3])
    ax = curves.plot_category_accuracy(h, model="mtl", baselines=BASELINES).axes[0]
    assert _references(ax) == {"class prior: 0.300": 0.30,
                               "geometry only (k-NN on true landmarks, k = 45): 0.550": 0.55}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "class prior: 0.300" in legend
    ax = curves.plot_landmark_error(h, model="mtl", baselines=BASELINES).axes[0]
    assert _references(ax) == {"mean landmark positions: 0.175": 0.175}
    ax = curves.plot_category_accuracy(h, model="mtl").axes[0]                      # no baselines, no lines
    assert _references(ax) == {}
    plt.close("all")


def test_attribute_map_curves_and_their_reference_lines():
    h = make_history([0.2, 0.6, 0.4], [0.25, 0.5, 0.3])
    ax = curves.plot_attribute_map(h, model="mtl", baselines=BASELINES).axes[0]
    assert np.allclose(_line(ax, "fabric").get_ydata(), [0.10, 0.11, 0.12])
    assert np.allclose(_line(ax, "all").get_ydata(), [0.20, 0.23, 0.26])
    refs = _references(ax)
    assert _reference(refs, "texture") == 0.2 and _reference(refs, "part") == pytest.approx(0.23)
    assert _reference(refs, "all") == 0.41
    assert not any(label.startswith("style:") for label in refs)                    # its baseline is nan
    texture = next(label for label in refs if label.startswith("texture:"))
    assert _line(ax, texture).get_color() == _line(ax, "texture").get_color()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:6] == ["texture", "fabric", "shape", "part", "style", "all"]
    assert next(label for label in refs if label.startswith("all:")) in legend
    assert curves._PER_TYPE_REFERENCE in legend
    assert "best val epoch 2" in " ".join(t.get_text() for t in ax.texts)

    fig = curves.plot_attribute_curves(h, model="mtl", baselines=BASELINES)
    recall, mean_ap = fig.axes
    assert "Fig. 3.6" in recall.get_title() and "mAP" in mean_ap.get_title()
    assert _reference(_references(recall), "all (grouped)") == 0.68
    assert np.allclose(_line(mean_ap, "style").get_ydata(), [0.25, 0.26, 0.27])
    plt.close("all")


def test_table_3_1_has_map_and_the_prior_given_the_category():
    h = make_history([0.2, 0.6, 0.4], [0.2, 0.5, 0.3])
    table = history.table_3_1(h, baselines=BASELINES)
    assert table.at["fabric", "ours: mAP @ best val epoch"] == pytest.approx(0.11)   # best val epoch 2
    assert table.at["all grouped", "ours: mAP @ best val epoch"] == pytest.approx(0.23)
    assert table.at["shape", "prior | category: recall"] == pytest.approx(0.42)
    assert table.at["all grouped", "prior | category: mAP"] == 0.41
    assert math.isnan(table.at["style", "prior | category: mAP"])
    assert "prior | category: mAP" not in history.table_3_1(h)


def test_run_summary_carries_the_map():
    s = history.run_summary(make_history([0.2, 0.6, 0.4], [0.2, 0.5, 0.3]))
    assert s["test"]["attr_map_all"] == pytest.approx(0.23) and s["val"]["attr_map_texture"] == pytest.approx(0.07)
