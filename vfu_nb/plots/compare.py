"""MTL versus CAT (thesis sections 3.3 and 3.5): curves, relative improvements, Table 3.2, per-class views.

* :func:`plot_metric_curves` -- thesis figures 3.11 (top-3 category accuracy per epoch, both models) and 3.12
  (top-3 texture recall per epoch).
* :func:`improvement_table` -- the "+53% category accuracy, +149% attribute recall" computation of section 3.3
  redone on our runs: relative improvement = (MTL - CAT) / CAT of the best-epoch values. The thesis took each
  model's best **test** epoch per metric (0.8605 at epoch 3 vs 0.5621 at epoch 4; texture 0.5287 vs 0.2124).
  We select the epoch on **val** (top-3 category accuracy) and report test values there (``select="val"``);
  ``select="best"`` reproduces the thesis' rule.
* :func:`table_3_2`, :func:`attribute_table` -- our top-3 category accuracy and attribute mAP beside the
  baselines of the same data and the published numbers (:data:`vfu_nb.conventions.PUBLISHED_CATEGORY_TOP3`, each
  with its paper); top-3 recall and mAP per attribute type likewise.
* :func:`plot_confusion`, :func:`per_attribute_recall`, :func:`per_attribute_ap` -- need predictions of the best
  checkpoint on the test split (:func:`vfu_nb.training.runs.predict`).

Baselines (``{name: flat metrics}`` of :func:`vfu_nb.baselines.compute_baselines`) are an optional argument of the
curves, the tables and :func:`baseline_sentence`; curves draw them as in :mod:`vfu_nb.plots.curves`.

Every sentence these helpers write is computed from the numbers they are given; none is fixed text about the
outcome.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vfu_nb.conventions import (
    ATTRIBUTE_TYPE_COLORS, ATTRIBUTE_TYPE_NAMES, ATTRIBUTE_TYPES, LOWER_IS_BETTER,
    PUBLISHED_ATTRIBUTE_TOP3, PUBLISHED_CATEGORY_TOP3, THESIS_IMPROVEMENTS, metric_label, model_color,
)
from vfu_nb.metrics import MAP_GROUPS, average_precision
from vfu_nb.plots.curves import (
    baseline_label, best_epoch_value, best_val_epoch, epoch_frame, load_history, reference_baselines,
    reference_lines,
)

#: Baseline rows of Table 3.2 and of the attribute table, in order (those a baseline dict lacks are left out).
CATEGORY_TABLE_BASELINES = ("geometry_knn", "class_prior", "attribute_prior_given_category", "chance")
ATTRIBUTE_TABLE_BASELINES = ("attribute_prior_given_category", "geometry_knn", "attribute_prior", "chance")

# ----------------------------------------------------------------------------------------------------------
# Relative improvements


def relative_improvement(new: float, base: float) -> float:
    """(new - base) / base; nan when either is missing or base is 0."""
    if new is None or base is None or not (math.isfinite(new) and math.isfinite(base)) or base == 0:
        return float("nan")
    return (new - base) / base


def improvement_table(mtl, cat, metrics: Sequence[str] = ("category_top3", "attr_top3_texture",
                                                           "attr_top3_all_grouped"),
                      select: str = "val", split: str = "test") -> pd.DataFrame:
    """MTL vs CAT at their best epochs, with the thesis' numbers beside ours.

    ``mtl``, ``cat``: histories (dicts or run directories). ``select="val"``: each model's epoch with the best val
    top-3 category accuracy (ours); ``select="best"``: each model's best ``split`` epoch for each metric (the
    thesis' rule). Columns: ``MTL, MTL epoch, CAT, CAT epoch, difference, relative`` and, for the two metrics the
    thesis compares, ``thesis MTL, thesis CAT, thesis relative``.
    """
    rows = []
    for metric in metrics:
        lower = metric in LOWER_IS_BETTER
        em, vm = best_epoch_value(mtl, metric, split, select, higher_is_better=not lower)
        ec, vc = best_epoch_value(cat, metric, split, select, higher_is_better=not lower)
        row = {"metric": metric_label(metric), "MTL": vm, "MTL epoch": em, "CAT": vc, "CAT epoch": ec,
               "difference": vm - vc, "relative": relative_improvement(vm, vc)}
        th = THESIS_IMPROVEMENTS.get(metric)
        row["thesis MTL"] = th["mtl"] if th else float("nan")
        row["thesis CAT"] = th["cat"] if th else float("nan")
        row["thesis relative"] = relative_improvement(th["mtl"], th["cat"]) if th else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def format_relative(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.0%}"


# ----------------------------------------------------------------------------------------------------------
# Curves (thesis figures 3.11, 3.12)


def plot_metric_curves(histories: Mapping[str, object], metric: str = "category_top3", split: str = "test",
                       show_val: bool = True, ax=None, title: Optional[str] = None, baselines=None):
    """``metric`` per epoch for several runs (``{label: history or run dir}``); each run's best val epoch starred.

    Thesis Fig. 3.11 is ``metric="category_top3"``, Fig. 3.12 ``metric="attr_top3_texture"`` (test split; the
    thesis labels CAT "CAT+ATTR"). With ``show_val`` the val curve is drawn dotted. ``baselines``: reference
    lines as in the training curves (:func:`vfu_nb.plots.curves.reference_lines`).
    """
    ax = ax or plt.subplots(figsize=(6.5, 3.4))[1]
    n_max = 1
    for i, (label, hist) in enumerate(histories.items()):
        h = load_history(hist)
        color = model_color(label)
        frame = epoch_frame(h, split)
        n_max = max(n_max, len(frame))
        if metric in frame:
            ax.plot(frame.index, frame[metric], marker="o", color=color, label=f"{label.upper()} ({split})")
            e = best_val_epoch(h)
            if e is not None and e in frame.index:
                ax.plot([e], [frame.at[e, metric]], marker="*", ms=14, color=color, ls="")
        if show_val:
            val = epoch_frame(h, "val")
            if metric in val:
                ax.plot(val.index, val[metric], ls=":", color=color, lw=1, label=f"{label.upper()} (val)")
    reference_lines(ax, baselines, metric)
    ax.set_xlim(0.5, n_max + 0.5)
    ax.set_xticks(range(1, n_max + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(metric))
    fig_no = {"category_top3": " (thesis Fig. 3.11)", "attr_top3_texture": " (thesis Fig. 3.12)"}.get(metric, "")
    ax.set_title(title or f"{metric_label(metric)} per epoch{fig_no}; * = best val epoch")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


# ----------------------------------------------------------------------------------------------------------
# Table 3.2


def _baseline_rows(baselines, names: Sequence[str]) -> list:
    """(row label, metrics) of the baselines among ``names`` that ``baselines`` has."""
    return [(f"baseline: {baseline_label(n, baselines[n])}", baselines[n]) for n in names if (baselines or {}).get(n)]


def table_3_2(ours: Mapping[str, Mapping], data: str = "this run's data", published=PUBLISHED_CATEGORY_TOP3,
              key: str = "category_top3", baselines=None) -> pd.DataFrame:
    """Our top-3 category accuracy and attribute mAP (``{label: test metrics at the best val epoch}``), the
    ``baselines`` of the same data, then the published numbers.

    Columns: ``top-3 category accuracy, attribute mAP, data, epoch selection, source``. Convention:
    :data:`vfu_nb.conventions.CATEGORY_CONVENTION`. Published rows are on DeepFashion-C (no published mAP); ours and
    the baselines are on ``data`` (not comparable with them when that is the synthetic set). A baseline is fitted
    on the train split and evaluated on every test image of the tree (``n_images``).
    """
    rows = []
    for label, metrics in ours.items():
        rows.append({"method": f"ours: {label}", "top-3 category accuracy": _get(metrics, key),
                     "attribute mAP": _get(metrics, "attr_map_all"), "data": data,
                     "epoch selection": "best val epoch, reported on test", "source": "this notebook"})
    for label, metrics in _baseline_rows(baselines, CATEGORY_TABLE_BASELINES):
        rows.append({"method": label, "top-3 category accuracy": _get(metrics, key),
                     "attribute mAP": _get(metrics, "attr_map_all"), "data": data,
                     "epoch selection": f"none: fitted on train, all {_get(metrics, 'n_images'):.0f} test images",
                     "source": "vfu_nb.baselines"})
    for p in published:
        rows.append({"method": p["method"], "top-3 category accuracy": p["top3"], "attribute mAP": float("nan"),
                     "data": "DeepFashion-C test", "epoch selection": p["selection"], "source": p["source"]})
    return pd.DataFrame(rows).set_index("method")


def attribute_table(ours: Mapping[str, Mapping], published: Mapping[str, Mapping] = PUBLISHED_ATTRIBUTE_TOP3,
                    k: int = 3, baselines=None) -> pd.DataFrame:
    """Top-k recall per attribute type (columns named by type) and attribute mAP per type and over all
    attributes (``mAP <type>``, ``mAP all``): our rows (``{label: test metrics}``), the ``baselines``, then the
    published ones (no published mAP; nan where a paper gives no number)."""
    def row(m):
        return {**{t: _get(m, f"attr_top{k}_{t}") for t in ATTRIBUTE_TYPES},
                **{f"mAP {g}": _get(m, f"attr_map_{g}") for g in MAP_GROUPS}}

    rows = {f"ours: {label}": row(m) for label, m in ours.items()}
    rows.update({label: row(m) for label, m in _baseline_rows(baselines, ATTRIBUTE_TABLE_BASELINES)})
    rows.update({name: row({f"attr_top{k}_{t}": v for t, v in vals.items()}) for name, vals in published.items()})
    return pd.DataFrame.from_dict(rows, orient="index")


def _get(m: Optional[Mapping], key: str) -> float:
    v = (m or {}).get(key)
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------------------------------------
# Per-class views (need predictions: vfu_nb.training.runs.predict)


def confusion_matrix(true, pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of images of true class t predicted as p (top-1)."""
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                               num_classes)


def plot_confusion(predictions, category_names: Sequence[str], normalize: bool = True, ax=None, title: str = ""):
    """Seaborn heat map of the top-1 confusion matrix, rows = true category (normalised per row by default).

    Only categories that occur in the split (as truth or prediction) are shown.
    """
    import seaborn as sns

    logits = predictions.category_logits
    pred = logits.argmax(axis=1)
    cm = confusion_matrix(predictions.category, pred, logits.shape[1])
    used = np.flatnonzero((cm.sum(axis=0) + cm.sum(axis=1)) > 0)
    cm = cm[np.ix_(used, used)].astype(float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = [category_names[i] for i in used]
    size = max(4.0, 0.32 * len(used) + 2)
    ax = ax or plt.subplots(figsize=(size + 1, size))[1]
    # numbers only in the non-empty cells (and only when they fit)
    labels = np.where(cm > 0, np.vectorize(lambda v: f"{v:.2f}" if normalize else f"{v:.0f}")(cm), "")
    sns.heatmap(pd.DataFrame(cm, index=names, columns=names), ax=ax, cmap="viridis", vmin=0,
                vmax=1 if normalize else None, square=True, cbar_kws={"shrink": 0.7},
                annot=labels if len(used) <= 20 else False, fmt="", annot_kws={"fontsize": 6})
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true category")
    top1 = float((pred == predictions.category).mean()) if len(pred) else float("nan")
    ax.set_title(title or f"{predictions.model.upper()}: confusion on {predictions.split} (top-1 {top1:.3f})")
    ax.figure.tight_layout()
    return ax.figure


def per_attribute_recall(predictions, attribute_names: Sequence[str], k: int = 3) -> pd.DataFrame:
    """Top-k recall of every attribute, the top-k taken within its type (A1-group convention).

    Columns: ``attribute, type, positives, hits, recall``. Summing ``hits`` and ``positives`` over a type gives
    exactly that type's ``attr_top{k}_<type>`` metric. Attributes without positives have recall nan.
    """
    scores, labels = predictions.attribute_scores, predictions.attributes == 1
    types = np.asarray(predictions.attribute_types)
    hits = np.zeros(scores.shape[1], dtype=np.int64)
    for t in ATTRIBUTE_TYPE_NAMES:
        cols = np.flatnonzero(types == t)
        if cols.size == 0 or not len(scores):
            continue
        top = np.argsort(-scores[:, cols], axis=1, kind="stable")[:, :k]
        chosen = np.zeros((len(scores), cols.size), dtype=bool)
        np.put_along_axis(chosen, top, True, axis=1)
        hits[cols] = (chosen & labels[:, cols]).sum(axis=0)
    positives = labels.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(positives > 0, hits / np.maximum(positives, 1), np.nan)
    return pd.DataFrame({"attribute": list(attribute_names), "type": [ATTRIBUTE_TYPE_NAMES.get(int(t), "?")
                                                                       for t in types],
                         "positives": positives, "hits": hits, "recall": recall})


def plot_per_attribute_recall(frames: Mapping[str, pd.DataFrame], top: int = 25, ax=None):
    """Grouped bars of per-attribute recall for the ``top`` most frequent attributes (``{label: frame}``)."""
    labels = list(frames)
    base = frames[labels[0]]
    chosen = base[base["positives"] > 0].sort_values("positives", ascending=False).head(top)
    ax = ax or plt.subplots(figsize=(max(6, 0.35 * len(chosen) + 2), 3.6))[1]
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(chosen))
    for i, label in enumerate(labels):
        f = frames[label].set_index("attribute").loc[chosen["attribute"]]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, f["recall"], width,
               color=model_color(label), label=label.upper())
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a} ({t[:3]})" for a, t in zip(chosen["attribute"], chosen["type"])], rotation=70,
                       ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-3 recall (within its type)")
    ax.set_title(f"Per-attribute recall, the {len(chosen)} most frequent attributes of the test split")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def per_attribute_ap(predictions, attribute_names: Sequence[str]) -> pd.DataFrame:
    """Average precision of every attribute over the split (:func:`vfu_nb.metrics.average_precision`, unknown
    labels left out): columns ``attribute, type, positives, ap`` (nan without a known positive). The mean of
    ``ap`` per type and overall (nan left out) is the run's ``attr_map_<type>`` and ``attr_map_all``."""
    labels = predictions.attributes == 1
    known = getattr(predictions, "attributes_known", None)
    known = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    ap = average_precision(predictions.attribute_scores, labels, known)
    types = np.asarray(predictions.attribute_types)
    return pd.DataFrame({"attribute": list(attribute_names),
                         "type": [ATTRIBUTE_TYPE_NAMES.get(int(t), "?") for t in types],
                         "positives": (labels & known).sum(axis=0), "ap": ap})


def ap_differences(frames: Mapping[str, pd.DataFrame], top: int = 10) -> pd.DataFrame:
    """The ``top`` attributes whose AP differs most between the two runs of ``frames`` (``{label: frame of
    per_attribute_ap}``, first minus second), largest absolute difference first."""
    (a, fa), (b, fb) = frames.items()
    joined = fa.merge(fb[["attribute", "ap"]], on="attribute", suffixes=(f" {a}", f" {b}"))
    joined = joined.rename(columns={f"ap {a}": f"{a.upper()} AP", f"ap {b}": f"{b.upper()} AP"})
    joined["difference"] = joined[f"{a.upper()} AP"] - joined[f"{b.upper()} AP"]
    joined = joined[np.isfinite(joined["difference"])]
    order = joined["difference"].abs().sort_values(ascending=False, kind="stable").index
    return joined.loc[order].head(top).set_index("attribute")


def plot_per_attribute_ap(frames: Mapping[str, pd.DataFrame], annotate: int = 5, ax=None):
    """Per-attribute AP of two runs against each other (``{label: frame of per_attribute_ap}``: the first on
    the y axis), one dot per attribute coloured by type, the diagonal, and the ``annotate`` attributes with
    the largest difference named. The title counts the attributes above the diagonal."""
    (a, fa), (b, fb) = frames.items()
    both = fa.merge(fb[["attribute", "ap"]], on="attribute", suffixes=("_y", "_x"))
    both = both[np.isfinite(both["ap_y"]) & np.isfinite(both["ap_x"])]
    ax = ax or plt.subplots(figsize=(4.2, 4.2))[1]
    for t in ATTRIBUTE_TYPES:
        part = both[both["type"] == t]
        if len(part):
            ax.scatter(part["ap_x"], part["ap_y"], s=14, alpha=0.75, color=ATTRIBUTE_TYPE_COLORS[t], label=t)
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
    for _, r in ap_differences(frames, annotate).iterrows():
        ax.annotate(r.name, (r[f"{b.upper()} AP"], r[f"{a.upper()} AP"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{b.upper()} AP")
    ax.set_ylabel(f"{a.upper()} AP")
    above = int((both["ap_y"] > both["ap_x"]).sum())
    ax.set_title(f"Per-attribute AP: {a.upper()} higher on {above} of {len(both)}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.figure.tight_layout()
    return ax.figure


def plot_per_attribute(recall_frames: Mapping[str, pd.DataFrame], ap_frames: Mapping[str, pd.DataFrame],
                       top: int = 25):
    """Per-attribute recall of the most frequent attributes (bars) beside per-attribute AP of every attribute
    (scatter): :func:`plot_per_attribute_recall` and :func:`plot_per_attribute_ap` in one figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6, 0.35 * top + 2) + 4.5, 4.2),
                                      gridspec_kw={"width_ratios": [max(6, 0.35 * top + 2), 4.2]})
    plot_per_attribute_recall(recall_frames, top, ax=left)
    plot_per_attribute_ap(ap_frames, ax=right)
    return fig


# ----------------------------------------------------------------------------------------------------------
# Sentences computed from numbers


def comparison_sentence(mtl: float, cat: float, what: str = "top-3 category accuracy", data: str = "this data",
                        higher_is_better: bool = True) -> str:
    """'On <data> MTL's <what> is X vs CAT's Y (difference Z, relative R): <who> is better / they tie.'"""
    if mtl is None or cat is None or not (math.isfinite(mtl) and math.isfinite(cat)):
        return f"On {data} the {what} of MTL or CAT is missing; no comparison."
    diff = mtl - cat
    if diff == 0:
        verdict = "they tie"
    else:
        better = "MTL" if (diff > 0) == higher_is_better else "CAT"
        verdict = f"{better} is better on this single run (one seed: no interval, see notebook 05)"
    return (f"On {data} MTL's {what} is {mtl:.4f} vs CAT's {cat:.4f} (difference {diff:+.4f}, relative "
            f"{format_relative(relative_improvement(mtl, cat))}); {verdict}.")


def _who_beats(beat: Sequence[str], labels: Sequence[str]) -> str:
    if len(labels) == 1:
        return f"{labels[0]} {'beats' if beat else 'does not beat'} it"
    if not beat:
        return "neither beats it" if len(labels) == 2 else "none beats it"
    if len(beat) == len(labels):
        return "both beat it" if len(labels) == 2 else "all beat it"
    return f"only {' and '.join(beat)} beat{'s' if len(beat) == 1 else ''} it"


def baseline_sentence(values: Mapping[str, float], baselines, metric: str = "category_top3",
                      names: Optional[Sequence[str]] = None) -> str:
    """Where runs (``{label: value}``) stand against the baselines of ``metric`` (default
    :func:`vfu_nb.plots.curves.reference_baselines`): 'Top-3 category accuracy: MTL 0.6000, CAT 0.5000; against
    the baselines of the same data, class prior 0.2967 (both beat it); geometry only (...) 0.5567 (only MTL beats
    it) (one run per model: ...).' Lower is better for the landmark error."""
    lower = metric in LOWER_IS_BETTER
    what = metric_label(metric)
    parts = []
    for name in (names if names is not None else reference_baselines(metric)):
        ref = _get((baselines or {}).get(name), metric)
        if not math.isfinite(ref):
            continue
        beat = [label for label, v in values.items()
                if v is not None and math.isfinite(v) and (v < ref if lower else v > ref)]
        parts.append(f"{baseline_label(name, baselines[name])} {ref:.4f} ({_who_beats(beat, list(values))})")
    if not parts:
        return f"No baseline of the {what} to compare with."
    ours = ", ".join(f"{label} {_get(values, label):.4f}" for label in values)
    return (f"{what[0].upper()}{what[1:]}: {ours}; against the baselines of the same data, {'; '.join(parts)} "
            f"(one run per model: no interval, see notebook 05 for the seeds).")
