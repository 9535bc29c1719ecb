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


# ---------------------------------------------------------------------------------------------------------
# Pinned values and edges (mutation testing found these unpinned: `python tools/mutation.py stats`)


def mean_squares(u):
    """The two-way ANOVA mean squares of a seeds x images matrix, by explicit sums (a second derivation)."""
    s, n = len(u), len(u[0])
    g = sum(map(sum, u)) / (s * n)
    r = [sum(row) / n for row in u]
    c = [sum(u[i][j] for i in range(s)) / s for j in range(n)]
    ms_s = n * sum((x - g) ** 2 for x in r) / (s - 1)
    ms_i = s * sum((x - g) ** 2 for x in c) / (n - 1)
    ms_e = sum((u[i][j] - r[i] - c[j] + g) ** 2 for i in range(s) for j in range(n)) / ((s - 1) * (n - 1))
    return ms_s, ms_i, ms_e


def image_heavy(seeds=6, images=40, scale=0.1, noise=0.3):
    """Contributions whose image term dominates (Satterthwaite's df well above S - 1), at a scale where the image
    variance component is below 1."""
    rng = np.random.default_rng(3)
    return scale * (rng.normal(0, 1, (1, images)) + rng.normal(0, 0.1, (seeds, 1))
                    + rng.normal(0, noise, (seeds, images)))


def satterthwaite(u):
    s, n = u.shape
    ms_s, ms_i, ms_e = mean_squares(u.tolist())
    return (ms_s + ms_i - ms_e) ** 2 / (ms_s ** 2 / (s - 1) + ms_i ** 2 / (n - 1) + ms_e ** 2 / ((s - 1) * (n - 1)))


def test_variance_components_every_field_when_satterthwaite_is_above_the_floor():
    u = image_heavy()
    s, n = u.shape
    ms_s, ms_i, ms_e = mean_squares(u.tolist())
    image = ms_i - ms_e
    assert 0 < image < 1
    sat = (ms_s + ms_i - ms_e) ** 2 / (ms_s ** 2 / (s - 1) + ms_i ** 2 / (n - 1) + ms_e ** 2 / ((s - 1) * (n - 1)))
    assert sat > s                                                          # well above the floor S - 1
    e = variance_components(u)
    assert e.df == pytest.approx(sat) and e.se == pytest.approx(math.sqrt((ms_s + image) / (s * n)))
    assert e.mean == pytest.approx(u.mean()) and (e.n_seeds, e.n_images) == (s, n)
    assert e.seed_share == pytest.approx(ms_s / (ms_s + image))
    assert variance_components(u[:5]).df > 4                               # five seeds: Satterthwaite applies
    assert variance_components(u[:4]).df == 3                              # four: S - 1, whatever Satterthwaite says
    centred = variance_components(u, point=0.123)                          # the estimate to centre on
    assert centred.mean == 0.123 and centred.se == e.se and centred.df == e.df
    few = image_heavy(images=8, noise=1.0)                                 # few images: every term of df counts
    assert variance_components(few).df == pytest.approx(satterthwaite(few), rel=1e-9)
    single = u.astype(np.float32)                                          # computed in float64 whatever comes in
    assert variance_components(single) == variance_components(single.astype(np.float64))


def test_variance_components_without_an_image_term_or_any_spread():
    u = image_heavy()
    balanced = u - u.mean(0, keepdims=True)                                 # no image term: MS_image = 0 < MS_resid
    e = variance_components(balanced)
    assert e.df == 5 and e.seed_share == 1.0
    flat = variance_components(np.full((5, 10), 0.25))                      # nothing varies
    assert flat.se == 0 and flat.mean == 0.25 and math.isnan(flat.seed_share) and flat.p == 0.0
    two = variance_components(u[:2, :2])                                    # the smallest shape with an interval
    assert math.isfinite(two.se) and two.df == 1
    one = variance_components(u[:1])
    assert one.mean == pytest.approx(u[0].mean()) and math.isnan(one.se) and math.isnan(one.df)
    assert (one.n_seeds, one.n_images) == (1, 40) and math.isnan(one.p) and math.isnan(one.tost(0.1))
    for bad in (u[0], u[:, :1]):
        with pytest.raises(ValueError, match=r"must be \(seeds, images\) with at least 2 images"):
            variance_components(bad)


def test_tost_and_p_of_a_zero_standard_error():
    from vfu_nb.stats import Estimate

    for mean, margin, expected in ((0.01, 0.02, 0.0), (0.02, 0.02, 1.0), (-0.05, 0.02, 1.0), (0.0, 0.02, 0.0)):
        assert Estimate(mean, 0.0, 4.0, 5, 100).tost(margin) == expected
    assert Estimate(0.0, 0.0, 4.0, 5, 100).p == 1.0 and Estimate(0.01, 0.0, 4.0, 5, 100).p == 0.0
    unit = Estimate(0.01, 1.0, 4.0, 5, 100)                                  # se 1 is an ordinary standard error
    assert unit.tost(0.02) == pytest.approx(max(scipy_stats.t.sf(0.03, 4.0), scipy_stats.t.cdf(-0.01, 4.0)))


def test_p_values_and_differences_given_as_none_count_as_missing():
    assert holm([0.02, None, 0.01]) == pytest.approx([0.02, math.nan, 0.02], nan_ok=True)
    i = paired_t_interval([0.1, None, 0.3])
    assert i.n == 2 and i.mean == pytest.approx(0.2)
    empty = paired_t_interval([])
    assert math.isnan(empty.low) and math.isnan(empty.high) and empty.n == 0


def test_jackknife_pseudovalues_are_float64_whatever_the_input():
    left_out = np.array([0.5, 0.25, 0.75], dtype=np.float32)
    out = jackknife_pseudovalues(0.5, left_out)
    assert out.dtype == np.float64 and out.tolist() == [0.5, 1.0, 0.0]


def strict_accuracy(run, idx):
    assert isinstance(idx, np.ndarray) and idx.dtype.kind == "i" and idx.ndim == 1, idx
    return float(run[idx].mean())


def test_paired_bootstrap_is_the_documented_resampling_exactly():
    """Replicate b: seeds, then images, drawn with replacement from default_rng(seed); percentile interval;
    p = twice the smaller tail. Re-derived here with the same draws (defaults: 1000 replicates, seed 0)."""
    rng = np.random.default_rng(5)
    base = [rng.random(30) < 0.6 for _ in range(4)]
    other = [b ^ (rng.random(30) < 0.15) for b in base]        # no systematic difference: p is large
    got = paired_bootstrap(other, base, strict_accuracy, 30)
    draws = np.random.default_rng(0)
    reps = []
    for _ in range(1000):
        seeds = draws.integers(0, 4, 4)
        images = draws.integers(0, 30, 30)
        reps.append(np.mean([other[s][images].mean() - base[s][images].mean() for s in seeds]))
    reps = np.array(reps)
    low, high = np.quantile(reps, [0.025, 0.975])
    p = min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0)))
    assert (got.low, got.high, got.p) == (pytest.approx(low), pytest.approx(high), pytest.approx(p))
    assert got.mean == pytest.approx(np.mean([o.mean() - b.mean() for o, b in zip(other, base)]))
    assert 0.3 < got.p < 1.0 and np.mean(reps == 0) > 0                     # exact zeros: the <= and >= matter
    wide = paired_bootstrap(other, base, strict_accuracy, 30, confidence=0.5)
    assert (wide.low, wide.high) == (pytest.approx(np.quantile(reps, 0.25)), pytest.approx(np.quantile(reps, 0.75)))
    gain = paired_bootstrap([np.ones(30, bool)] * 4, base, strict_accuracy, 30, n_boot=50)
    assert gain.p == 0.0 and gain.low > 0


def test_paired_bootstrap_edges():
    one = paired_bootstrap([np.array([1, 0, 1])], [np.array([0, 0, 1])], strict_accuracy, 3, n_boot=20)
    assert one.n == 1 and one.mean == pytest.approx(1 / 3) and math.isfinite(one.low)
    single = paired_bootstrap([np.array([1])], [np.array([0])], strict_accuracy, 1, n_boot=20)
    assert (single.mean, single.low, single.high) == (1.0, 1.0, 1.0)
    for empty in (paired_bootstrap([], [], strict_accuracy, 3), paired_bootstrap([np.ones(3)], [np.ones(3)],
                                                                                strict_accuracy, 0)):
        assert math.isnan(empty.mean) and math.isnan(empty.low) and math.isnan(empty.high)
    assert paired_bootstrap([], [], strict_accuracy, 3).n == 0
    assert paired_bootstrap([np.ones(3)], [np.ones(3)], strict_accuracy, 0).n == 1

    def only_on_all_images(run, idx):                  # undefined on any resample that misses an image
        return float(run[idx].mean()) if len(set(idx.tolist())) == len(run) else math.nan

    runs = [np.arange(8) % 2 == 0, np.arange(8) % 3 == 0]
    undefined = paired_bootstrap(runs, runs[::-1], only_on_all_images, 8, n_boot=30)
    assert undefined.mean == pytest.approx(0.0) and math.isnan(undefined.low) and math.isnan(undefined.high)
    assert undefined.n == 2
    same = paired_bootstrap(runs, runs, strict_accuracy, 8, n_boot=30)      # every replicate exactly 0
    assert same.p == 1.0
    import warnings

    with warnings.catch_warnings():                                        # nothing to resample: no empty means
        warnings.simplefilter("error")
        paired_bootstrap([], [], strict_accuracy, 3)
        paired_bootstrap([np.ones(3)], [np.ones(3)], strict_accuracy, 0)


def test_estimate_as_dict_holds_its_interval_and_test():
    from vfu_nb.stats import Estimate

    e = Estimate(0.05, 0.01, 9.0, 10, 600, 0.4)
    low, high = e.interval(0.9)
    assert e.as_dict(0.9) == {"mean": 0.05, "se": 0.01, "df": 9.0, "low": low, "high": high, "p": e.p, "n": 10,
                              "n_images": 600, "seed_share": 0.4}
    assert e.as_dict()["low"] == e.interval()[0] < low
