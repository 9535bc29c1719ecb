"""MTL versus CAT in numbers and words (thesis sections 3.3 and 3.5): relative improvements, Table 3.2, the
attribute table, and the sentences the notebooks print about them.

* :func:`improvement_table` -- the "+53% category accuracy, +149% attribute recall" computation of section 3.3
  redone on our runs: relative improvement = (MTL - CAT) / CAT of the best-epoch values. The thesis took each
  model's best **test** epoch per metric (0.8605 at epoch 3 vs 0.5621 at epoch 4; texture 0.5287 vs 0.2124).
  We select the epoch on **val** (top-3 category accuracy) and report test values there (``select="val"``);
  ``select="best"`` reproduces the thesis' rule.
* :func:`table_3_2`, :func:`attribute_table` -- our top-3 category accuracy and attribute mAP beside the
  baselines of the same data and the published numbers (:data:`vfu_nb.conventions.PUBLISHED_CATEGORY_TOP3`, each
  with its paper); top-3 recall and mAP per attribute type likewise.
* :func:`comparison_sentence`, :func:`baseline_sentence` -- where MTL stands against CAT, and runs against the
  baselines (``{name: flat metrics}`` of :func:`vfu_nb.baselines.compute_baselines`).

Every sentence is computed from the numbers it is given; none is fixed text about the outcome. The figures of
the comparison are in :mod:`vfu_nb.plots.compare`.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import pandas as pd

from vfu_nb.conventions import (
    ATTRIBUTE_TYPES, LOWER_IS_BETTER, PUBLISHED_ATTRIBUTE_TOP3, PUBLISHED_CATEGORY_TOP3, THESIS_IMPROVEMENTS,
    baseline_label, metric_label, reference_baselines,
)
from vfu_nb.history import best_epoch_value
from vfu_nb.metrics import MAP_GROUPS

#: Baseline rows of Table 3.2 and of the attribute table, in order (those a baseline dict lacks are left out).
CATEGORY_TABLE_BASELINES = ("geometry_knn", "class_prior", "attribute_prior_given_category", "chance")
ATTRIBUTE_TABLE_BASELINES = ("attribute_prior_given_category", "geometry_knn", "attribute_prior", "chance")


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
    :func:`vfu_nb.conventions.reference_baselines`): 'Top-3 category accuracy: MTL 0.6000, CAT 0.5000; against
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
