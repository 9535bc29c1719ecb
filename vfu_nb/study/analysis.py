"""Statistics over a study's exported runs: what ``study.json`` holds (:mod:`vfu_nb.study.report` writes and
renders it).

* The first study (:func:`study_results`): per model, mean, sd and n over seeds (:func:`summarize`); per pair of
  models, paired t-intervals over seeds and paired bootstraps over seeds x test images for the primary metrics,
  established only when both exclude 0, and Holm-adjusted t-tests for the secondary metrics (:func:`compare`,
  :func:`verdict`, :mod:`vfu_nb.stats`); the same at each point of the learning curve and on each tree of the dial.
* A preregistered study (:func:`preregistered_results`): one interval per contrast over seeds x images and the
  three outcomes established / equivalent / inconclusive (:mod:`vfu_nb.study.contrasts`), where attention and
  saliency fall (:func:`where_attention_falls`), and what the contrasts establish together (:func:`mechanism`).
* Both: the chosen settings and tuning table (:func:`vfu_nb.study.plan.choose_settings`), the baselines of the data
  trees (:func:`baselines_for`) and the run counts and hours.

Every number comes from ``results/`` (the exports, the labels and the committed baselines).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from vfu_nb import stats
from vfu_nb.conventions import LOWER_IS_BETTER
from vfu_nb.training.runs import converged
from vfu_nb.study import contrasts, store
from vfu_nb.study.plan import (REPO, Plan, RunSpec, choose_settings, drifted_runs, exported, planned_runs,
                               tuning_lrs)

#: Metrics declared primary before the study ran; everything else in :data:`SECONDARY` is secondary.
PRIMARY = ("category_top3", "attr_map_all")
SECONDARY = ("category_top1", "attr_top3_all_grouped", "attr_map_texture", "attr_map_fabric", "attr_map_shape",
             "attr_map_part", "attr_map_style", "landmark_ne_mean")


@dataclass
class RunResult:
    """An exported run: its metrics.json and, loaded on demand, its per-image test predictions."""

    spec: RunSpec
    metrics: dict
    path: Path

    def predictions(self, labels: Optional[dict] = None) -> dict:
        """The per-image test predictions; with the tree's ``labels``, held to metrics.json first (an edited or
        damaged file is one line naming it and the way out)."""
        p = store.read_predictions(self.path, self.spec.key)
        if labels is not None:
            store.check_predictions(self.path, self.spec.key, self.metrics, p, labels)
        return p


def load_runs(plan: Plan, specs: Sequence[RunSpec]) -> list[RunResult]:
    """The exported, finished runs among ``specs`` (unfinished and failed ones are left out)."""
    out = []
    for s in specs:
        m = exported(plan, s.key)
        if m is not None and not m.get("failed"):
            out.append(RunResult(s, m, plan.export_dir(s.key)))
    return out


def _labels(plan: Plan, tag: str) -> dict:
    return store.read_labels(plan.results_dir, tag)


def run_seconds(result: RunResult) -> float:
    """Seconds a run spent training and evaluating, summed over its epochs (so across resumes too)."""
    return store.trained_seconds(store.results_dir_of(result.path, result.spec.key), result.spec.key)


def image_metric(name: str, labels: dict):
    """``metric(predictions, idx)`` for the bootstrap: the test value of ``name`` on the images ``idx``."""
    if name.startswith("category_top"):
        k = int(name[len("category_top"):])
        return lambda p, idx: float(np.mean(p["category_rank"][idx] < k))
    if name == "attr_map_all":
        from vfu_nb.metrics import ResampledAveragePrecision, mean_over_attributes

        attrs, ranked = labels["attributes"], {}      # one ranking per run's logits, reused by every replicate

        def mean_ap(p, idx):
            key = id(p["attribute_logits"])
            if key not in ranked:
                ranked[key] = (p["attribute_logits"], ResampledAveragePrecision(p["attribute_logits"], attrs > 0,
                                                                                attrs != 0))
            return float(mean_over_attributes(ranked[key][1](idx)))
        return mean_ap
    raise ValueError(f"no image-level form of metric {name!r}")


def _value(metrics: dict, name: str) -> float:
    v = (metrics.get("test") or {}).get(name)
    return float("nan") if v is None else float(v)


def summarize(results: Sequence[RunResult], metrics: Sequence[str]) -> list[dict]:
    """Mean, sample std and n over seeds per model and metric (test split, best val epoch)."""
    rows = []
    for model in dict.fromkeys(r.spec.model for r in results):
        runs_m = [r for r in results if r.spec.model == model]
        for name in metrics:
            vals = np.array([_value(r.metrics, name) for r in runs_m])
            vals = vals[np.isfinite(vals)]
            rows.append({"model": model, "metric": name, "n": len(vals), "values": vals.tolist(),
                         "mean": float(vals.mean()) if len(vals) else math.nan,
                         "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
                         "not_converged": sum(not converged(r.metrics) for r in runs_m)})
    return rows


def compare(plan: Plan, results: Sequence[RunResult], a: str, b: str, metrics_primary=PRIMARY,
            metrics_secondary=SECONDARY, seed: int = 0) -> dict:
    """Paired comparison of models ``a`` and ``b`` over their common seeds (same data tag).

    Primary metrics: t-interval over seeds and bootstrap over seeds x images; established when both exclude 0.
    Secondary metrics: t-interval with Holm-adjusted p-values across them; established when adjusted p < 0.05.
    """
    by = {(r.spec.model, r.spec.seed): r for r in results}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    out = {"a": a, "b": b, "seeds": seeds, "primary": {}, "secondary": {}}
    if not seeds:
        return out
    tag = by[(a, seeds[0])].spec.data
    labels = _labels(plan, tag)
    preds_a = [by[(a, s)].predictions(labels) for s in seeds]
    preds_b = [by[(b, s)].predictions(labels) for s in seeds]
    for name in metrics_primary:
        d = [_value(by[(a, s)].metrics, name) - _value(by[(b, s)].metrics, name) for s in seeds]
        t = stats.paired_t_interval(d)
        boot = stats.paired_bootstrap(preds_a, preds_b, image_metric(name, labels), len(labels["category"]),
                                      n_boot=plan.bootstrap, seed=seed)
        out["primary"][name] = {"t": t.as_dict(), "bootstrap": boot.as_dict(),
                                "verdict": verdict(name, t, boot)}
    rows = {}
    for name in metrics_secondary:
        d = [_value(by[(a, s)].metrics, name) - _value(by[(b, s)].metrics, name) for s in seeds]
        rows[name] = stats.paired_t_interval(d)
    adjusted = stats.holm([t.p for t in rows.values()])
    for (name, t), p_adj in zip(rows.items(), adjusted):
        established = math.isfinite(p_adj) and p_adj < 0.05
        out["secondary"][name] = {"t": t.as_dict(), "p_holm": p_adj,
                                  "verdict": _direction(name, t.mean) if established else "no difference established"}
    return out


def _direction(metric: str, diff: float) -> str:
    better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
    return "a better" if better else "b better"


def verdict(metric: str, *intervals: stats.Interval) -> str:
    """"a better" / "b better" when every interval excludes 0 on the same side, else "no difference established"."""
    sides = {("pos" if i.low > 0 else "neg") for i in intervals if i.excludes_zero}
    if len(sides) == 1 and all(i.excludes_zero for i in intervals):
        return _direction(metric, intervals[0].mean)
    return "no difference established"


VERDICTS = ("a better", "b better", "no difference established")


def by_verdict(rows) -> dict:
    """``{verdict: [x, ...]}`` of ``[(x, result), ...]``, every verdict of :data:`VERDICTS` present (possibly
    empty), in the order of ``rows``."""
    return {v: [x for x, r in rows if r["verdict"] == v] for v in VERDICTS}


def gains_across(named_pairs: list) -> list[dict]:
    """Per pair and primary metric over ``[(setting name, pair), ...]`` (the learning curve's points, the dial's
    trees): ``a``, ``b``, ``metric``, ``settings`` (:func:`by_verdict` of the setting names) and ``largest``, the
    setting with the largest mean gain, with that gain as ``largest_mean``."""
    rows_of = {}
    for name, pair in named_pairs:
        for metric, r in pair["primary"].items():
            rows_of.setdefault((pair["a"], pair["b"], metric), []).append((name, r))
    out = []
    for (a, b, metric), rows in rows_of.items():
        name, r = max(rows, key=lambda nr: -math.inf if nr[1]["t"]["mean"] is None else nr[1]["t"]["mean"])
        out.append({"a": a, "b": b, "metric": metric, "settings": by_verdict(rows), "largest": name,
                    "largest_mean": r["t"]["mean"]})
    return out


def grid_edge(lr, grid) -> Optional[str]:
    """``"largest"`` or ``"smallest"`` when ``lr`` is that end of a grid of at least two values (the best setting
    may lie outside it); None when it is interior or the grid has one value."""
    values = sorted(grid)
    if len(values) < 2 or lr not in (values[0], values[-1]):
        return None
    return "largest" if lr == values[-1] else "smallest"


def grid_edge_models(study: dict) -> dict:
    """``{"largest" | "smallest": [model, ...]}``: the models whose chosen learning rate is an end of the first
    study's one grid (:func:`grid_edge`); {} when none is."""
    ends = {}
    for model, setting in study.get("chosen", {}).items():
        end = grid_edge(setting.get("lr"), study.get("grid", {}).get("lr", []))
        if end:
            ends.setdefault(end, []).append(model)
    return ends


def skeleton(plan: Plan) -> dict:
    """What study.json says before any result: the plan's settings (the README block renders from it)."""
    return {"plan": str(plan.path.relative_to(REPO)) if plan.path and plan.path.is_relative_to(REPO) else None,
            "base": plan.base, "data": plan.data, "grid": plan.tuning["grid"],
            "seed_counts": plan.seeds["models"], "primary": list(PRIMARY), "secondary": list(SECONDARY),
            "changelog": plan.changelog,
            "runs": {"tuning_exported": 0, "tuning_planned": len(plan.tuning_specs(tuning_lrs(plan)))}}


def baselines_for(plan: Plan, required=(), log=print) -> dict:
    """Test-split baselines of every data tree the plan uses, committed with the results: computed into
    ``results/baselines/<tag>.json`` when the tree is on disk, read from there when it is not ({} for neither;
    :class:`vfu_nb.study.store.StudyInputError` for a tree in ``required``, whose baselines the report shows)."""
    return {tag: store.tree_baselines(plan.results_dir, tag, plan.data[tag], plan.data_root(tag),
                                         tag in required, log)
            for tag in plan.data}


def study_results(plan: Plan, log=print) -> dict:
    """What ``results/study.json`` holds for a plan without a preregistration (the first study), from the exported
    runs: the chosen settings and tuning table, per-model summaries of the seed runs, the paired comparisons
    (:func:`compare`), the learning curve's and the dial's points, the baselines, and the run counts.

    Works on a study in progress: models whose tuning is unfinished are listed in ``tuning_unfinished`` and
    left out; the learning curve and the dial appear once they have runs.
    """
    study = skeleton(plan)
    chosen, tuning_rows = choose_settings(plan, partial=True)
    drift = drifted_runs(plan, chosen)
    if drift:
        log(f"[study] WARNING: {len(drift)} settings of exported runs differ from the plan (edited after they "
            f"finished; delete results/runs/<key> to retrain one):\n  " + "\n  ".join(drift[:20]))
    if not chosen:                                          # no model is tuned yet: report the progress only
        tuning = plan.tuning_specs(tuning_lrs(plan))          # the grid as extended so far
        study["runs"] = {"tuning_exported": sum(exported(plan, s.key) is not None for s in tuning),
                         "tuning_planned": len(tuning)}
        return study
    specs = plan.later_specs(chosen)
    metrics_all = (*PRIMARY, *SECONDARY)
    seeds_results = load_runs(plan, [s for s in specs if s.part == "seeds"])
    study.update({"chosen": chosen, "tuning": tuning_rows,
                  "tuning_unfinished": [m for m in plan.tuning["models"] if m not in chosen],
                  "seeds": {"data": plan.seeds["data"], "summary": summarize(seeds_results, metrics_all),
                            "pairs": [compare(plan, seeds_results, a, b) for a, b in plan.seeds["pairs"]
                                      if a in chosen and b in chosen]}})
    if plan.learning_curve:
        lc = plan.learning_curve
        models = [m for m in lc["models"] if m in chosen]
        points = []
        for f in lc["fractions"]:
            rs = load_runs(plan, [plan.spec("learning_curve", lc["data"], m, chosen[m], s, f)
                                  for m in models for s in plan.seed_range(lc)])
            if rs:
                points.append({"fraction": f, "summary": summarize(rs, PRIMARY),
                               "pairs": [compare(plan, rs, a, b, metrics_secondary=()) for a, b in lc.get(
                                   "pairs", [["mtl", "cat"], ["mtl", "mtl_no_landmarks"]])
                                   if a in chosen and b in chosen]})
        if any(p["fraction"] < 1 for p in points):
            study["learning_curve"] = {"data": lc["data"], "points": points}
    if plan.dial and all(m in chosen for m in plan.dial["models"]):
        dial = plan.dial
        rows = []
        for tag in (plan.seeds["data"], dial["data"]):
            rs = load_runs(plan, [plan.spec("dial", tag, m, chosen[m], s)
                                  for m in dial["models"] for s in plan.seed_range(dial)])
            rows.append({"data": tag, "settings": {k: v for k, v in plan.data[tag].items() if k != "root"},
                         "summary": summarize(rs, PRIMARY),
                         "pair": compare(plan, rs, dial["models"][0], dial["models"][1], metrics_secondary=())})
        if rows[-1]["pair"]["seeds"]:
            study["dial"] = rows
    study["baselines"] = baselines_for(plan, required=store.shown_trees(study), log=log)
    unique = plan.all_specs(chosen, tuning_lrs(plan))
    every = load_runs(plan, unique)
    failed = [s.key for s in unique if (exported(plan, s.key) or {}).get("failed")]
    study["runs"] = {"exported": len(every), "planned": planned_runs(plan), "failed": failed,
                     "train_hours": sum(run_seconds(r) for r in every) / 3600}
    return study


def preregistered_results(plan: Plan, log=print) -> dict:
    """What ``study.json`` holds for a preregistered plan (study 2): the chosen settings, per-model summaries of the
    seed and control runs, every contrast of the primary and secondary families with its outcome
    (:mod:`vfu_nb.study.contrasts`), the primary contrasts again without the runs reused from the first study
    (``fresh_seeds_family``, a check that is not preregistered), where attention and saliency fall, the baselines
    of the trees the levels table shows, and the changelog. Every run's metrics.json is held to its predictions,
    and a shown tree without baselines stops it (:class:`vfu_nb.study.store.StudyInputError`). Works on a study
    in progress: contrasts whose models have no common seed yet have no outcome (None)."""
    pre = plan.preregistration
    chosen, tuning_rows = choose_settings(plan, partial=True)
    lrs = tuning_lrs(plan)
    study = {**skeleton(plan), "preregistration": pre, "chosen": chosen,
             "tuning": tuning_rows, "tuning_grids": lrs,
             "tuning_unfinished": [m for m in plan.tuning["models"] if m not in chosen],
             "grid_edges": {m: grid_edge(s["lr"], lrs[m]) for m, s in chosen.items()
                            if m in lrs and grid_edge(s["lr"], lrs[m])}}
    drift = drifted_runs(plan, chosen)
    if drift:
        log(f"[study] WARNING: {len(drift)} settings of exported runs differ from the plan:\n  " + "\n  ".join(drift[:20]))
    specs = [s for s in plan.later_specs(chosen) if s.part in ("seeds", "control")]
    results = load_runs(plan, specs)
    metrics_all = (*PRIMARY, *SECONDARY)
    study["summary"] = {part: summarize([r for r in results if r.spec.part == part], metrics_all)
                        for part in ("seeds", "control") if any(r.spec.part == part for r in results)}
    study["summary_trees"] = {"seeds": plan.seeds["data"], "control": (plan.control or {}).get("data")}
    labels = {tag: _labels(plan, tag) for tag in dict.fromkeys(r.spec.data for r in results)}
    runs = {}
    for r in results:                           # each held to its metrics.json, as in the first study
        runs.setdefault(r.spec.data, {})[(r.spec.model, r.spec.seed)] = r.predictions(labels[r.spec.data])
    cache = {}

    reused = {s.key for s in specs if (plan.export_dir(s.key) / "origin.json").exists()}
    reused_seeds = {}                                                   # (tree, model) -> seeds copied from study 1
    for s in specs:
        if s.key in reused:
            reused_seeds.setdefault((s.data, s.model), set()).add(s.seed)

    def family(contrast_set: dict, metrics: Sequence[str], margins: Mapping, fresh: bool = False) -> list:
        """One Holm family; ``fresh``: over the seeds no reused run of the contrast's models contributed to."""
        rows, estimates = [], []
        for name, c in contrast_set.items():
            tree, dropped = runs.get(c["data"], {}), set()
            if fresh:
                dropped = set().union(*(reused_seeds.get((c["data"], m), set()) for m in c["weights"]))
                tree = {(m, seed): p for (m, seed), p in tree.items() if seed not in dropped}
            part = plan.seeds if c["data"] == plan.seeds.get("data") else (plan.control or {})
            planned = set(plan.seed_range(part, planned_seeds(plan, c["data"], c["weights"]))) - dropped
            for metric in metrics:
                e = (contrasts.estimate(c["weights"], tree, metric, labels[c["data"]], cache)
                     if tree and all(m in chosen for m in c["weights"]) else None)
                rows.append({"contrast": name, "data": c["data"], "weights": c["weights"], "metric": metric,
                             "planned": len(planned)})
                estimates.append(e)
        decided = contrasts.decide(estimates, [margins.get(r["metric"]) for r in rows], float(pre.get("alpha", 0.05)))
        counts = [(d or {}).get("n", 0) for d in decided]
        # Holm adjusts each p by the whole family's: an outcome can change while any test of its family waits
        family_interim = any(n < row["planned"] for n, row in zip(counts, rows))
        return [{**row, "n": n, "result": d and {**d, "interim": family_interim}}
                for row, d, n in zip(rows, decided, counts)]

    primary = pre["primary_metrics"]
    study["primary_family"] = family(pre["primary_family"], primary, pre.get("margins", {}))
    study["secondary_family"] = family(pre.get("secondary_family", {}), primary, pre.get("margins", {}))
    # Not preregistered: the primary contrasts that rest partly on reused first-study runs (the runs whose result
    # suggested the hypotheses), again on the seeds none of those runs contributed to, Holm across them
    leaning = {name: c for name, c in pre["primary_family"].items()
               if any((c["data"], m) in reused_seeds for m in c["weights"])}
    study["fresh_seeds_family"] = family(leaning, primary, pre.get("margins", {}), fresh=True)
    study["reused_seeds"] = {part: {m: sorted(s.seed for s in specs if s.part == part and s.model == m and s.key in reused)
                                    for m in dict.fromkeys(s.model for s in specs if s.part == part)}
                             for part in study["summary"]}
    measurable = {}                                                     # reused runs lack the measures
    for s in specs:
        if s.key not in reused:
            measurable.setdefault((s.data, s.model), set()).add(s.seed)
    study["where"] = where_attention_falls(runs, labels, cache, float(pre.get("alpha", 0.05)), measurable)
    study["baselines"] = baselines_for(plan, required={study["summary_trees"][part] for part in study["summary"]},
                                       log=log)                       # the trees the levels table shows
    unique = plan.all_specs(chosen, lrs)
    every = load_runs(plan, unique)
    study["runs"] = {"exported": len(every), "planned": planned_runs(plan),
                     "failed": [s.key for s in unique if (exported(plan, s.key) or {}).get("failed")],
                     "reused": sum((plan.export_dir(s.key) / "origin.json").exists() for s in unique),
                     "train_hours": sum(run_seconds(r) for r in every) / 3600}
    return study


def planned_seeds(plan: Plan, data: str, models) -> int:
    """How many paired seeds the plan gives a contrast of ``models`` on tree ``data``: the fewest of its models'
    seed counts there (0 for a model the plan does not train there)."""
    counts = []
    for m in models:
        n = 0
        if data == plan.seeds.get("data"):
            n = int(plan.seeds["models"].get(m, 0))
        if plan.control and data == plan.control.get("data") and m in plan.control.get("models", ()):
            n = max(n, int(plan.control["seeds"]))
        counts.append(n)
    return min(counts, default=0)


def where_attention_falls(runs: Mapping, labels: Mapping, cache: dict, alpha: float = 0.05,
                          measurable: Optional[Mapping] = None) -> dict:
    """Per data tree and model: the mean attention and saliency lift (1 = no preference for the landmarks) and
    pointing rates, each lift with its interval and the outcome of "lift differs from 1" (one Holm family); and
    mtl - mtl_no_landmarks in attention lift (does the landmark loss move the attention to the landmarks?).
    Over the runs whose export holds the measure (runs reused from the first study do not). ``measurable``:
    ``(tree, model) -> the planned seeds whose runs will hold it``; each row's ``planned`` and every result's
    ``interim`` (True while any planned run of a tree or model is unmeasured, row or not) come from it."""
    measurable = measurable or {}
    measured = {}                                       # (tree, model) -> the seeds whose export holds the measures
    for tag, every in runs.items():
        for (m, s), p in every.items():
            if "saliency_lift" in p:
                measured.setdefault((tag, m), set()).add(s)
    rows, estimates = [], []
    for tag, every in runs.items():
        for measure in ("attention_lift", "saliency_lift"):
            by = {key: p for key, p in every.items() if measure in p}     # runs exported with the measure
            pointing = measure.replace("lift", "pointing")
            for model in dict.fromkeys(m for m, _ in by):
                own = [p for (m, _), p in by.items() if m == model]
                e = contrasts.estimate({model: 1}, by, measure, labels[tag], cache)
                rows.append({"data": tag, "model": model, "measure": measure, "mean": e.mean if e else None,
                             "runs": len(own), "planned": len(measurable.get((tag, model), ())) or len(own),
                             "pointing": float(np.nanmean([np.nanmean(p[pointing]) for p in own])),
                             "region_fraction": float(np.nanmean([np.nanmean(p["region_fraction"]) for p in own]))})
                estimates.append(dataclasses.replace(e, mean=e.mean - 1) if e else None)   # test: lift = 1
            if measure == "attention_lift" and {"mtl", "mtl_no_landmarks"} <= {m for m, _ in by}:
                e = contrasts.estimate({"mtl": 1, "mtl_no_landmarks": -1}, by, measure, labels[tag], cache)
                rows.append({"data": tag, "model": "mtl - mtl_no_landmarks", "measure": measure,
                             "runs": e.n_seeds if e else 0,
                             "planned": len(measurable.get((tag, "mtl"), set())
                                            & measurable.get((tag, "mtl_no_landmarks"), set()))})
                estimates.append(e)
    decided = contrasts.decide(estimates, [None] * len(estimates), alpha)
    interim = (any(r["runs"] < r["planned"] for r in rows)
               or any(not seeds <= measured.get(key, set()) for key, seeds in measurable.items()))
    return {"radius": _attention_radius(),
            "rows": [{**r, "result": d and {**d, "interim": interim}} for r, d in zip(rows, decided)]}


def _attention_radius() -> float:
    from vfu_nb.attention_mass import RADIUS

    return RADIUS


def _family_row(study: dict, contrast: str, metric: str) -> Optional[dict]:
    return next((r["result"] for r in study.get("primary_family", [])
                 if r["contrast"] == contrast and r["metric"] == metric), None)


def _established_gain(result: dict) -> bool:
    return result["outcome"] == "established" and result["direction"] > 0


def mechanism(study: dict) -> list[dict]:
    """Per primary metric of a preregistered study, what the factorial and the negative control establish together.

    Each row: ``metric``; ``results`` (contrast name -> its result in the primary family, None while unmeasured);
    ``reading``: None until ``mtl_vs_cat``, both main effects and the control are measured, then
    ``"no_gain"`` (no established gain of mtl over cat), ``"no_source"`` (a gain, but neither main effect is
    established) or ``"gain"``; with "gain" and "no_gain", ``source`` (``"landmark_loss"``, ``"attention"``,
    ``"both"``: the main effects established as gains; None when neither is); with "gain", ``control`` /
    ``control_direction`` (the outcome and direction of mtl - cat on the displaced-evidence tree); with a reading
    and the interaction measured, ``interaction`` / ``interaction_direction`` (its outcome and sign: negative when
    the landmark loss adds less with the attention than without it); ``interim``: True while any of those results
    is interim (the reading may still change).
    """
    out = []
    for metric in study["preregistration"]["primary_metrics"]:
        r = {c: _family_row(study, c, metric) for c in contrasts.CONTRAST_NAMES}
        row = {"metric": metric, "results": r, "reading": None}
        out.append(row)
        gain, loss, attention, control = (r[c] for c in ("mtl_vs_cat", "landmark_loss", "attention",
                                                         "control_mtl_vs_cat"))
        if not (gain and loss and attention and control):
            continue
        interaction = r["interaction"]
        row["interim"] = any(x.get("interim", False) for x in (gain, loss, attention, control, interaction) if x)
        if interaction:
            row.update(interaction=interaction["outcome"], interaction_direction=interaction.get("direction", 0))
        sources = [name for name, x in (("landmark_loss", loss), ("attention", attention)) if _established_gain(x)]
        source = ("both" if len(sources) == 2 else sources[0]) if sources else None
        if not _established_gain(gain):
            row.update(reading="no_gain", source=source)
            continue
        if not sources:
            row["reading"] = "no_source"
            continue
        row.update(reading="gain", source=source, control=control["outcome"], control_direction=control["direction"])
    return out


def landmark_supervision_gains(study: dict) -> list[str]:
    """The primary metrics (first study) where ``mtl`` beats ``cat`` and ``mtl_no_landmarks``, and
    ``mtl_no_landmarks`` shows no established difference from ``cat``: the landmark loss adds to the gain (whether
    the added layers do too stays open). Empty unless all three pairs were compared."""
    pairs = {(p["a"], p["b"]): p for p in study["seeds"]["pairs"] if p["seeds"]}
    trio = [pairs.get(k) for k in (("mtl", "cat"), ("mtl", "mtl_no_landmarks"), ("mtl_no_landmarks", "cat"))]
    if not all(trio):
        return []
    return [m for m in PRIMARY if [p["primary"].get(m, {}).get("verdict") for p in trio]
            == ["a better", "a better", "no difference established"]]
