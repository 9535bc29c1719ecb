"""Figures of the study (notebook 05 and the README), drawn from ``results/study.json`` alone.

* :func:`plot_models` -- each model's primary metrics over seeds (dots) with mean +- sd, beside the baselines
  that make them readable (chance, class prior, geometry-only, attribute priors);
* :func:`plot_pairs` -- the paired differences with their t-interval (over seeds) and bootstrap interval (over
  seeds x test images);
* :func:`plot_learning_curve` -- the primary metrics against the size of the training split, and MTL's gain
  over CAT and over ``mtl_no_landmarks`` with intervals.
"""

from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from vfu_nb.study.contrasts import contrast_name
from vfu_nb.conventions import baseline_label, model_color
from vfu_nb.conventions import metric_label as label
from vfu_nb.plots.curves import BASELINE_STYLES

#: Baselines drawn as reference lines, per metric: every one that makes the study's numbers readable (more than
#: the training curves show); line styles are the training curves' (:mod:`vfu_nb.plots.curves`), names
#: :func:`vfu_nb.conventions.baseline_label`.
REFERENCE_LINES = {
    "category_top3": ("chance", "class_prior", "geometry_knn"),
    "category_top1": ("chance", "class_prior", "geometry_knn"),
    "attr_map_all": ("chance", "attribute_prior", "attribute_prior_given_category", "geometry_knn"),
}


def _num(value) -> float:
    """A number from study.json as a float (JSON stores NaN, e.g. the sd of one seed, as null)."""
    return math.nan if value is None else float(value)


def _rows(summary: Sequence[Mapping], metric: str) -> list:
    return [r for r in summary if r["metric"] == metric]


def _reference_lines(ax, baselines: Mapping, metric: str, min_gap: float = 0.05) -> None:
    """The metric's baselines as horizontal lines, named at the right edge; names of lines closer than
    ``min_gap`` (a fraction of the axes' height) are pushed apart so they stay readable."""
    drawn = []
    for name in REFERENCE_LINES.get(metric, ()):
        value = (baselines.get(name) or {}).get(metric)
        if value is not None and math.isfinite(value):
            ax.axhline(value, color="0.35", ls=BASELINE_STYLES.get(name, "--"), lw=1)
            drawn.append((value, baseline_label(name, baselines.get(name))))
    low, high = ax.get_ylim()
    last, last_lines = -math.inf, 0
    for value, name in sorted(drawn):
        text = textwrap.fill(name, 24)
        lines = text.count("\n") + 1
        y = max((value - low) / (high - low), last + min_gap * (last_lines + lines) / 2)
        last, last_lines = y, lines
        ax.annotate(text, (1.0, y), xycoords="axes fraction", xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7, color="0.3", linespacing=0.9)


def plot_models(study: Mapping, metrics: Sequence[str] = ("category_top3", "attr_map_all"), axes=None):
    """One panel per metric: seeds as dots, mean +- sd per model, baselines as labelled horizontal lines."""
    summary, baselines = study["seeds"]["summary"], study.get("baselines", {}).get(study["seeds"]["data"], {})
    if axes is None:
        axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 3.6), squeeze=False)[1][0]
    for ax, metric in zip(axes, metrics):
        rows = _rows(summary, metric)
        for i, r in enumerate(rows):
            color = model_color(r["model"])
            vals = np.asarray(r.get("values", []), dtype=float)
            ax.plot(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, "o", color=color,
                    alpha=0.55, ms=5)
            mean, sd = _num(r["mean"]), _num(r["std"])
            if math.isfinite(mean):
                ax.errorbar([i + 0.25], [mean], yerr=[sd if math.isfinite(sd) else 0.0], fmt="s", color="k", ms=5,
                            capsize=4)
        _reference_lines(ax, baselines, metric)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["model"] for r in rows], rotation=25, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.2)
        ax.set_title(label(metric), fontsize=10)
    axes[0].figure.suptitle("Test split, best val epoch: dots = seeds, squares = mean ± sd; lines = baselines",
                            fontsize=9)
    axes[0].figure.tight_layout()
    return axes[0].figure


def _interval_bar(ax, y, interval, color, offset=0.0, marker="o"):
    lo, hi, mean = _num(interval["low"]), _num(interval["high"]), _num(interval["mean"])
    if math.isfinite(lo) and math.isfinite(hi):
        ax.plot([lo, hi], [y + offset] * 2, color=color, lw=2)
    if math.isfinite(mean):
        ax.plot([mean], [y + offset], marker, color=color)


def plot_pairs(study: Mapping, metrics: Sequence[str] = ("category_top3", "attr_map_all"), axes=None):
    """Paired differences a - b, one row per pair: t-interval over seeds (upper bar) and bootstrap over seeds x
    images (lower bar). Green/red when both exclude 0 on one side, grey otherwise."""
    pairs = study["seeds"]["pairs"]
    if axes is None:
        axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.7 * len(pairs) + 1.6),
                            squeeze=False)[1][0]
    for ax, metric in zip(axes, metrics):
        for i, pair in enumerate(pairs):
            res = pair["primary"].get(metric)
            if not res:
                continue
            color = {"a better": "tab:green", "b better": "tab:red"}.get(res["verdict"], "tab:gray")
            _interval_bar(ax, i, res["t"], color, -0.12, "o")             # upper (the y axis is inverted)
            _interval_bar(ax, i, res["bootstrap"], color, +0.12, "D")
        ax.axvline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))          # differences have long tick labels
        ax.set_yticks(range(len(pairs)))
        ax.set_yticklabels([f"{p['a']} − {p['b']}\n(n={len(p['seeds'])} seeds)" for p in pairs], fontsize=8)
        ax.set_ylim(-0.6, len(pairs) - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference in {label(metric)}")
    axes[0].figure.suptitle("95% intervals: ● t over seeds, ◆ bootstrap over seeds × test images; "
                            "green/red = established, grey = not", fontsize=9)
    axes[0].figure.tight_layout()
    return axes[0].figure


def plot_learning_curve(study: Mapping, metrics: Sequence[str] = ("category_top3", "attr_map_all"), axes=None):
    """Top row: each primary metric against the training fraction per model (mean +- sd), with the baselines (fitted
    on the whole training split). Bottom row: the paired gains of the curve's pairs with their t-intervals (bars)
    and bootstrap intervals (shaded)."""
    points = study["learning_curve"]["points"]
    fractions = [p["fraction"] for p in points]
    if axes is None:
        axes = plt.subplots(2, len(metrics), figsize=(4.8 * len(metrics), 6.4), squeeze=False,
                            sharex=True)[1]
    for col, metric in enumerate(metrics):
        top, bottom = axes[0][col], axes[1][col]
        models = list(dict.fromkeys(r["model"] for p in points for r in _rows(p["summary"], metric)))
        for model in models:
            mean = [next((_num(r["mean"]) for r in _rows(p["summary"], metric) if r["model"] == model), math.nan)
                    for p in points]
            sd = [next((_num(r["std"]) for r in _rows(p["summary"], metric) if r["model"] == model), math.nan)
                  for p in points]
            top.errorbar(fractions, mean, yerr=np.nan_to_num(sd), marker="o", capsize=3, label=model,
                         color=model_color(model))
        _reference_lines(top, study.get("baselines", {}).get(study["learning_curve"]["data"], {}), metric)
        top.set_title(label(metric), fontsize=10)
        top.legend(fontsize=7)
        pair_names = list(dict.fromkeys(f"{q['a']} − {q['b']}" for p in points for q in p["pairs"]))
        for j, name in enumerate(pair_names):
            color = plt.get_cmap("tab10")(j + 2)
            rows = [next((q["primary"].get(metric) for q in p["pairs"] if f"{q['a']} − {q['b']}" == name), None)
                    for p in points]
            mean = [_num(r["t"]["mean"]) if r else math.nan for r in rows]
            t_lo = [_num(r["t"]["low"]) if r else math.nan for r in rows]
            t_hi = [_num(r["t"]["high"]) if r else math.nan for r in rows]
            b_lo = [_num(r["bootstrap"]["low"]) if r else math.nan for r in rows]
            b_hi = [_num(r["bootstrap"]["high"]) if r else math.nan for r in rows]
            x = np.asarray(fractions) * (1 + 0.04 * (j - (len(pair_names) - 1) / 2))
            bottom.errorbar(x, mean, yerr=[np.subtract(mean, t_lo), np.subtract(t_hi, mean)], marker="o",
                            capsize=3, color=color, label=name)
            bottom.fill_between(x, np.asarray(b_lo, float), np.asarray(b_hi, float), color=color, alpha=0.15)
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_xscale("log")
        bottom.minorticks_off()
        bottom.set_xticks(fractions)
        bottom.set_xticklabels([f"{f:.0%}" for f in fractions])
        bottom.set_xlabel("fraction of the training split")
        bottom.set_ylabel("paired gain")
        bottom.legend(fontsize=7)
    axes[0][0].figure.suptitle("Learning curve (test, best val epoch). Bottom: bars = t-interval over seeds, "
                               "band = bootstrap over seeds × images", fontsize=9)
    axes[0][0].figure.tight_layout()
    return axes[0][0].figure


__all__ = ["plot_models", "plot_pairs", "plot_learning_curve", "REFERENCE_LINES"]


OUTCOME_COLORS = {"established": "tab:blue", "equivalent": "tab:green", "inconclusive": "0.55"}


def plot_contrasts(study: Mapping):
    """Study 2: every primary and secondary contrast per primary metric, its mean with the 95 % interval (thin)
    and 90 % interval (thick, the one TOST reads), the equivalence margin shaded, coloured by outcome; each label
    gives its seeds ("4 of 10 seeds" while the planned seeds have not all finished), and the title says INTERIM
    while any outcome is."""
    metrics = study["preregistration"]["primary_metrics"]
    rows = [("primary", r) for r in study["primary_family"]] + [("secondary", r) for r in study["secondary_family"]]
    seeds = {}                                              # (contrast, family) -> "4 of 10 seeds", in table order
    for fam, r in rows:
        n, planned = r.get("n", 0), r.get("planned")
        seeds.setdefault((contrast_name(r), fam),
                         f"{n} of {planned} seeds" if planned and n < planned else f"{n} seeds")
    names = list(seeds)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.45 * len(names) + 1.5), sharey=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        margin = study["preregistration"].get("margins", {}).get(metric)
        if margin is not None:
            ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, lw=0, label=f"margin ±{margin:g}")
        ax.axvline(0, color="0.3", lw=0.8)
        for fam, r in rows:
            res = r["result"]
            if r["metric"] != metric or not res:
                continue
            y = names.index((contrast_name(r), fam))
            color = OUTCOME_COLORS[res["outcome"]]
            ax.plot([_num(res["low"]), _num(res["high"])], [y, y], color=color, lw=1.2)
            ax.plot([_num(res["low90"]), _num(res["high90"])], [y, y], color=color, lw=4, solid_capstyle="butt")
            ax.plot(_num(res["mean"]), y, "o", color="white", mec=color, ms=5)
        ax.set_title(label(metric))
        ax.set_xlabel("contrast")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels([textwrap.fill(f"{name.replace('`', '')} ({fam}, {seeds[name, fam]})", 40)
                                for name, fam in names], fontsize=8)
    axes[0][0].invert_yaxis()
    handles = [plt.Line2D([], [], color=c, lw=4, label=o) for o, c in OUTCOME_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)   # off the data
    interim = any((r["result"] or {}).get("interim") for _, r in rows)
    fig.suptitle("Each test's own 95 % interval (thin) and 90 % interval (thick, the one TOST reads); "
                 "colour: the Holm-adjusted outcome" + ("\nINTERIM: seeds still running, so any outcome can still "
                                                        "change (Holm adjusts over the whole family)" if interim else ""),
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
