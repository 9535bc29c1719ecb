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
