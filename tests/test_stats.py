"""vfu_nb.stats: paired t-interval, paired bootstrap and Holm on hand-computed cases."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vfu_nb.stats import Interval, holm, paired_bootstrap, paired_t_interval


def test_t_interval_hand_computed():
    # diffs 0.02, 0.04, 0.06: mean 0.04, sd 0.02, t_{0.975,2} = 4.302653 -> half-width 0.0496827
    i = paired_t_interval([0.02, 0.04, 0.06])
    assert i.n == 3 and i.mean == pytest.approx(0.04)
    assert (i.low, i.high) == (pytest.approx(-0.0096827, abs=1e-6), pytest.approx(0.0896827, abs=1e-6))
    assert i.p == pytest.approx(scipy_stats.ttest_1samp([0.02, 0.04, 0.06], 0).pvalue)
    assert not i.excludes_zero


def test_t_interval_excludes_zero_and_edge_cases():
    i = paired_t_interval([0.05, 0.06, 0.04, 0.05, 0.07])
    assert i.excludes_zero and i.low > 0 and i.p < 0.01
    neg = paired_t_interval([-0.05, -0.06, -0.04])
    assert neg.excludes_zero and neg.high < 0
    one = paired_t_interval([0.3, float("nan")])          # nan dropped: one pair, no interval
    assert one.n == 1 and one.mean == pytest.approx(0.3) and math.isnan(one.low) and not one.excludes_zero
    none = paired_t_interval([])
    assert none.n == 0 and math.isnan(none.mean)
    same = paired_t_interval([0.25, 0.25, 0.25])          # zero spread: a point interval, p 0
    assert same.low == same.high == 0.25 and same.p == 0.0
    zero = paired_t_interval([0.0, 0.0])
    assert zero.p == 1.0 and not zero.excludes_zero


def accuracy(run, idx):
    return float(run[idx].mean())


def test_bootstrap_identical_models_gives_zero_interval():
    rng = np.random.default_rng(1)
    runs = [rng.random(200) < 0.7 for _ in range(4)]
    i = paired_bootstrap(runs, runs, accuracy, 200, n_boot=200)
    assert (i.mean, i.low, i.high) == (0.0, 0.0, 0.0) and not i.excludes_zero


def test_bootstrap_detects_a_consistent_gain_and_is_reproducible():
    rng = np.random.default_rng(2)
    base = [rng.random(500) < 0.6 for _ in range(5)]
    better = [b | (rng.random(500) < 0.3) for b in base]     # A is right wherever B is, and more often
    i = paired_bootstrap(better, base, accuracy, 500, n_boot=300, seed=7)
    assert i.n == 5 and i.low > 0 and i.excludes_zero and i.p < 0.01
    expected = np.mean([a.mean() - b.mean() for a, b in zip(better, base)])
    assert i.mean == pytest.approx(expected)
    assert i == paired_bootstrap(better, base, accuracy, 500, n_boot=300, seed=7)
    reverse = paired_bootstrap(base, better, accuracy, 500, n_boot=300, seed=7)
    assert reverse.high < 0 and reverse.mean == pytest.approx(-expected)


def test_bootstrap_interval_reflects_seed_noise():
    # per-seed differences +0.2 and -0.2 on every image: the image-level noise is 0, the seed-level is large
    a = [np.ones(100, bool), np.zeros(100, bool)]
    b = [np.zeros(100, bool), np.ones(100, bool)]
    i = paired_bootstrap(a, b, accuracy, 100, n_boot=400, seed=0)
    assert i.mean == pytest.approx(0.0) and i.low == pytest.approx(-1.0) and i.high == pytest.approx(1.0)


def test_bootstrap_refuses_unpaired_and_handles_empty():
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap([np.ones(3)], [], accuracy, 3)
    assert math.isnan(paired_bootstrap([], [], accuracy, 3).mean)


def test_holm_hand_computed():
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.01])                  # nan is not part of the family (m = 2)
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])   # 0.8 * 2 capped at 1, then monotone
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])   # 0.2 * 2 = 0.4, then max(0.4, 0.3 * 1)
    assert holm([]) == []


def test_interval_dict_round_trip():
    i = Interval(0.1, 0.05, 0.15, 3, 0.01)
    assert i.as_dict() == {"mean": 0.1, "low": 0.05, "high": 0.15, "n": 3, "p": 0.01}
