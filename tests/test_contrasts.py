"""vfu_nb.study.contrasts: per-image contributions, contrast estimates and the preregistered three-outcome rule."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vfu_nb import stats
from vfu_nb.study import contrasts
from vfu_nb.metrics import average_precision

N, K = 60, 4


def fake_predictions(rng, skill):
    """A run's exported predictions: category ranks (rank < 3 more often with skill) and attribute logits."""
    return {"category_rank": np.where(rng.random(N) < skill, 0, 5).astype(np.int16),
            "attribute_logits": rng.normal(size=(N, K)).astype(np.float32)}


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    attributes = np.where(rng.random((N, K)) < 0.3, 1, -1)
    attributes[:5, 0] = 0                                            # unknown labels are left out of AP
    return {"category": np.zeros(N, int), "attributes": attributes}


def test_per_image_contributions_average_to_the_metric(labels):
    pred = fake_predictions(np.random.default_rng(1), 0.7)
    hits = contrasts.per_image("category_top3", pred, labels)
    assert set(np.unique(hits)) <= {0.0, 1.0} and hits.mean() == contrasts.value("category_top3", pred, labels)
    known = labels["attributes"] != 0
    aps = [average_precision(pred["attribute_logits"][known[:, k], k:k + 1],
                             labels["attributes"][known[:, k], k:k + 1] > 0)[0] for k in range(K)]
    assert contrasts.value("attr_map_all", pred, labels) == pytest.approx(float(np.mean(aps)))
    pseudo = contrasts.per_image("attr_map_all", pred, labels)
    assert pseudo.shape == (N,) and abs(pseudo.mean() - np.mean(aps)) < 0.05     # jackknife: bias-corrected
    with pytest.raises(ValueError, match="no per-image form"):
        contrasts.per_image("landmark_ne_mean", pred, labels)


def test_a_contrast_uses_the_common_seeds_and_its_weights(labels):
    rng = np.random.default_rng(2)
    runs = {(m, s): fake_predictions(rng, skill) for m, skill in (("a", 0.8), ("b", 0.5), ("c", 0.5), ("d", 0.5))
            for s in range(5)}
    del runs[("b", 4)]                                               # b lacks seed 4: 4 common seeds
    e = contrasts.estimate({"a": 1, "b": -1}, runs, "category_top3", labels)
    u = np.array([contrasts.per_image("category_top3", runs[("a", s)], labels)
                  - contrasts.per_image("category_top3", runs[("b", s)], labels) for s in range(4)])
    assert e.n_seeds == 4 and e == stats.variance_components(u)
    factorial = contrasts.estimate({"a": .5, "c": .5, "b": -.5, "d": -.5}, runs, "category_top3", labels)
    means = {m: np.mean([runs[(m, s)]["category_rank"].__lt__(3).mean() for s in range(4)]) for m in "abcd"}
    assert factorial.mean == pytest.approx(.5 * (means["a"] + means["c"] - means["b"] - means["d"]))
    m = contrasts.estimate({"a": 1, "b": -1}, runs, "attr_map_all", labels)
    plain = np.mean([contrasts.value("attr_map_all", runs[("a", s)], labels)
                     - contrasts.value("attr_map_all", runs[("b", s)], labels) for s in range(4)])
    assert m.mean == pytest.approx(plain)                           # centred on the plain differences
    assert contrasts.estimate({"a": 1, "e": -1}, runs, "category_top3", labels) is None


def test_attention_measures_leave_out_images_where_they_are_undefined(labels):
    rng = np.random.default_rng(3)
    runs = {}
    for m, base in (("a", 2.0), ("b", 1.0)):
        for s in range(3):
            lift = base + rng.normal(0, 0.1, N)
            lift[:10] = np.nan                                       # no visible landmark
            runs[(m, s)] = {"attention_lift": lift}
    e = contrasts.estimate({"a": 1, "b": -1}, runs, "attention_lift", labels)
    assert e.n_images == N - 10 and e.mean == pytest.approx(1.0, abs=0.05)


def est(mean, se, df=9):
    return stats.Estimate(mean, se, df, 10, 600)


def test_decide_gives_three_outcomes_with_holm_across_the_family():
    out = contrasts.decide([est(0.07, 0.01), est(0.001, 0.005), est(0.01, 0.03), None], [0.02, 0.02, 0.02, 0.02])
    assert [o["outcome"] for o in out[:3]] == ["established", "equivalent", "inconclusive"] and out[3] is None
    assert out[0]["direction"] == 1 and out[1]["direction"] == 0 and not out[0]["within_margin"]
    assert out[0]["p_holm"] == pytest.approx(min(1, 3 * est(0.07, 0.01).p))      # 3 finite p-values
    # the 90 % interval of the equivalent one lies inside the margin; the inconclusive one's does not
    assert -0.02 < out[1]["low90"] and out[1]["high90"] < 0.02 and out[2]["high90"] > 0.02
    # alone, p = 0.03 is established; in a family of two with p = 0.03 each, Holm lifts both to 0.06
    p03 = est(scipy_stats.t.ppf(1 - 0.015, 9) * 0.01, 0.01)       # two-sided p = 0.03
    alone = contrasts.decide([p03], [None])[0]
    pair = contrasts.decide([p03, p03], [None, None])
    assert alone["outcome"] == "established" and alone["p"] == pytest.approx(0.03)
    assert [o["outcome"] for o in pair] == ["inconclusive", "inconclusive"]
    assert math.isnan(pair[0]["p_tost"])                            # no margin declared: no equivalence test
    tiny = contrasts.decide([est(0.005, 0.001)], [0.02])[0]        # established, and smaller than the margin
    assert tiny["outcome"] == "established" and tiny["within_margin"]


# ---------------------------------------------------------------------------------------------------------
# Pinned fields and boundaries (mutation testing found these unpinned: `python tools/mutation.py study.contrasts`)


def test_decide_gives_every_field_of_each_result_in_family_order():
    from vfu_nb.stats import Estimate

    est = [Estimate(0.05, 0.01, 9.0, 10, 600), None, Estimate(-0.05, 0.01, 9.0, 10, 600),
           Estimate(0.001, 0.004, 9.0, 10, 600), Estimate(0.01, 0.002, 9.0, 10, 600)]
    margins = [0.02, 0.02, 0.02, None, 0.02]
    out = contrasts.decide(est, margins)
    p_holm = stats.holm([e.p if e else math.nan for e in est])
    tost_holm = stats.holm([e.tost(m) if e and m else math.nan for e, m in zip(est, margins)])
    low90, high90 = est[0].interval(0.90)
    assert out[0] == {**est[0].as_dict(0.95), "low90": low90, "high90": high90, "margin": 0.02,
                      "p_tost": est[0].tost(0.02), "p_holm": p_holm[0], "p_tost_holm": tost_holm[0],
                      "outcome": "established", "direction": 1, "within_margin": False}
    assert len(out) == 5 and out[1] is None                       # a contrast not measured yet keeps its place
    assert (out[2]["outcome"], out[2]["direction"]) == ("established", -1)
    assert out[3]["outcome"] == "inconclusive" and out[3]["direction"] == 0 and out[3]["margin"] is None
    assert math.isnan(out[3]["p_tost"]) and math.isnan(out[3]["p_tost_holm"])      # no margin: no equivalence
    assert (out[4]["outcome"], out[4]["within_margin"]) == ("established", True)     # and smaller than the margin


def test_decide_needs_p_strictly_below_alpha_for_both_outcomes():
    from vfu_nb.stats import Estimate

    gain = Estimate(0.02, 0.01, 9.0, 10, 600)
    assert contrasts.decide([gain], [None], alpha=gain.p)[0]["outcome"] == "inconclusive"
    assert contrasts.decide([gain], [None], alpha=gain.p * 1.000001)[0]["outcome"] == "established"
    small = Estimate(0.001, 0.005, 9.0, 10, 600)
    p_tost = small.tost(0.02)
    assert contrasts.decide([small], [0.02], alpha=p_tost)[0]["outcome"] == "inconclusive"
    assert contrasts.decide([small], [0.02], alpha=p_tost * 1.000001)[0]["outcome"] == "equivalent"


def test_contrast_names_read_like_the_contrast():
    assert contrasts.contrast_name({"contrast": "mtl_vs_cat", "weights": {}}) == "`mtl` − `cat`"
    name = lambda weights: contrasts.contrast_name({"contrast": "x", "weights": weights})     # noqa: E731
    assert name({"mtl": 1, "cat": -1}) == "`mtl` − `cat`"
    assert name({"a": 0.5, "b": 0.5, "c": -0.5, "d": -0.5}) == "0.5·`a` + 0.5·`b` − 0.5·`c` − 0.5·`d`"
    assert name({"a": -1, "b": 2}) == "−`a` + 2·`b`"
    assert name({"a": 0, "b": 1}) == "0·`a` + `b`" and name({"a": 1, "b": 0}) == "`a` + 0·`b`"   # no sign on 0


def test_per_image_hits_are_floats_below_k_and_measures_are_float64():
    hits = contrasts.per_image("category_top3", {"category_rank": np.array([0, 2, 3, 5], np.int16)}, {})
    assert hits.dtype == np.float64 and hits.tolist() == [1.0, 1.0, 0.0, 0.0]       # rank 3 is the fourth place
    pointing = contrasts.per_image("attention_pointing", {"attention_pointing": np.array([1, 0, 1], np.int8)}, {})
    assert pointing.dtype == np.float64 and pointing.tolist() == [1.0, 0.0, 1.0]


def test_estimate_fills_the_cache_it_is_given_and_needs_two_defined_images():
    lift = np.full(6, np.nan)
    lift[[1, 4]] = [1.2, 0.9]
    runs = {(m, s): {"attention_lift": lift + 0.1 * s * (m == "a")} for m in "ab" for s in range(3)}
    cache = {}
    e = contrasts.estimate({"a": 1, "b": -1}, runs, "attention_lift", {}, cache)
    assert e is not None and e.n_images == 2 and e.n_seeds == 3 and len(cache) == 6
    assert e.mean == pytest.approx(0.1)                              # seeds 0, 1, 2: +0, +0.1, +0.2
    lift[4] = np.nan                                                 # one defined image: no estimate
    one = {(m, s): {"attention_lift": lift.copy()} for m in "ab" for s in range(3)}
    assert contrasts.estimate({"a": 1, "b": -1}, one, "attention_lift", {}) is None
