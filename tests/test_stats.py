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


# ---------------------------------------------------------------------------------------------------------
# Study 2: the variance-components interval, TOST, jackknife pseudo-values, and the coverage of the interval


from vfu_nb.stats import jackknife_pseudovalues, variance_components  # noqa: E402


def test_variance_components_of_seed_only_noise_is_the_paired_t():
    """Constant rows (no image term, no residual): the interval is the paired t over the seeds."""
    per_seed = np.array([0.02, 0.05, 0.03, 0.07, 0.04])
    u = np.repeat(per_seed[:, None], 20, axis=1)
    e = variance_components(u)
    t = paired_t_interval(per_seed)
    assert e.df == 4 and e.mean == pytest.approx(t.mean)
    assert e.interval() == (pytest.approx(t.low), pytest.approx(t.high))
    assert e.p == pytest.approx(t.p) and e.seed_share == pytest.approx(1.0)


def test_variance_components_hand_computed_with_an_image_term():
    u = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                  [1.0, 0.0, 1.0, 1.0]])
    s, n = u.shape
    g, r, c = u.mean(), u.mean(1), u.mean(0)
    ms_s = n * ((r - g) ** 2).sum() / (s - 1)
    ms_i = s * ((c - g) ** 2).sum() / (n - 1)
    ms_e = ((u - r[:, None] - c + g) ** 2).sum() / ((s - 1) * (n - 1))
    assert ms_i > ms_e
    e = variance_components(u)
    assert e.se == pytest.approx(math.sqrt((ms_s + ms_i - ms_e) / (s * n)))
    satterthwaite = (ms_s + ms_i - ms_e) ** 2 / (ms_s ** 2 / (s - 1) + ms_i ** 2 / (n - 1) + ms_e ** 2 / ((s - 1) * (n - 1)))
    assert e.df == pytest.approx(max(s - 1, satterthwaite))
    three = variance_components(u[:3])                             # fewer than 5 seeds: df = S - 1
    assert three.df == 2
    assert math.isnan(variance_components(u[:1]).se)


def test_tost_is_small_only_when_the_90_percent_interval_is_inside_the_margin():
    e = variance_components(np.random.default_rng(0).normal(0.001, 0.05, (10, 400)))
    low, high = e.interval(0.90)
    for margin in (0.5 * max(abs(low), abs(high)), 2 * max(abs(low), abs(high))):
        assert (e.tost(margin) < 0.05) == (-margin < low and high < margin)
    assert e.tost(1.0) < 1e-6 and e.tost(0.0) >= 0.5


def test_jackknife_pseudovalues_of_a_mean_are_the_values_and_of_map_match_brute_force():
    x = np.random.default_rng(1).random(30)
    assert np.allclose(jackknife_pseudovalues(x.mean(), (x.sum() - x) / 29), x)
    from vfu_nb.metrics import ResampledAveragePrecision, average_precision
    from vfu_nb.study.contrasts import map_pseudovalues

    rng = np.random.default_rng(2)
    scores = rng.normal(size=(40, 3))
    labels = np.where(rng.random((40, 3)) < 0.3, 1, -1)
    labels[:, 2] = -1
    labels[7, 2] = 1                           # one positive: leaving image 7 out drops attribute 2 from the mean
    pv = map_pseudovalues(ResampledAveragePrecision(scores, labels > 0))
    brute = [float(np.nanmean(np.asarray(average_precision(np.delete(scores, i, 0), np.delete(labels, i, 0) > 0))))
             for i in range(40)]
    full = float(np.nanmean(np.asarray(average_precision(scores, labels > 0))))
    assert np.allclose(pv, 40 * full - 39 * np.array(brute))


def simulate_hits(rng, seeds, images=600, sd_img=0.4, sd_seed=0.06, delta=0.05, mu=1.4):
    """Top-3 hits of two variants in a probit model with seed, image and seed x image terms (crossed); returns the
    per-image hit differences (seeds x images) and the true difference over seeds and images."""
    u = rng.normal(0, 1.0, images)                    # image difficulty, shared by both variants
    v = rng.normal(0, sd_img, images)                 # image x variant: the image term of the contrast
    g = rng.normal(0, 0.5, (seeds, images))           # seed x image, shared by the pair
    w = rng.normal(0, sd_seed, (2, seeds, 1))         # seed x variant: the seed term
    za = mu + delta / 2 + u + v / 2 + g + w[0] + rng.normal(size=(seeds, images))
    zb = mu - delta / 2 + u - v / 2 + g + w[1] + rng.normal(size=(seeds, images))
    tau = math.sqrt(2.25 + sd_img ** 2 / 4 + sd_seed ** 2)
    truth = scipy_stats.norm.cdf((mu + delta / 2) / tau) - scipy_stats.norm.cdf((mu - delta / 2) / tau)
    return (za > 0).astype(float) - (zb > 0), truth


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [5, 10])                      # the seed counts of results/v2/plan.yaml
@pytest.mark.parametrize("regime", [(0.6, 0.02), (0.4, 0.06), (0.15, 0.12), (0.10, 0.25)],
                         ids=["image-heavy", "mixed", "seed-heavy", "seed-extreme"])
def test_the_95_percent_interval_covers_the_truth_in_93_to_97_percent_of_simulated_studies(seeds, regime):
    """2,000 simulated studies per cell (Monte Carlo SE of a coverage near 0.95: 0.5 points), from image-dominated
    to seed-dominated variance; neither tail misses in more than 3.5 % of studies."""
    rng = np.random.default_rng(seeds * 100 + int(regime[1] * 100))
    below = above = 0
    studies = 2000
    for _ in range(studies):
        u, truth = simulate_hits(rng, seeds, sd_img=regime[0], sd_seed=regime[1])
        low, high = variance_components(u).interval(0.95)
        below += truth < low
        above += truth > high
    coverage = 1 - (below + above) / studies
    assert 0.93 <= coverage <= 0.97, coverage
    assert max(below, above) / studies <= 0.035


def simulate_map_runs(rng, seeds, images=100, attributes=8, sd_img=0.5, sd_seed=0.15):
    """Attribute scores of two variants with the same distribution (the true mAP difference is 0): per image and
    attribute a variant-specific quirk shared by its seeds (image term), a per-seed skill (seed term), noise.
    Returns each variant's runs as ranked scores (ResampledAveragePrecision)."""
    labels = np.where(rng.random((images, attributes)) < rng.uniform(0.1, 0.4, attributes), 1, -1)
    from vfu_nb.metrics import ResampledAveragePrecision

    maps = []
    for variant in range(2):
        quirk = rng.normal(0, sd_img, (images, attributes))
        runs = []
        for _ in range(seeds):
            skill = 1.0 + rng.normal(0, sd_seed)
            scores = skill * (labels > 0) + quirk + rng.normal(0, 1.0, (images, attributes))
            runs.append(ResampledAveragePrecision(scores, labels > 0))
        maps.append(runs)
    return maps


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [5, 10])
def test_the_map_interval_from_jackknife_pseudovalues_covers_a_null_difference(seeds):
    """mAP is no per-image mean: its contributions are delete-one pseudo-values. 500 simulated studies per seed
    count under a symmetric null (true difference 0): coverage within 93-97 % (Monte Carlo SE about 1 point)."""
    from vfu_nb.study.contrasts import map_pseudovalues

    rng = np.random.default_rng(seeds)
    studies, images, covered = 500, 60, 0
    everything = np.arange(images)
    for _ in range(studies):
        a, b = simulate_map_runs(rng, seeds, images)
        u = np.array([map_pseudovalues(fa) - map_pseudovalues(fb) for fa, fb in zip(a, b)])
        point = float(np.mean([np.nanmean(fa(everything)) - np.nanmean(fb(everything)) for fa, fb in zip(a, b)]))
        low, high = variance_components(u, point).interval(0.95)
        covered += low <= 0 <= high
    assert 0.93 <= covered / studies <= 0.97, covered / studies
