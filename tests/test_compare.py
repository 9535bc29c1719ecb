"""vfu_nb.comparison, vfu_nb.class_metrics and vfu_nb.plots.compare: relative improvements, Table 3.2, per-class
metrics and views, and the sentences, on hand-made inputs."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from test_curves import BASELINES, _references, make_history  # noqa: E402
from vfu_nb import class_metrics, comparison  # noqa: E402
from vfu_nb.plots import compare  # noqa: E402
from vfu_nb.metrics import EvalAccumulator, attribute_topk_recall  # noqa: E402


def test_the_thesis_relative_improvements_are_reproduced():
    # section 3.3: best accuracy 0.8605 vs 0.5621 -> "+53%"; texture recall 0.5287 vs 0.2124 -> "+149%"
    assert round(comparison.relative_improvement(0.8605, 0.5621), 2) == 0.53
    assert round(comparison.relative_improvement(0.5287, 0.2124), 2) == 1.49
    assert comparison.format_relative(comparison.relative_improvement(0.8605, 0.5621)) == "+53%"
    assert comparison.format_relative(comparison.relative_improvement(0.5287, 0.2124)) == "+149%"
    assert math.isnan(comparison.relative_improvement(0.5, 0.0))
    assert math.isnan(comparison.relative_improvement(None, 0.5))
    assert comparison.format_relative(float("nan")) == "n/a"


def test_improvement_table_selects_on_val_or_per_metric_best():
    # MTL: val best epoch 2 (test 0.50), best test epoch 3 (0.60); CAT: val best epoch 1 (0.40), best test 0.45
    mtl = make_history([0.3, 0.7, 0.6], [0.35, 0.50, 0.60], test_texture=[0.2, 0.4, 0.5])
    cat = make_history([0.5, 0.4, 0.3], [0.40, 0.45, 0.30], test_texture=[0.1, 0.2, 0.25])
    val = comparison.improvement_table(mtl, cat, select="val")
    row = val.loc["top-3 category accuracy"]
    assert (row["MTL"], row["MTL epoch"], row["CAT"], row["CAT epoch"]) == (0.50, 2, 0.40, 1)
    assert row["difference"] == pytest.approx(0.10)
    assert row["relative"] == pytest.approx(0.25)
    assert row["thesis relative"] == pytest.approx((0.8605 - 0.5621) / 0.5621)
    tex = val.loc["top-3 texture recall"]
    assert (tex["MTL"], tex["CAT"]) == (0.4, 0.1) and tex["relative"] == pytest.approx(3.0)
    assert tex["thesis MTL"] == 0.5287 and tex["thesis CAT"] == 0.2124
    assert math.isnan(val.loc["top-3 attribute recall (all types pooled)", "thesis relative"])

    best = comparison.improvement_table(mtl, cat, select="best")
    row = best.loc["top-3 category accuracy"]
    assert (row["MTL"], row["MTL epoch"], row["CAT"], row["CAT epoch"]) == (0.60, 3, 0.45, 2)
    assert row["relative"] == pytest.approx(0.15 / 0.45)
    assert best.loc["top-3 texture recall", "CAT epoch"] == 3


def test_table_3_2_lists_ours_first_then_the_published_numbers():
    table = comparison.table_3_2({"MTL": {"category_top3": 0.7}, "CAT": {"category_top3": 0.6}}, data="synthetic")
    assert list(table.index[:2]) == ["ours: MTL", "ours: CAT"]
    assert table["top-3 category accuracy"].iloc[:2].tolist() == [0.7, 0.6]
    assert table.loc["ours: MTL", "data"] == "synthetic"
    published = dict(zip(table.index[2:], table["top-3 category accuracy"].iloc[2:]))
    assert published["thesis MTL"] == 0.8605
    assert published["thesis CAT"] == 0.5621
    assert published["Liu & Lu 2018 (landmark-driven attention)"] == 0.9116
    assert published["Wang et al. 2018 (AFGN)"] == 0.9099
    assert published["FashionNet, Liu et al. 2016 (thesis: 'Luo et al. [19]')"] == 0.8258
    assert published["DARN, Huang et al. 2015"] == 0.5948
    assert (table["data"].iloc[2:] == "DeepFashion-C test").all()
    assert table["source"].str.len().min() > 0
    missing = comparison.table_3_2({"MTL": None})
    assert math.isnan(missing.loc["ours: MTL", "top-3 category accuracy"])


def test_attribute_table_has_ours_and_published_rows():
    t = comparison.attribute_table({"MTL": {"attr_top3_texture": 0.4, "attr_top3_style": None}})
    assert t.loc["ours: MTL", "texture"] == 0.4 and math.isnan(t.loc["ours: MTL", "style"])
    assert t.loc["thesis MTL", "shape"] == 0.5528
    assert t.loc["Liu & Lu 2018", "texture"] == 0.5617
    assert math.isnan(t.loc["thesis CAT (Fig. 3.12)", "fabric"])
    assert t.loc["thesis CAT (Fig. 3.12)", "texture"] == 0.2124


def test_confusion_matrix_counts():
    cm = class_metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def fake_predictions(n=40, a=15, c=5, seed=0):
    rng = np.random.default_rng(seed)
    types = np.repeat([1, 2, 3, 4, 5], -(-a // 5))[:a]
    labels = (rng.random((n, a)) < 0.25).astype(np.float32)
    category = rng.integers(0, c, n)
    return SimpleNamespace(model="mtl", split="test", category=category,
                           category_logits=rng.standard_normal((n, c)).astype(np.float32),
                           attribute_scores=rng.standard_normal((n, a)).astype(np.float32),
                           attributes=labels, attribute_types=types)


def test_per_attribute_recall_adds_up_to_the_type_recall():
    p = fake_predictions()
    names = [f"a{i}" for i in range(p.attributes.shape[1])]
    frame = class_metrics.per_attribute_recall(p, names, k=2)
    assert frame["positives"].tolist() == p.attributes.sum(axis=0).astype(int).tolist()
    assert (frame["hits"] <= frame["positives"]).all()
    pooled = frame.groupby("type")[["hits", "positives"]].sum()
    expected = attribute_topk_recall(p.attribute_scores, p.attributes, p.attribute_types, 2)
    for t in ("texture", "fabric", "shape", "part", "style"):
        assert pooled.loc[t, "hits"] / pooled.loc[t, "positives"] == pytest.approx(expected[t])
    # one attribute that is always top-ranked within its type and always positive has recall 1
    p.attribute_scores[:, 0] = 100.0
    p.attributes[:, 0] = 1.0
    assert class_metrics.per_attribute_recall(p, names, k=2).loc[0, "recall"] == 1.0


def test_per_class_figures():
    p = fake_predictions()
    names = [f"c{i}" for i in range(7)]
    fig = compare.plot_confusion(p, names)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "true category"
    top1 = float((p.category_logits.argmax(1) == p.category).mean())
    assert f"{top1:.3f}" in ax.get_title()
    frames = {"mtl": class_metrics.per_attribute_recall(p, [f"a{i}" for i in range(15)]),
              "cat": class_metrics.per_attribute_recall(fake_predictions(seed=1), [f"a{i}" for i in range(15)])}
    ax = compare.plot_per_attribute_recall(frames, top=5).axes[0]
    assert len(ax.patches) == 10
    plt.close("all")


def test_metric_curves_figure_has_one_test_curve_per_model():
    mtl = make_history([0.3, 0.7, 0.6], [0.35, 0.50, 0.60])
    cat = make_history([0.5, 0.4, 0.3], [0.40, 0.45, 0.30])
    ax = compare.plot_metric_curves({"mtl": mtl, "cat": cat}, "category_top3").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["MTL (test)"].get_ydata().tolist() == [0.35, 0.50, 0.60]
    assert lines["CAT (val)"].get_ydata().tolist() == [0.5, 0.4, 0.3]
    assert "Fig. 3.11" in ax.get_title()
    plt.close("all")


def test_comparison_sentence_is_computed():
    s = comparison.comparison_sentence(0.75, 0.5, "top-3 category accuracy", "the synthetic benchmark")
    # the data, the metric, both values, the difference, the relative change and the verdict
    for part in ("synthetic benchmark", "top-3 category accuracy", "0.7500", "0.5000", "+0.2500", "+50%"):
        assert part in s, part
    assert s.index("0.7500") < s.index("0.5000") and "MTL is better" in s
    assert "CAT is better" in comparison.comparison_sentence(0.4, 0.5)
    assert "tie" in comparison.comparison_sentence(0.5, 0.5)
    assert "CAT is better" in comparison.comparison_sentence(0.3, 0.2, "landmark NE", higher_is_better=False)
    assert "missing" in comparison.comparison_sentence(float("nan"), 0.5)


# ----------------------------------------------------------------------------------------------------------
# Attribute mAP and baselines


def test_metric_curves_draw_the_baselines_of_the_metric():
    mtl = make_history([0.3, 0.7, 0.6], [0.35, 0.50, 0.60])
    cat = make_history([0.5, 0.4, 0.3], [0.40, 0.45, 0.30])
    ax = compare.plot_metric_curves({"mtl": mtl, "cat": cat}, "category_top3", baselines=BASELINES).axes[0]
    assert _references(ax) == {"class prior: 0.300": 0.30,
                               "geometry only (k-NN on true landmarks, k = 45): 0.550": 0.55}
    assert "class prior: 0.300" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax = compare.plot_metric_curves({"mtl": mtl, "cat": cat}, "attr_map_all", baselines=BASELINES).axes[0]
    assert {line.get_label(): line for line in ax.get_lines()}["MTL (test)"].get_ydata().tolist() == \
        pytest.approx([0.20, 0.23, 0.26])
    assert _references(ax) == {"attribute prior given the true category: 0.410": 0.41}
    plt.close("all")


def test_table_3_2_has_map_and_baseline_rows_between_ours_and_the_published():
    ours = {"MTL": {"category_top3": 0.7, "attr_map_all": 0.5}, "CAT": {"category_top3": 0.6, "attr_map_all": None}}
    table = comparison.table_3_2(ours, data="synthetic", baselines=BASELINES)
    assert list(table.index[:6]) == ["ours: MTL", "ours: CAT",
                                     "baseline: geometry only (k-NN on true landmarks, k = 45)",
                                     "baseline: class prior", "baseline: attribute prior given the true category",
                                     "baseline: chance"]
    assert table.index[6] == "thesis MTL"
    assert table.at["ours: MTL", "attribute mAP"] == 0.5 and math.isnan(table.at["ours: CAT", "attribute mAP"])
    assert table.at["baseline: geometry only (k-NN on true landmarks, k = 45)", "attribute mAP"] == 0.27
    assert table.at["baseline: class prior", "top-3 category accuracy"] == 0.30
    assert math.isnan(table.at["baseline: class prior", "attribute mAP"])
    assert table.at["baseline: attribute prior given the true category", "attribute mAP"] == 0.41
    selection = table.at["baseline: chance", "epoch selection"]           # no epochs; the split it was fitted on, n
    assert "train" in selection and "600" in selection
    assert table.at["baseline: chance", "data"] == "synthetic"
    assert math.isnan(table.at["thesis MTL", "attribute mAP"])


def test_attribute_table_has_map_columns_and_baseline_rows():
    t = comparison.attribute_table({"MTL": {"attr_top3_texture": 0.4, "attr_map_texture": 0.3, "attr_map_all": 0.25}},
                                baselines=BASELINES)
    assert list(t.columns) == ["texture", "fabric", "shape", "part", "style", "mAP texture", "mAP fabric",
                               "mAP shape", "mAP part", "mAP style", "mAP all"]
    assert t.loc["ours: MTL", "mAP texture"] == 0.3 and t.loc["ours: MTL", "mAP all"] == 0.25
    prior = "baseline: attribute prior given the true category"
    assert list(t.index[1:4]) == [prior, "baseline: geometry only (k-NN on true landmarks, k = 45)",
                                  "baseline: chance"]
    assert t.loc[prior, "fabric"] == pytest.approx(0.41) and t.loc[prior, "mAP all"] == 0.41
    assert t.loc["baseline: chance", "mAP all"] == 0.12
    assert t.loc["Liu & Lu 2018", "texture"] == 0.5617 and math.isnan(t.loc["Liu & Lu 2018", "mAP all"])


def test_per_attribute_ap_by_hand_and_its_mean_is_the_map():
    p = SimpleNamespace(attribute_scores=np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0], [0.0, 0.0]]),
                        attributes=np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=np.float32),
                        attributes_known=np.array([[1, 1], [0, 1], [1, 1], [1, 1]], dtype=bool),
                        attribute_types=np.array([1, 2]))
    frame = class_metrics.per_attribute_ap(p, ["stripe", "denim"])
    # attribute 0: image 1 unknown -> ranking 3 (pos), 1 (pos), 0 (neg): AP = (1/1 + 2/2) / 2 = 1
    assert frame["ap"].iloc[0] == 1.0 and frame["positives"].tolist() == [2, 0] and math.isnan(frame["ap"].iloc[1])
    p.attributes_known = None                    # image 1 counts: 3 (pos), 2 (neg), 1 (pos): (1 + 2/3) / 2
    assert class_metrics.per_attribute_ap(p, ["stripe", "denim"])["ap"].iloc[0] == pytest.approx(5 / 6)

    q = fake_predictions(n=60, a=15, seed=3)
    frame = class_metrics.per_attribute_ap(q, [f"a{i}" for i in range(15)])
    acc = EvalAccumulator(q.attribute_types)
    acc.update(q.category_logits, q.category, q.attribute_scores, q.attributes)
    expected = acc.compute()
    assert frame["ap"].mean() == pytest.approx(expected["attr_map_all"], abs=1e-12)
    assert frame[frame["type"] == "shape"]["ap"].mean() == pytest.approx(expected["attr_map_shape"], abs=1e-12)


def ap_frames():
    names = ["a", "b", "c", "d"]
    mtl = pd.DataFrame({"attribute": names, "type": ["texture", "fabric", "shape", "style"],
                        "positives": [5, 4, 3, 0], "ap": [0.9, 0.2, 0.5, np.nan]})
    cat = mtl.assign(ap=[0.5, 0.3, 0.5, np.nan])
    return {"mtl": mtl, "cat": cat}


def test_ap_differences_rank_by_absolute_difference():
    d = class_metrics.ap_differences(ap_frames(), top=3)
    assert list(d.index) == ["a", "b", "c"]                     # "d" has no AP
    assert d["difference"].tolist() == pytest.approx([0.4, -0.1, 0.0])
    assert d.loc["a", "MTL AP"] == 0.9 and d.loc["a", "CAT AP"] == 0.5 and d.loc["a", "type"] == "texture"
    assert list(class_metrics.ap_differences(ap_frames(), top=1).index) == ["a"]


def test_per_attribute_ap_scatter_counts_and_names_the_largest_differences():
    ax = compare.plot_per_attribute_ap(ap_frames(), annotate=2).axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, points.tolist())) == [(0.3, 0.2), (0.5, 0.5), (0.5, 0.9)]   # (CAT, MTL)
    assert re.findall(r"\d+", ax.get_title()) == ["1", "3"] and "MTL" in ax.get_title()   # MTL higher on 1 of 3
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b"]
    assert ax.get_xlabel() == "CAT AP" and ax.get_ylabel() == "MTL AP"
    p = fake_predictions()
    names = [f"a{i}" for i in range(15)]
    fig = compare.plot_per_attribute({"mtl": class_metrics.per_attribute_recall(p, names),
                                      "cat": class_metrics.per_attribute_recall(p, names)},
                                     {"mtl": class_metrics.per_attribute_ap(p, names),
                                      "cat": class_metrics.per_attribute_ap(fake_predictions(seed=1), names)}, top=5)
    bars, scatter = fig.axes[:2]
    assert len(bars.patches) == 10 and scatter.get_title().startswith("Per-attribute AP: MTL higher on")
    plt.close("all")


def test_baseline_sentence_is_computed():
    s = comparison.baseline_sentence({"MTL": 0.6, "CAT": 0.4}, BASELINES, "category_top3")
    # each model's value, then each baseline's value with who beats it
    assert s.lower().startswith("top-3 category accuracy") and "MTL 0.6000" in s and "CAT 0.4000" in s
    assert "class prior 0.3000 (both beat it)" in s
    assert "k = 45) 0.5500 (only MTL beats it)" in s
    assert "notebook 05" in s                                   # where the intervals are
    s = comparison.baseline_sentence({"MTL": 0.2, "CAT": 0.1}, BASELINES, "category_top3")
    assert "(neither beats it)" in s
    s = comparison.baseline_sentence({"MTL": 0.15}, BASELINES, "landmark_ne_mean")   # lower is better
    assert "0.1750 (MTL beats it)" in s
    assert "(MTL does not beat it)" in comparison.baseline_sentence({"MTL": 0.2}, BASELINES, "landmark_ne_mean")
    assert comparison.baseline_sentence({"MTL": 0.5}, None, "category_top3").startswith("No baseline")
