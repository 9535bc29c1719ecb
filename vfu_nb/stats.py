"""Statistics for comparing models trained with several seeds: paired intervals, bootstrap, Holm.

Every comparison in the study is *paired*: model A and model B are trained with the same seed (hence the same
initial weights of their shared parts, the same data order) and evaluated on the same test images.

* :func:`paired_t_interval` -- the seed-level view: d_s = metric(A, s) - metric(B, s) for each seed s,
  mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n) (Student, 1908), with the p-value of the paired t-test.
* :func:`paired_bootstrap` -- the image x seed view: each replicate resamples the seeds (with replacement) and
  the test images (with replacement, one draw shared by all seeds and both models), recomputes the metric of
  every resampled run on the resampled images and averages the paired differences; the interval is the
  percentile interval of the replicates (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993).
  It captures test-set sampling noise, which the seed-level interval ignores.
* :func:`holm` -- Holm's step-down adjustment of a family of p-values (Holm, Scand. J. Statistics, 1979),
  used across the secondary metrics of one comparison.

Study 2 replaces the pair of intervals by one with a known error rate (the first study keeps the two above):

* :func:`variance_components` -- seeds and test images are *crossed* (every seed is scored on the same images), so
  a paired contrast has a seed term, an image term shared by every seed, and a residual. From the seeds x images
  matrix U of per-image contributions (hit differences for accuracy; jackknife pseudo-values for mAP,
  :func:`jackknife_pseudovalues`) the ANOVA mean squares give Var = (MS_seed + max(MS_image - MS_resid, 0)) / (S N)
  with Satterthwaite degrees of freedom (Satterthwaite, Biometrics Bulletin, 1946), floored at S - 1, and S - 1
  below 5 seeds: for balanced data the REML answer of a mixed model with crossed random effects (Searle, Casella
  & McCulloch, "Variance Components", 1992; Baayen, Davidson & Bates, J. Memory and Language, 2008). Its coverage
  is tested by simulation in tests/test_stats.py.
* :meth:`Estimate.tost` -- two one-sided tests against an equivalence margin (Schuirmann, J. Pharmacokinetics and
  Biopharmaceutics, 1987; Lakens, Social Psychological and Personality Science, 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """A paired mean difference with its interval; ``n`` is the number of pairs (seeds)."""

    mean: float
    low: float
    high: float
    n: int
    p: float = float("nan")      # two-sided p-value of "no difference" (nan where not defined)

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (nan intervals never exclude it)."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "p": self.p}


def paired_t_interval(differences: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of paired differences (non-finite values and None are dropped).

    n = 0 gives nan throughout; n = 1 gives the mean with a nan interval. When all differences are equal the
    interval has zero width and p is 0 (or 1 when they are all 0).
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    sd = float(d.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * _scipy_stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Interval(mean, mean - half, mean + half, n, p)


def paired_bootstrap(runs_a: Sequence, runs_b: Sequence, metric: Callable[[object, np.ndarray], float],
                     n_images: int, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap of mean(metric(A_s) - metric(B_s)) over seeds and test images.

    ``runs_a[i]`` and ``runs_b[i]`` are the per-image data of the two models trained with the i-th common seed
    (anything ``metric`` understands); ``metric(run, idx)`` computes the metric of one run on the images
    ``idx`` (an int array that may repeat images). Replicate b draws seeds and ``n_images`` image indices with
    replacement from ``np.random.default_rng(seed)``. Replicates whose difference is not finite (e.g. an
    attribute with no positive among the drawn images makes an AP undefined only if the metric lets it) are
    dropped. ``p`` is twice the smaller tail fraction of replicates on either side of 0.
    """
    if len(runs_a) != len(runs_b):
        raise ValueError(f"paired runs needed: {len(runs_a)} vs {len(runs_b)}")
    n_pairs = len(runs_a)
    if n_pairs == 0 or n_images == 0:
        return Interval(math.nan, math.nan, math.nan, n_pairs)
    everything = np.arange(n_images)
    point = float(np.mean([metric(a, everything) - metric(b, everything) for a, b in zip(runs_a, runs_b)]))
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for r in range(n_boot):
        seeds = rng.integers(0, n_pairs, n_pairs)
        images = rng.integers(0, n_images, n_images)
        diffs = {}
        for s in set(seeds.tolist()):
            diffs[s] = metric(runs_a[s], images) - metric(runs_b[s], images)
        reps[r] = np.mean([diffs[s] for s in seeds])
    reps = reps[np.isfinite(reps)]
    if len(reps) == 0:
        return Interval(point, math.nan, math.nan, n_pairs)
    tail = (1 - confidence) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    p = float(min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
    return Interval(point, float(low), float(high), n_pairs, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (nan or None stays nan and does not count in the family).

    Sorted ascending, p_(i) is multiplied by (m - i + 1) with m the number of finite p-values, capped at 1,
    and made monotone non-decreasing.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass(frozen=True)
class Estimate:
    """A contrast's mean over seeds with its standard error and degrees of freedom (:func:`variance_components`)."""

    mean: float
    se: float
    df: float
    n_seeds: int
    n_images: int
    seed_share: float = math.nan     # share of the variance from the seed term (the rest: test images)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided ``level`` t-interval (nan without a standard error)."""
        if not math.isfinite(self.se):
            return math.nan, math.nan
        half = float(_scipy_stats.t.ppf(0.5 + level / 2, self.df)) * self.se
        return self.mean - half, self.mean + half

    @property
    def p(self) -> float:
        """Two-sided p-value of "the contrast is 0"."""
        if not math.isfinite(self.se):
            return math.nan
        if self.se == 0:
            return 1.0 if self.mean == 0 else 0.0
        return float(2 * _scipy_stats.t.sf(abs(self.mean) / self.se, self.df))

    def tost(self, margin: float) -> float:
        """p-value of the two one-sided tests of "|contrast| >= margin" (small: equivalent within the margin)."""
        if not math.isfinite(self.se):
            return math.nan
        if self.se == 0:
            return 0.0 if abs(self.mean) < margin else 1.0
        lower = _scipy_stats.t.sf((self.mean + margin) / self.se, self.df)
        upper = _scipy_stats.t.cdf((self.mean - margin) / self.se, self.df)
        return float(max(lower, upper))

    def as_dict(self, level: float = 0.95) -> dict:
        low, high = self.interval(level)
        return {"mean": self.mean, "se": self.se, "df": self.df, "low": low, "high": high, "p": self.p,
                "n": self.n_seeds, "n_images": self.n_images, "seed_share": self.seed_share}


def variance_components(contributions, point: float | None = None) -> Estimate:
    """The contrast's estimate from its (S seeds, N images) per-image contributions ``U``.

    Var = (MS_seed + max(MS_image - MS_resid, 0)) / (S N); the degrees of freedom are Satterthwaite's for that
    combination of mean squares, floored at S - 1 (S - 1 itself for S < 5, or when the image term is truncated).
    ``point`` is the estimate to centre on (default the mean of U; for mAP the mean of the per-seed differences,
    since pseudo-values are bias-corrected). One seed: no standard error (nan).
    """
    u = np.asarray(contributions, dtype=float)
    if u.ndim != 2 or u.shape[1] < 2:
        raise ValueError(f"contributions must be (seeds, images) with at least 2 images, got shape {u.shape}")
    n_seeds, n_images = u.shape
    grand = float(u.mean())
    mean = grand if point is None else float(point)
    if n_seeds < 2:
        return Estimate(mean, math.nan, math.nan, n_seeds, n_images)
    rows, cols = u.mean(1), u.mean(0)
    ms_seed = n_images * float(((rows - grand) ** 2).sum()) / (n_seeds - 1)
    ms_image = n_seeds * float(((cols - grand) ** 2).sum()) / (n_images - 1)
    ms_resid = float(((u - rows[:, None] - cols[None, :] + grand) ** 2).sum()) / ((n_seeds - 1) * (n_images - 1))
    image = max(ms_image - ms_resid, 0.0)
    var = (ms_seed + image) / (n_seeds * n_images)
    df = float(n_seeds - 1)
    if image > 0 and n_seeds >= 5:
        terms = [(ms_seed, n_seeds - 1), (ms_image, n_images - 1), (-ms_resid, (n_seeds - 1) * (n_images - 1))]
        df = max(df, sum(m for m, _ in terms) ** 2 / sum(m * m / d for m, d in terms))
    share = ms_seed / (ms_seed + image) if ms_seed + image > 0 else math.nan
    return Estimate(mean, math.sqrt(var), df, n_seeds, n_images, share)


def jackknife_pseudovalues(full: float, left_out) -> np.ndarray:
    """Delete-one jackknife pseudo-values N * m(all) - (N - 1) * m(all but i) of a metric of the N test images,
    from ``full`` = m(all) and ``left_out[i]`` = m(all but i) (Quenouille, Biometrika, 1956; Tukey, 1958):
    per-image contributions of a metric that is not a per-image mean (mAP); for a per-image mean they equal the
    per-image values."""
    left_out = np.asarray(left_out, dtype=np.float64)
    return len(left_out) * full - (len(left_out) - 1) * left_out


__all__ = ["Interval", "paired_t_interval", "paired_bootstrap", "holm", "Estimate", "variance_components",
           "jackknife_pseudovalues"]
