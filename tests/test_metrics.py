"""Hand-computed cases for vfu_nb.metrics (every function, every key, nan behaviour, k > group size)."""

import json
import warnings
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from vfu_nb import metrics
from vfu_nb.metrics import (
    ATTRIBUTE_TYPE_NAMES, EvalAccumulator, attribute_topk_recall, average_precision, category_topk_accuracy,
    ResampledAveragePrecision, jsonable, mean_over_attributes, landmark_normalized_error, map_by_type, metric_keys,
)

# ---------------------------------------------------------------------------------------------------------
# category top-k
#   img0 [0.1 0.5 0.3 0.2] target 1 -> ranking 1,2,3,0: target rank 1
#   img1 [0.9 0.1 0.4 0.3] target 2 -> ranking 0,2,3,1: target rank 2
#   img2 [0.2 0.3 0.1 0.8] target 0 -> ranking 3,1,0,2: target rank 3
#   img3 [0.4 0.3 0.2 0.1] target 3 -> ranking 0,1,2,3: target rank 4
# top1 = 1/4, top2 = 2/4, top3 = 3/4, top4 = 4/4, k=10 > C -> 1
CAT_LOGITS = np.array([[0.1, 0.5, 0.3, 0.2], [0.9, 0.1, 0.4, 0.3], [0.2, 0.3, 0.1, 0.8], [0.4, 0.3, 0.2, 0.1]])
CAT_TARGETS = np.array([1, 2, 0, 3])


@pytest.mark.parametrize("k,expected", [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (10, 1.0)])
def test_category_topk(k, expected):
    assert category_topk_accuracy(CAT_LOGITS, CAT_TARGETS, k) == pytest.approx(expected)
    # torch input (and bf16) give the same
    assert category_topk_accuracy(torch.tensor(CAT_LOGITS), torch.tensor(CAT_TARGETS), k) == pytest.approx(expected)


def test_category_ties_go_to_lower_index_and_empty_is_nan():
    # all equal scores, k=2 -> predicted {0, 1}: target 1 hit, target 2 miss
    assert category_topk_accuracy(np.ones((1, 3)), np.array([1]), 2) == 1.0
    assert category_topk_accuracy(np.ones((1, 3)), np.array([2]), 2) == 0.0
    assert math.isnan(category_topk_accuracy(np.zeros((0, 3)), np.zeros((0,), int), 3))
    with pytest.raises(ValueError):
        category_topk_accuracy(np.ones((2, 3)), np.array([0]), 1)


# ---------------------------------------------------------------------------------------------------------
# attribute top-k recall
# 7 attributes, types [1,1,1,2,2,5,4]: texture cols 0-2, fabric 3-4, style 5, part 6 (no positives), no shape.
ATTR_TYPES = np.array([1, 1, 1, 2, 2, 5, 4])
ATTR_SCORES = np.array([
    [0.9, 0.8, 0.1, 0.3, 0.7, 0.2, 0.0],
    [0.1, 0.2, 0.3, 0.6, 0.5, 0.9, 0.0],
])
ATTR_LABELS_PM = np.array([  # +-1 file coding
    [1, -1, 1, 1, -1, -1, -1],
    [-1, 1, -1, -1, -1, 1, -1],
])
# positives: img0 cols {0, 2, 3}, img1 cols {1, 5}; 5 in total
# k=1:
#   texture: img0 top1 col0 (pos) -> 1; img1 top1 col2 (neg) -> 0; TP 1 / GT 3 = 1/3
#   fabric:  img0 top1 col4 (neg); img1 top1 col3 (neg); TP 0 / GT 1 = 0
#   shape:   no attributes -> nan;  part: no positives -> nan
#   style:   group of 1: img1 col5 pos -> TP 1 / GT 1 = 1
#   all_grouped = (1 + 0 + 1) / (3 + 1 + 1) = 0.4
#   all_strict: img0 top1 col0 (pos), img1 top1 col5 (pos) -> 2 / 5 = 0.4
# k=2:
#   texture: img0 {0,1} -> 1 pos; img1 {2,1} -> 1 pos; 2/3
#   fabric:  k >= group size 2 -> all: img0 col3 pos -> 1/1 = 1
#   style:   1/1 = 1
#   all_grouped = (2 + 1 + 1) / 5 = 0.8
#   all_strict: img0 {0 (0.9), 1 (0.8)} -> 1; img1 {5 (0.9), 3 (0.6)} -> 1; 2/5 = 0.4
EXPECTED_K1 = {"texture": 1 / 3, "fabric": 0.0, "shape": float("nan"), "part": float("nan"), "style": 1.0,
               "all_grouped": 0.4, "all_strict": 0.4}
EXPECTED_K2 = {"texture": 2 / 3, "fabric": 1.0, "shape": float("nan"), "part": float("nan"), "style": 1.0,
               "all_grouped": 0.8, "all_strict": 0.4}


def _check(result, expected):
    assert set(result) == {"texture", "fabric", "shape", "part", "style", "all_grouped", "all_strict"}
    for key, want in expected.items():
        if math.isnan(want):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(want), key


@pytest.mark.parametrize("k,expected", [(1, EXPECTED_K1), (2, EXPECTED_K2)])
def test_attribute_recall_pm_coding(k, expected):
    _check(attribute_topk_recall(ATTR_SCORES, ATTR_LABELS_PM, ATTR_TYPES, k), expected)


@pytest.mark.parametrize("k,expected", [(1, EXPECTED_K1), (2, EXPECTED_K2)])
def test_attribute_recall_01_targets_and_torch(k, expected):
    labels01 = (ATTR_LABELS_PM == 1).astype(np.float32)
    _check(attribute_topk_recall(torch.tensor(ATTR_SCORES), torch.tensor(labels01), torch.tensor(ATTR_TYPES), k),
           expected)


def test_attribute_recall_unknown_zero_is_not_positive_and_k_larger_than_everything():
    labels = ATTR_LABELS_PM.copy()
    labels[0, 0] = 0  # unknown: no longer a positive -> positives img0 {2, 3}, img1 {1, 5}
    r = attribute_topk_recall(ATTR_SCORES, labels, ATTR_TYPES, 1)
    # texture: img0 top1 col0 now not positive -> TP 0 / GT 2; all_strict: only img1 col5 -> 1/4
    assert r["texture"] == 0.0
    assert r["all_strict"] == pytest.approx(0.25)
    # k=100: every attribute predicted -> every recall 1 (nan where no positives)
    r = attribute_topk_recall(ATTR_SCORES, ATTR_LABELS_PM, ATTR_TYPES, 100)
    _check(r, {"texture": 1, "fabric": 1, "shape": float("nan"), "part": float("nan"), "style": 1,
               "all_grouped": 1, "all_strict": 1})


def test_attribute_recall_no_positives_at_all_is_nan():
    r = attribute_topk_recall(ATTR_SCORES, -np.ones_like(ATTR_LABELS_PM), ATTR_TYPES, 3)
    assert all(math.isnan(v) for v in r.values())


# ---------------------------------------------------------------------------------------------------------
# landmark NE
def _ne_case():
    gt = np.full((3, 8, 2), 0.5)
    pred = gt.copy()
    vis = np.zeros((3, 8), dtype=bool)
    pred[0, 0] += (0.3, 0.4); vis[0, 0] = True      # dist 0.5
    pred[1, 0] += (0.0, 0.1); vis[1, 0] = True      # dist 0.1
    pred[2, 0] += (5.0, 5.0)                        # invisible: ignored
    pred[0, 1] += (1.0, 1.0)                        # invisible: ignored
    pred[2, 1] += (0.06, 0.08); vis[2, 1] = True    # dist 0.1
    return pred, gt, vis


def test_landmark_ne_hand_computed():
    pred, gt, vis = _ne_case()
    r = landmark_normalized_error(pred, gt, vis)
    # NE_0 = (0.5 + 0.1) / 2 = 0.3 ; NE_1 = 0.1 / 1 = 0.1 ; NE_2..7 never visible -> nan
    # mean = unweighted mean of per-landmark values = (0.3 + 0.1) / 2 = 0.2
    # (the pooled mean over visible points would be 0.7 / 3 = 0.2333: not what anchor 1 reports)
    assert len(r["per_landmark"]) == 8
    assert r["per_landmark"][0] == pytest.approx(0.3)
    assert r["per_landmark"][1] == pytest.approx(0.1)
    assert all(math.isnan(v) for v in r["per_landmark"][2:])
    assert r["mean"] == pytest.approx(0.2)
    # torch tensors and a 0/1 integer mask give the same
    r2 = landmark_normalized_error(torch.tensor(pred), torch.tensor(gt), torch.tensor(vis.astype(np.int64)))
    assert r2["mean"] == pytest.approx(0.2)


def test_landmark_ne_nothing_visible_and_codes_refused():
    pred, gt, _ = _ne_case()
    r = landmark_normalized_error(pred, gt, np.zeros((3, 8), bool))
    assert math.isnan(r["mean"]) and all(math.isnan(v) for v in r["per_landmark"])
    with pytest.raises(ValueError, match="landmark_visibility == 0"):
        landmark_normalized_error(pred, gt, np.full((3, 8), 2))  # visibility codes, not a mask


# ---------------------------------------------------------------------------------------------------------
# accumulator
def test_eval_accumulator_matches_functions_and_keys():
    acc = EvalAccumulator(ATTR_TYPES, category_ks=(1, 3, 5), attribute_ks=(1, 2))
    pred, gt, vis = _ne_case()
    codes = np.where(vis, 0, 1)  # visibility codes: 0 visible
    # two batches: images [0,1] and [2,3] for category; attributes only 2 images, so split 1+1 (+ 2 extra rows
    # would change the expected numbers) -> use category rows 0..1 with the attribute rows and rows 2..3 alone
    acc.update(CAT_LOGITS[:2], CAT_TARGETS[:2], ATTR_SCORES[:1], ATTR_LABELS_PM[:1],
               pred[:2], gt[:2], codes[:2])
    acc.update(torch.tensor(CAT_LOGITS[2:]), torch.tensor(CAT_TARGETS[2:]), ATTR_SCORES[1:], ATTR_LABELS_PM[1:],
               torch.tensor(pred[2:3]), torch.tensor(gt[2:3]), torch.tensor(codes[2:3]))
    out = acc.compute()
    assert out["n_images"] == 4
    assert out["category_top1"] == pytest.approx(0.25)
    assert out["category_top3"] == pytest.approx(0.75)
    assert out["category_top5"] == pytest.approx(1.0)  # k=5 > C=4
    for name, want in EXPECTED_K1.items():
        got = out[f"attr_top1_{name}"]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    assert out["attr_top2_all_grouped"] == pytest.approx(0.8)
    assert out["landmark_ne_mean"] == pytest.approx(0.2)
    assert out["landmark_ne_l_collar"] == pytest.approx(0.3)
    assert out["landmark_ne_r_collar"] == pytest.approx(0.1)
    assert math.isnan(out["landmark_ne_r_hem"])
    assert list(out) == metric_keys(8, (1, 3, 5), (1, 2))
    # strict JSON: nan -> null
    text = json.dumps(jsonable(out), allow_nan=False)
    assert '"landmark_ne_r_hem": null' in text


def test_eval_accumulator_without_landmarks_gives_nan_ne():
    acc = EvalAccumulator(ATTR_TYPES)
    acc.update(CAT_LOGITS, CAT_TARGETS, np.tile(ATTR_SCORES, (2, 1)), np.tile(ATTR_LABELS_PM, (2, 1)))
    out = acc.compute()
    assert math.isnan(out["landmark_ne_mean"])
    assert out["attr_top3_texture"] == pytest.approx(1.0)  # k=3 = whole texture group
    assert set(out) == set(metric_keys())


# ---------------------------------------------------------------------------------------------------------
# average precision


def _sklearn_ap(scores, labels, known):
    """Reference: one sklearn call per attribute on its known labels (nan without a known positive)."""
    out = []
    for j in range(scores.shape[1]):
        keep = known[:, j]
        y = labels[keep, j] == 1
        out.append(average_precision_score(y, scores[keep, j]) if y.any() else float("nan"))
    return np.array(out)


def _random_split(n=400, a=40, seed=0, levels=6):
    """Scores with many ties (few distinct values), ±1/0 labels with unknowns, every attribute type."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, a)).astype(np.float32) + rng.integers(0, 2, (1, a))
    labels = rng.choice(np.array([1, -1, 0], np.int8), (n, a), p=[0.15, 0.7, 0.15])
    labels[:, 0] = -1          # no positive at all -> nan
    labels[:, 1] = 0           # nothing known -> nan
    labels[:5, 2], labels[5:, 2] = 1, 0      # positives only, few known
    types = np.arange(a) % 5 + 1
    return scores, labels, types


def test_average_precision_equals_sklearn_with_ties_and_unknowns():
    scores, labels, _ = _random_split()
    got = average_precision(scores, labels, labels != 0)
    want = _sklearn_ap(scores, labels, labels != 0)
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, equal_nan=True)
    # continuous scores, all labels known, torch input
    rng = np.random.default_rng(1)
    s = rng.normal(size=(300, 25))
    y = (rng.random((300, 25)) < 0.1).astype(np.float32)
    np.testing.assert_allclose(average_precision(torch.tensor(s), torch.tensor(y)),
                               _sklearn_ap(s, y, np.ones_like(y, bool)), rtol=0, atol=1e-9, equal_nan=True)


def test_resampled_average_precision_equals_average_precision_on_the_resample():
    scores, labels, _ = _random_split()                       # ties, unknowns, columns without positives
    ap = ResampledAveragePrecision(scores, labels, labels != 0)
    rng = np.random.default_rng(3)
    everything = np.arange(len(scores))
    for idx in (everything, rng.integers(0, len(scores), len(scores)), rng.integers(0, len(scores), 37)):
        np.testing.assert_allclose(ap(idx), average_precision(scores[idx], labels[idx], labels[idx] != 0),
                                   rtol=0, atol=1e-12, equal_nan=True)
    hard = scores > scores.mean()                              # hard 0/1 predictions and 8-bit scores rank too
    np.testing.assert_allclose(ResampledAveragePrecision(hard, labels, labels != 0)(everything),
                               average_precision(hard.astype(np.float64), labels, labels != 0), atol=1e-12)
    byte = (scores * 40).astype(np.uint8)
    np.testing.assert_allclose(ResampledAveragePrecision(byte, labels, labels != 0)(everything),
                               average_precision(byte.astype(np.float64), labels, labels != 0), atol=1e-12)
    s = np.array([[0.9], [0.8], [0.8], [0.1]])                 # the hand example below, the tie drawn twice
    y = np.array([[1], [-1], [1], [1]])
    # drawn: 0.9 pos, 0.8 neg, 0.8 pos x2 -> thresholds 0.9: P 1, R 1/3; 0.8: P 3/4, R 1 -> AP = (1 + 2 * 3/4) / 3
    assert ResampledAveragePrecision(s, y)(np.array([0, 1, 2, 2]))[0] == pytest.approx(2.5 / 3, abs=1e-12)
    with warnings.catch_warnings():                                             # nan without a RuntimeWarning
        warnings.simplefilter("error")
        assert np.isnan(ResampledAveragePrecision(s, y)(np.array([1, 1]))[0])       # no positive drawn
    assert ResampledAveragePrecision(s, y)(np.array([0, 1]))[0] == 1                # one positive drawn, ranked first
    # the top-ranked image not drawn (nothing seen above the first drawn group): as without image 0 below
    assert ResampledAveragePrecision(s, y)(np.array([1, 2, 3]))[0] == pytest.approx(7 / 12, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        ResampledAveragePrecision(s, y[:3])
    with pytest.raises(ValueError, match=r"labels \(4, 1\) and known \(3, 1\) must be the same shape"):
        ResampledAveragePrecision(s, y, np.ones((3, 1), bool))                  # only the known mask is off
    with pytest.raises(ValueError, match=r"without NaN, got shape \(4, 1\)"):
        ResampledAveragePrecision(np.where(s == 0.1, np.nan, s), y)             # right shape, one NaN score


def test_leave_one_out_average_precision_equals_average_precision_without_that_image():
    scores, labels, _ = _random_split()                       # ties, unknowns, columns without positives
    scores, labels = scores[:60], labels[:60]
    labels[:, 0] = np.where(np.arange(60) == 4, 1, np.where(np.arange(60) % 7 == 0, 0, -1))  # one positive, and
    ap = ResampledAveragePrecision(scores, labels, labels != 0)                          # some unknown labels
    loo = ap.leave_one_out()
    assert loo.shape == scores.shape and np.isnan(loo[4, 0]) and not np.isnan(loo[5, 0]) and not np.isnan(loo[7, 0])
    for i in range(len(scores)):
        rest = np.delete(np.arange(len(scores)), i)
        np.testing.assert_allclose(loo[i], average_precision(scores[rest], labels[rest], labels[rest] != 0),
                                   rtol=0, atol=1e-12, equal_nan=True, err_msg=f"image {i} left out")
    s = np.array([[0.9], [0.8], [0.8], [0.1]])                 # hand example: each image left out in turn
    y = np.array([[1], [-1], [1], [1]])
    # without image 0: the 0.8 tie (1 pos of 2 seen), 0.1 (2 of 3) -> (1/2 + 2/3) / 2; without the negative: 1
    assert ResampledAveragePrecision(s, y).leave_one_out()[:, 0] == pytest.approx([7 / 12, 1, 5 / 6, 5 / 6])
    with warnings.catch_warnings():           # one positive, an undefined AP without it: nan, silently
        warnings.simplefilter("error")
        loo = ResampledAveragePrecision(s, np.array([[1], [-1], [-1], [0]])).leave_one_out()[:, 0]
    assert np.isnan(loo[0]) and loo[1:3] == pytest.approx([1, 1]) and loo[3] == 1


def test_average_precision_hand_computed_and_errors():
    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (pos), unknown 0.95:
    # thresholds 0.9: P 1/1, R 1/3; 0.8 (tie): P 2/3, R 2/3; 0.1: P 3/4, R 1 -> AP = (1 + 2/3 + 3/4) / 3
    s = np.array([[0.9], [0.8], [0.8], [0.1], [0.95]])
    y = np.array([[1], [-1], [1], [1], [0]])
    assert average_precision(s, y, y != 0)[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([[np.nan], [1.0]]), np.array([[1], [0]]))
    with pytest.raises(ValueError, match="same"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


def test_map_by_type_skips_undefined_attributes():
    ap = np.array([0.5, np.nan, 1.0, 0.25, np.nan])
    m = map_by_type(ap, [1, 1, 2, 5, 4])
    assert m["attr_map_texture"] == 0.5 and m["attr_map_fabric"] == 1.0 and m["attr_map_style"] == 0.25
    assert math.isnan(m["attr_map_part"]) and math.isnan(m["attr_map_shape"])
    assert m["attr_map_all"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)


# ---------------------------------------------------------------------------------------------------------
# top-k against the definition (stable descending argsort), with ties


def _reference_recall(scores, labels, types, k):
    pos = labels == 1
    out, tp_sum, gt_sum = {}, 0, 0
    for t, name in ATTRIBUTE_TYPE_NAMES.items():
        cols = np.flatnonzero(types == t)
        top = np.argsort(-scores[:, cols], axis=1, kind="stable")[:, :k]
        tp, gt = int(np.take_along_axis(pos[:, cols], top, 1).sum()), int(pos[:, cols].sum())
        out[name] = tp / gt if gt else float("nan")
        tp_sum, gt_sum = tp_sum + tp, gt_sum + gt
    out["all_grouped"] = tp_sum / gt_sum
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out["all_strict"] = int(np.take_along_axis(pos, top, 1).sum()) / int(pos.sum())
    return out


@pytest.mark.parametrize("levels", [2, 6, 1000])
@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_attribute_recall_matches_stable_sort_definition(levels, k):
    scores, labels, types = _random_split(levels=levels)
    got = attribute_topk_recall(scores, labels, types, k)
    want = _reference_recall(scores, labels, types, k)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-15), key


def test_category_matches_stable_sort_definition():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (500, 12)).astype(np.float32)
    targets = rng.integers(0, 12, 500)
    rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)[np.arange(500), targets]
    for k in (1, 3, 5):
        assert category_topk_accuracy(scores, targets, k) == pytest.approx((rank < k).mean(), abs=1e-15)
    with pytest.raises(ValueError, match="class indices"):
        category_topk_accuracy(scores, np.full(500, 12), 1)


# ---------------------------------------------------------------------------------------------------------
# accumulator: batching, chunking, device kernels


def _accumulate(batches, split, known=True):
    cat_scores, cats, scores, labels, pred, gt, codes = split
    acc = EvalAccumulator(np.arange(scores.shape[1]) % 5 + 1)
    bounds = np.linspace(0, len(cats), batches + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        acc.update(torch.tensor(cat_scores[lo:hi]).to(torch.bfloat16), torch.tensor(cats[lo:hi]),
                   torch.tensor(scores[lo:hi]), torch.tensor((labels[lo:hi] == 1).astype(np.float32)),
                   torch.tensor(pred[lo:hi]), torch.tensor(gt[lo:hi]), torch.tensor(codes[lo:hi]),
                   attributes_known=torch.tensor(labels[lo:hi] != 0) if known else None)
    return acc


def _full_split(n=400, seed=0):
    scores, labels, _ = _random_split(n=n, seed=seed)
    rng = np.random.default_rng(seed)
    cat_scores = rng.integers(0, 5, (n, 10)).astype(np.float32)   # bf16-exact, many ties
    cats = rng.integers(0, 10, n)
    gt = rng.random((n, 8, 2)).astype(np.float32)
    pred = gt + rng.normal(0, 0.05, gt.shape).astype(np.float32)
    codes = rng.integers(-1, 3, (n, 8))
    codes[:, 7] = 1            # r_hem never visible -> nan
    return cat_scores, cats, scores, labels, pred, gt, codes


def _same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == b[key], key


def test_accumulator_values_match_the_functions():
    split = _full_split()
    cat_scores, cats, scores, labels, pred, gt, codes = split
    out = _accumulate(4, split).compute()
    types = np.arange(scores.shape[1]) % 5 + 1
    assert out["n_images"] == 400
    assert out["category_top3"] == category_topk_accuracy(cat_scores, cats, 3)
    for k in (3, 5):
        for name, value in _reference_recall(scores, labels, types, k).items():
            assert out[f"attr_top{k}_{name}"] == pytest.approx(value, abs=1e-15)
    ap = _sklearn_ap(scores, labels, labels != 0)
    for t, name in ATTRIBUTE_TYPE_NAMES.items():
        assert out[f"attr_map_{name}"] == pytest.approx(np.nanmean(ap[types == t]), abs=1e-9)
    assert out["attr_map_all"] == pytest.approx(np.nanmean(ap), abs=1e-9)
    ne = landmark_normalized_error(pred, gt, codes == 0)
    assert out["landmark_ne_mean"] == pytest.approx(ne["mean"])
    assert math.isnan(out["landmark_ne_r_hem"])
    np.testing.assert_allclose(_accumulate(1, split).attribute_ap(), ap, atol=1e-9, equal_nan=True)
    # without the known mask every non-positive label is a known negative
    no_mask = _accumulate(2, split, known=False).compute()
    assert no_mask["attr_map_all"] == pytest.approx(np.nanmean(_sklearn_ap(scores, labels, np.ones_like(labels, bool))),
                                                    abs=1e-9)
    assert list(out) == metric_keys()


def test_accumulator_same_result_for_any_batching_and_chunking(monkeypatch):
    split = _full_split(n=300, seed=5)
    one = _accumulate(1, split).compute()
    monkeypatch.setattr(metrics, "ROW_CHUNK", 7)       # the split is far larger than every chunk
    monkeypatch.setattr(metrics, "COLUMN_CHUNK", 3)
    _same(one, _accumulate(1, split).compute())
    _same(one, _accumulate(13, split).compute())
    _same(one, _accumulate(300, split).compute())


def test_device_kernels_give_the_same_numbers(monkeypatch):
    """torch.topk / torch.sort (used off the CPU) agree with the numpy kernels used on the CPU."""
    split = _full_split(n=600, seed=2)
    host = _accumulate(3, split).compute()
    monkeypatch.setattr(metrics, "_on_host", lambda x: False)
    _same(host, _accumulate(3, split).compute())


def test_accumulator_keeps_outputs_where_they_are_and_labels_on_the_host():
    acc = EvalAccumulator(ATTR_TYPES)
    logits = torch.tensor(CAT_LOGITS, dtype=torch.bfloat16)
    acc.update(logits, CAT_TARGETS, torch.tensor(np.tile(ATTR_SCORES, (2, 1))), np.tile(ATTR_LABELS_PM, (2, 1)))
    assert acc._parts["cat_scores"][0].dtype == torch.float32          # bf16 widened exactly
    assert isinstance(acc._parts["cat"][0], torch.Tensor) and acc._parts["cat"][0].device.type == "cpu"
    assert math.isnan(acc.compute(with_map=False)["attr_map_all"])
    assert acc.compute()["attr_map_all"] == pytest.approx(np.nanmean(acc.attribute_ap()))
    acc.reset()
    assert len(acc) == 0


def test_updates_after_compute_extend_the_split():
    split = _full_split(n=300, seed=4)
    whole = _accumulate(1, split).compute()
    cat_scores, cats, scores, labels, pred, gt, codes = split
    for known in (True, False):
        acc = EvalAccumulator(np.arange(scores.shape[1]) % 5 + 1)
        for lo, hi in ((0, 100), (100, 300)):
            acc.update(cat_scores[lo:hi], cats[lo:hi], scores[lo:hi], labels[lo:hi], pred[lo:hi], gt[lo:hi],
                       codes[lo:hi], attributes_known=labels[lo:hi] != 0 if known else None)
            partial = acc.compute()
        assert partial["n_images"] == 300
        if known:
            _same(whole, partial)


# ---------------------------------------------------------------------------------------------------------
# edge cases: chunk boundaries, one or no image, wide rows, every error message


def _continuous_split(n, a, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, a)).astype(np.float32)
    labels = np.where(rng.random((n, a)) < 0.2, 1, -1)
    return scores, labels, np.arange(a) % 5 + 1


@pytest.mark.parametrize("n", [15, 14, 1])
def test_recall_and_category_with_a_last_chunk_of_any_size(monkeypatch, n):
    scores, labels, types = _continuous_split(n, 30, seed=n)
    want = _reference_recall(scores, labels, types, 3)
    cats = np.arange(n) % 30
    rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)[np.arange(n), cats]
    monkeypatch.setattr(metrics, "ROW_CHUNK", 7)          # 15 rows: blocks of 7, 7 and 1
    got = attribute_topk_recall(scores, labels, types, 3)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-15), key
    assert category_topk_accuracy(scores, cats, 3) == pytest.approx((rank < 3).mean(), abs=1e-15)


def test_split_larger_than_the_real_chunk():
    scores, labels, types = _continuous_split(metrics.ROW_CHUNK + 5, 10, seed=1)
    for k in (1, 3):
        want = _reference_recall(scores, labels, types, k)
        got = attribute_topk_recall(scores, labels, types, k)
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-15), key


@pytest.mark.parametrize("levels", [None, 12])
@pytest.mark.parametrize("k", [60, 150])
def test_attribute_recall_with_k_far_beyond_the_usual(k, levels):
    scores, labels, types = _continuous_split(20, 400, seed=k)
    if levels:                                         # many ties at the k-th value
        scores = np.floor(scores * levels / 4).astype(np.float32)
    want = _reference_recall(scores, labels, types, k)
    got = attribute_topk_recall(scores, labels, types, k)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-15), key


def test_an_empty_split_gives_nan_everywhere():
    r = attribute_topk_recall(np.zeros((0, 7)), np.zeros((0, 7)), ATTR_TYPES, 2)
    assert all(math.isnan(v) for v in r.values())
    acc = EvalAccumulator(ATTR_TYPES, category_ks=(1, 2))
    out = acc.compute()
    assert list(out) == metric_keys(8, (1, 2)) and out["n_images"] == 0
    assert all(math.isnan(v) for k, v in out.items() if k != "n_images")


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"^logits \(2, 3\) and targets \(1,\) do not match$"):
        category_topk_accuracy(np.ones((2, 3)), np.array([0]), 1)
    with pytest.raises(ValueError, match=r"^targets must be class indices 0\.\.2, got -1\.\.1$"):
        category_topk_accuracy(np.ones((2, 3)), np.array([-1, 1]), 1)
    with pytest.raises(ValueError, match=r"^scores \(2, 7\), labels \(2, 7\), attribute_types \(6,\) do not match$"):
        attribute_topk_recall(ATTR_SCORES, ATTR_LABELS_PM, ATTR_TYPES[:6], 1)
    with pytest.raises(ValueError, match=r"^scores \(2, 7\), labels \(1, 7\), attribute_types \(7,\) do not match$"):
        attribute_topk_recall(ATTR_SCORES, ATTR_LABELS_PM[:1], ATTR_TYPES, 1)
    with pytest.raises(ValueError, match=r"^scores \(7,\), labels \(7,\)"):
        attribute_topk_recall(ATTR_SCORES[0], ATTR_LABELS_PM[0], ATTR_TYPES, 1)
    with pytest.raises(ValueError, match=r"^scores \(3, 2\), labels \(3, 2\) and known \(3, 1\) must be the same"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 2)), np.ones((3, 1), bool))
    with pytest.raises(ValueError, match=r"^scores contain NaN; average precision needs a full ranking$"):
        average_precision(np.array([[np.nan], [1.0]]), np.array([[1], [0]]))
    pred, gt, vis = _ne_case()
    with pytest.raises(ValueError, match=r"^pred \(3, 8, 2\), gt \(3, 7, 2\), visible \(3, 8\) do not match$"):
        landmark_normalized_error(pred, gt[:, :7], vis)
    with pytest.raises(ValueError, match=r"^pred \(3, 8, 2\), gt \(3, 8, 2\), visible \(3, 7\) do not match$"):
        landmark_normalized_error(pred, gt, vis[:, :7])
    with pytest.raises(ValueError, match=r"^pred \(3, 8\), gt \(3, 8\), visible \(3, 8\) do not match$"):
        landmark_normalized_error(pred[..., 0], gt[..., 0], vis)
    codes = np.arange(24).reshape(3, 8) % 8 - 1                          # -1..6: the first six are shown
    with pytest.raises(ValueError, match=r"got values \[-1, 0, 1, 2, 3, 4\]$"):
        landmark_normalized_error(pred, gt, codes)


def test_undefined_means_are_nan_without_warnings():
    pred, gt, _ = _ne_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # numpy's "Mean of empty slice" would reach every notebook
        assert math.isnan(landmark_normalized_error(pred, gt, np.zeros((3, 8), bool))["mean"])
        assert all(math.isnan(v) for v in map_by_type(np.full(5, np.nan), [1, 2, 3, 4, 5]).values())


def test_map_by_type_in_float64_for_any_input_layout():
    ap = np.array([0.1, 0.2, 0.7, 0.3], np.float32)
    m = map_by_type(ap, torch.tensor([[1, 1, 2, 1]]))                   # a row of types is flattened
    assert m["attr_map_texture"] == np.mean(ap.astype(np.float64)[[0, 1, 3]])   # float64 mean, exactly
    assert m["attr_map_fabric"] == float(ap[2]) and math.isnan(m["attr_map_style"])


def test_landmark_keys_for_other_landmark_counts():
    assert metrics.landmark_keys(8) == ("l_collar", "r_collar", "l_sleeve", "r_sleeve", "l_waist", "r_waist",
                                        "l_hem", "r_hem")
    assert metrics.landmark_keys(3) == ("lm0", "lm1", "lm2")
    acc = EvalAccumulator(ATTR_TYPES, num_landmarks=3)
    acc.update(CAT_LOGITS, CAT_TARGETS)
    assert [k for k in acc.compute() if k.startswith("landmark_ne_")] == ["landmark_ne_mean", "landmark_ne_lm0",
                                                                         "landmark_ne_lm1", "landmark_ne_lm2"]
    pred, gt, vis = _ne_case()
    acc.update(CAT_LOGITS[:3], CAT_TARGETS[:3], landmarks_pred=pred[:, :3], landmarks=gt[:, :3],
               landmark_visibility=np.where(vis[:, :3], 0, 1))
    acc.update(CAT_LOGITS[3:], CAT_TARGETS[3:], landmarks_pred=pred[:1, :3], landmarks=gt[:1, :3],
               landmark_visibility=np.ones((1, 3), int))
    out = acc.compute()
    assert out["landmark_ne_lm0"] == pytest.approx(0.3) and out["landmark_ne_lm1"] == pytest.approx(0.1)


def test_jsonable_converts_every_container_and_number():
    obj = {1: np.float32(0.5), "t": (torch.tensor(2.5), torch.tensor([1, 2]), torch.tensor([[3.0]])),
           "a": np.array([[1.0, np.inf], [np.nan, 2.0]]), "n": [np.int64(7), float("nan"), -float("inf"), 3, "x"],
           "nested": {"deep": [torch.tensor(float("nan"))]}}
    out = jsonable(obj)
    assert out == {"1": 0.5, "t": [2.5, [1, 2], 3.0], "a": [[1.0, None], [None, 2.0]], "n": [7, None, None, 3, "x"],
                   "nested": {"deep": [None]}}
    assert type(out["n"][0]) is int and type(out["1"]) is float
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------------------------------------------------
# average precision: column layouts


def test_average_precision_with_fewer_images_than_attributes(monkeypatch):
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(6, 150))
    labels = np.where(rng.random((6, 150)) < 0.4, 1, -1)
    labels[0] = 1                                            # every attribute has a positive
    known = np.ones_like(labels, bool)
    known[1:3, 0] = False                                    # unknowns in the first column only
    want = _sklearn_ap(scores, labels, known)
    np.testing.assert_allclose(average_precision(scores, labels, known), want, rtol=0, atol=1e-12)
    monkeypatch.setattr(metrics, "_on_host", lambda x: False)    # the torch kernels used off the CPU
    monkeypatch.setattr(metrics, "COLUMN_CHUNK", 7)
    np.testing.assert_allclose(average_precision(scores, labels, known), want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# accumulator: state across updates, computes and resets


def test_accumulator_without_attributes_or_with_own_ks():
    acc = EvalAccumulator(ATTR_TYPES, category_ks=(2,), attribute_ks=(1,))
    acc.update(CAT_LOGITS, CAT_TARGETS)
    out = acc.compute()
    assert list(out) == metric_keys(8, (2,), (1,)) and out["category_top2"] == pytest.approx(0.5)
    assert all(math.isnan(out[k]) for k in out if k.startswith(("attr_", "landmark_")))
    ap = acc.attribute_ap()
    assert ap.shape == (7,) and np.isnan(ap).all()


def test_batches_with_and_without_a_known_mask_mix():
    """A batch without ``attributes_known`` counts every label; a compute between the updates changes nothing."""
    split = _full_split(n=60, seed=8)
    cat_scores, cats, scores, labels, pred, gt, codes = split
    for masked_half in (0, 1):
        known = np.ones_like(labels, bool)
        known[30 * masked_half:30 * masked_half + 30] = labels[30 * masked_half:30 * masked_half + 30] != 0
        acc = EvalAccumulator(np.arange(scores.shape[1]) % 5 + 1)
        for half in (0, 1):
            rows = slice(30 * half, 30 * half + 30)
            acc.update(cat_scores[rows], cats[rows], scores[rows], labels[rows],
                       attributes_known=known[rows] if half == masked_half else None)
            acc.compute()
        np.testing.assert_allclose(acc.attribute_ap(), _sklearn_ap(scores, labels, known), atol=1e-9, equal_nan=True)


def test_compute_again_after_more_batches_without_labels_or_landmarks():
    acc = EvalAccumulator(ATTR_TYPES)
    acc.update(CAT_LOGITS[:2], CAT_TARGETS[:2])
    first = acc.compute()
    acc.update(CAT_LOGITS[2:], CAT_TARGETS[2:])
    second = acc.compute()
    assert first["n_images"] == 2 and second["n_images"] == 4
    assert second["category_top1"] == pytest.approx(0.25) and math.isnan(second["landmark_ne_mean"])
    assert acc.compute(device="cpu")["category_top3"] == pytest.approx(0.75)     # asked for the device it is on


def test_reset_starts_a_new_split():
    acc = EvalAccumulator(ATTR_TYPES)
    acc.update(CAT_LOGITS, CAT_TARGETS, np.tile(ATTR_SCORES, (2, 1)), np.tile(ATTR_LABELS_PM, (2, 1)))
    acc.compute()
    acc.reset()
    acc.update(CAT_LOGITS[:1], CAT_TARGETS[:1])
    out = acc.compute()
    assert out["n_images"] == 1 and out["category_top1"] == 1.0      # the earlier split had 0.25
    assert math.isnan(out["attr_top3_all_strict"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_outputs_on_the_device_labels_on_the_host():
    split = _full_split(n=500, seed=9)
    host = _accumulate(3, split).compute()
    cat_scores, cats, scores, labels, pred, gt, codes = split
    acc = EvalAccumulator(np.arange(scores.shape[1]) % 5 + 1)
    for lo, hi in ((0, 200), (200, 500)):
        acc.update(torch.tensor(cat_scores[lo:hi]).cuda().bfloat16(), torch.tensor(cats[lo:hi]),
                   torch.tensor(scores[lo:hi]).cuda(), torch.tensor(labels[lo:hi] == 1),
                   torch.tensor(pred[lo:hi]).cuda(), torch.tensor(gt[lo:hi]), torch.tensor(codes[lo:hi]),
                   attributes_known=torch.tensor(labels[lo:hi] != 0))
    on_device = acc.compute()
    for key, value in host.items():
        assert (math.isnan(value) and math.isnan(on_device[key])) or on_device[key] == pytest.approx(value, abs=1e-6)
    assert acc._joined["device"].type == "cuda"
    _same(on_device, acc.compute(device="cpu"))


def test_scores_keep_their_precision_and_any_number_type():
    tiny = np.array([[1.0, 1.0 + 1e-12, 0.5]])               # distinct in float64, tied in float32
    assert category_topk_accuracy(tiny, np.array([1]), 1) == 1.0
    assert attribute_topk_recall(tiny, np.array([[-1, 1, -1]]), np.array([1, 1, 1]), 1)["texture"] == 1.0
    ints = np.array([[3, 1], [2, 2], [1, 3], [0, 0]])
    labels = np.array([[1, -1], [-1, 1], [1, 0], [0, 1]])
    np.testing.assert_allclose(average_precision(ints, labels, labels != 0),
                               average_precision(ints.astype(np.float64), labels, labels != 0), rtol=0, atol=0)
    ranks = metrics.category_ranks(np.zeros((0, 3)), np.zeros(0, int))
    assert ranks.dtype == torch.int64 and ranks.shape == (0,)


# ---------------------------------------------------------------------------------------------------------
# Score types and the k-th largest value


def test_float64_scores_keep_their_precision_and_integer_scores_work():
    close = torch.tensor([[1.0, 1.0 + 1e-12], [2.0, 2.0 - 1e-12]], dtype=torch.float64)   # equal in float32
    assert metrics.category_ranks(close, torch.tensor([0, 1])).tolist() == [1, 1]   # float32 would tie: ranks 0 and 1
    ints = torch.tensor([[3, 1, 2], [0, 5, 5], [4, 4, 1]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    targets = torch.tensor([0, 2, 2])
    assert metrics.category_ranks(ints, targets).tolist() == [0, 1, 2]          # ties to the lower index
    assert metrics.category_ranks(ints.float(), targets).tolist() == [0, 1, 2]
    np.testing.assert_array_equal(average_precision(ints, labels), average_precision(ints.float(), labels))


@pytest.mark.parametrize("width", [3, 7, 40])
def test_kth_largest_equals_a_full_sort_for_every_k(width):
    x = torch.randn(50, width, generator=torch.Generator().manual_seed(width))
    x[:, 1] = x[:, 0]                                              # repeats count
    kths = list(range(1, min(width, 5) + 1))
    want = x.sort(dim=1, descending=True).values[:, [k - 1 for k in kths]]
    torch.testing.assert_close(metrics._kth_largest(x, None, kths), want, rtol=0, atol=0)
    torch.testing.assert_close(metrics._kth_largest(x, None, [1]), want[:, :1], rtol=0, atol=0)
    columns = torch.arange(width - 1, -1, -2)
    want = x[:, columns].sort(dim=1, descending=True).values[:, :1]
    torch.testing.assert_close(metrics._kth_largest(x, columns, [1]), want, rtol=0, atol=0)


def test_mean_over_attributes_skips_undefined_aps_row_by_row():
    ap = np.array([[0.5, np.nan, 0.25], [np.nan, np.nan, np.nan], [1.0, 0.0, 0.5]])
    got = mean_over_attributes(ap)
    assert got.shape == (3,) and got[0] == 0.375 and np.isnan(got[1]) and got[2] == 0.5
    x = np.random.default_rng(0).random(37)
    x[[3, 9]] = np.nan
    assert float(mean_over_attributes(x)) == float(np.nanmean(x))             # bit for bit, as the studies use it
    assert mean_over_attributes([np.nan, 0.25, np.nan]) == 0.25               # a single defined AP is the mean
    x32 = x.astype(np.float32)                                                # summed in float64, like the studies
    assert float(mean_over_attributes(x32)) == float(np.nanmean(x32.astype(np.float64)))
    with warnings.catch_warnings():                                           # an undefined row is nan, silently
        warnings.simplefilter("error")
        assert np.isnan(mean_over_attributes([np.nan, np.nan]))
