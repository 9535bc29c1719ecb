"""Study 2's decision rule: contrasts over models, estimated from per-image contributions, and their outcomes.

A *contrast* gives each model a weight (``{"mtl": 1, "cat": -1}`` is a paired difference; the 2x2 factorial's
main effects and interaction are contrasts of four models). Per seed it is the weighted sum of the models'
metrics, all trained with that seed and scored on the same test images, so its noise has a seed term and an image
term shared by every seed. :func:`estimate` builds the seeds x images matrix of per-image contributions (hits for
top-k accuracy, jackknife pseudo-values for mAP, the per-image values of the attention measures) and hands it to
:func:`vfu_nb.stats.variance_components`.

:func:`decide` applies the preregistered rule to a family of estimates (results/v2/plan.yaml):

* **established** -- the Holm-adjusted two-sided p < alpha (direction: the sign of the mean);
* **equivalent** -- not established, and the Holm-adjusted TOST p < alpha against the declared margin (stricter
  than the unadjusted TOST, which is the 90 % interval lying inside (-margin, +margin));
* **inconclusive** -- neither. It never means "no effect": the interval says how large an effect is still possible.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from vfu_nb import stats

OUTCOMES = ("established", "equivalent", "inconclusive")
CONTRAST_NAMES = {"mtl_vs_cat": "`mtl` − `cat`", "landmark_loss": "main effect of the landmark loss",
                  "attention": "main effect of the attention", "interaction": "interaction landmark loss × attention",
                  "control_mtl_vs_cat": "`mtl` − `cat` on the displaced-evidence control"}


def contrast_name(row: dict) -> str:
    """A readable name of a contrast row (its weights for the ones without a name)."""
    if row["contrast"] in CONTRAST_NAMES:
        return CONTRAST_NAMES[row["contrast"]]
    terms = []
    for i, (model, w) in enumerate(row["weights"].items()):
        sign = ("−" if w < 0 else "") if i == 0 else (" − " if w < 0 else " + ")
        terms.append(f"{sign}{'' if abs(w) == 1 else f'{abs(w):g}·'}`{model}`")
    return "".join(terms)


#: Per-image measures stored in predictions.npz by the export (vfu_nb.attention_mass), usable as metrics here.
WHERE_MEASURES = ("attention_lift", "saliency_lift", "attention_pointing", "saliency_pointing")


def per_image(metric: str, predictions: Mapping, labels: Mapping) -> np.ndarray:
    """Per-image contributions of one run to ``metric`` on its test images (their mean, or for mAP the mean of the
    pseudo-values, estimates the metric): top-k hits, mAP jackknife pseudo-values, or an attention measure
    (nan where undefined)."""
    if metric.startswith("category_top"):
        return (np.asarray(predictions["category_rank"]) < int(metric[len("category_top"):])).astype(float)
    if metric == "attr_map_all":
        return map_pseudovalues(_ranked_ap(predictions, labels))
    if metric in WHERE_MEASURES:
        return np.asarray(predictions[metric], dtype=float)
    raise ValueError(f"no per-image form of metric {metric!r}")


def value(metric: str, predictions: Mapping, labels: Mapping) -> float:
    """The run's ``metric`` on all its test images (mAP as the metrics module computes it; measures: nan-mean)."""
    return run_contributions(metric, predictions, labels)[1]


def run_contributions(metric: str, predictions: Mapping, labels: Mapping) -> tuple[np.ndarray, float]:
    """``(per_image(...), value(...))`` of one run; for mAP its attribute scores are ranked once for both."""
    if metric == "attr_map_all":
        ap = _ranked_ap(predictions, labels)
        return map_pseudovalues(ap), _full_map(ap)
    contributions = per_image(metric, predictions, labels)
    return contributions, float(np.nanmean(contributions))


def map_pseudovalues(ap) -> np.ndarray:
    """Jackknife pseudo-values of the mean AP over attributes (:func:`vfu_nb.stats.jackknife_pseudovalues`) from a
    :class:`vfu_nb.metrics.ResampledAveragePrecision`, one per image; an attribute left without a known positive
    when an image is left out drops out of that mean, as it does from the metric."""
    from vfu_nb.metrics import mean_over_attributes

    return stats.jackknife_pseudovalues(_full_map(ap), mean_over_attributes(ap.leave_one_out()))


def _full_map(ap) -> float:
    """The mean AP over attributes on every image of a ranked :class:`vfu_nb.metrics.ResampledAveragePrecision`."""
    from vfu_nb.metrics import mean_over_attributes

    return float(mean_over_attributes(ap(np.arange(len(ap.order)))))


def _ranked_ap(predictions: Mapping, labels: Mapping):
    """The run's attribute scores ranked once (vfu_nb.metrics, ties included; unknown labels left out)."""
    from vfu_nb.metrics import ResampledAveragePrecision

    attrs = labels["attributes"]
    return ResampledAveragePrecision(predictions["attribute_logits"], attrs > 0, attrs != 0)


def estimate(weights: Mapping[str, float], runs: Mapping[tuple, Mapping], metric: str, labels: Mapping,
             cache: Optional[dict] = None) -> Optional[stats.Estimate]:
    """The contrast ``weights`` of ``metric`` over the seeds every weighted model has in ``runs`` ((model, seed) ->
    predictions). Images where a contribution is undefined for some run are left out. None without a common seed.
    ``cache`` keeps per-run contributions between contrasts (keyed by id of the predictions and the metric)."""
    cache = {} if cache is None else cache
    seeds = sorted(set.intersection(*({s for (m, s) in runs if m == model} for model in weights)))
    if not seeds:
        return None

    def contributions(model, seed):
        pred = runs[(model, seed)]
        key = (id(pred), metric)
        if key not in cache:
            cache[key] = run_contributions(metric, pred, labels)
        return cache[key]

    u = np.array([sum(w * contributions(m, s)[0] for m, w in weights.items()) for s in seeds])
    keep = np.isfinite(u).all(0)
    if keep.sum() < 2:
        return None
    point = None
    if metric == "attr_map_all":            # pseudo-values are bias-corrected: centre on the plain differences
        point = float(np.mean([sum(w * contributions(m, s)[1] for m, w in weights.items()) for s in seeds]))
    return stats.variance_components(u[:, keep], point)


def decide(estimates: Sequence[Optional[stats.Estimate]], margins: Sequence[Optional[float]],
           alpha: float = 0.05) -> list[Optional[dict]]:
    """The outcome of each estimate of one family: its 95 % and 90 % intervals, p and TOST p, both Holm-adjusted
    across the family, ``outcome`` (:data:`OUTCOMES`), ``direction`` (+1/-1 when established) and
    ``within_margin`` (an established effect whose 90 % interval is also inside the margin)."""
    p_holm = stats.holm([e.p if e else math.nan for e in estimates])
    tost_holm = stats.holm([e.tost(m) if e and m is not None else math.nan for e, m in zip(estimates, margins)])
    out = []
    for e, margin, p, p_tost in zip(estimates, margins, p_holm, tost_holm):
        if e is None:
            out.append(None)
            continue
        established = math.isfinite(p) and p < alpha
        equivalent = math.isfinite(p_tost) and p_tost < alpha
        low90, high90 = e.interval(0.90)
        out.append({**e.as_dict(0.95), "low90": low90, "high90": high90, "margin": margin,
                    "p_tost": e.tost(margin) if margin is not None else math.nan, "p_holm": p, "p_tost_holm": p_tost,
                    "outcome": "established" if established else "equivalent" if equivalent else "inconclusive",
                    "direction": (1 if e.mean > 0 else -1) if established else 0,
                    "within_margin": bool(established and equivalent)})
    return out


__all__ = ["OUTCOMES", "CONTRAST_NAMES", "contrast_name", "WHERE_MEASURES", "per_image", "value", "estimate", "decide"]
