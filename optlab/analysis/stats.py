"""Statistics for seed-paired optimizer comparisons (pure functions of numpy arrays).

Two optimizers run on the same seeds give paired samples ``a`` and ``b``; every
test here reads the per-seed differences ``d = a - b`` (Student 1908; Wilcoxon
1945; Efron & Tibshirani 1993, ch. 14 for BCa; Schuirmann 1987 for TOST;
Holm 1979). :func:`paired` bundles them and :func:`verdict` turns them into one
word. :func:`expected_max` is the budget-aware "expected validation
performance" curve of Dodge et al. (2019), *Show Your Work*, EMNLP.

Degenerate cases are answered, not raised: with fewer than two pairs every
statistic is NaN; with zero spread (all differences equal -- common with
discrete accuracies and few seeds) the t statistic is undefined and the exact
sign test stands in for it (all n differences on one side: p = 0.5^n
one-sided, 2 * 0.5^n two-sided; so 2 identical differences never make a
significant result), the MDE is NaN and the bootstrap interval is the point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

__all__ = [
    "PairedResult",
    "paired",
    "bootstrap_ci",
    "paired_t_pvalue",
    "wilcoxon_pvalue",
    "tost_pvalue",
    "min_detectable_effect",
    "holm",
    "verdict",
    "expected_max",
    "VERDICTS",
    "CI_METHODS",
    "DEFAULT_RESAMPLES",
]

VERDICTS = ("better", "worse", "equivalent", "inconclusive")
CI_METHODS = ("BCa", "percentile")
DEFAULT_RESAMPLES = 10_000


def _diffs(a, b=None) -> np.ndarray:
    """``a - b`` (or ``a`` when ``b`` is None) as a 1-D float array; NaN pairs are an error."""
    d = np.asarray(a, dtype=float) if b is None else np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1:
        raise ValueError(f"expected 1-D paired samples, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError(
            f"paired samples contain non-finite values at positions "
            f"{np.flatnonzero(~np.isfinite(d)).tolist()}; drop those seeds from both samples first"
        )
    return d


def bootstrap_ci(
    d, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, method: str = "BCa", seed: int = 0
) -> tuple[float, float]:
    """Bootstrap ``confidence`` interval of the mean of the paired differences ``d``.

    Resampling seeds (pairs) with replacement, ``n_resamples`` times, from a
    fixed ``seed`` so a report is reproducible. ``method="BCa"`` (default):
    bias-corrected and accelerated percentiles (Efron 1987), second-order
    accurate; ``"percentile"``: the plain quantiles of the resampled means.
    Computed by :func:`scipy.stats.bootstrap`.
    """
    if method not in CI_METHODS:
        raise ValueError(f"invalid method={method!r}; expected one of {', '.join(CI_METHODS)}")
    if n_resamples < 1000:
        raise ValueError(
            f"n_resamples={n_resamples} is too few for a 95 % interval; use >= 1000 (default {DEFAULT_RESAMPLES})"
        )
    d = _diffs(d)
    if len(d) < 2:
        return (math.nan, math.nan)
    if np.ptp(d) == 0:  # every resample has the same mean
        return (float(d[0]), float(d[0]))
    res = stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def _sign_test_equal(value: float, popmean: float, n: int, alternative: str) -> float:
    """Exact sign-test p-value for n differences all equal to ``value`` (a t-test is undefined there)."""
    diff = value - popmean
    if diff == 0:
        return 1.0
    if alternative == "two-sided":
        return min(1.0, 2 * 0.5**n)
    return 0.5**n if (diff > 0) == (alternative == "greater") else 1.0


def _t_pvalue(d: np.ndarray, popmean: float, alternative: str) -> float:
    if len(d) < 2:
        return math.nan
    if np.ptp(d) == 0:
        return _sign_test_equal(float(d[0]), popmean, len(d), alternative)
    return float(stats.ttest_1samp(d, popmean, alternative=alternative).pvalue)


def paired_t_pvalue(a, b=None) -> float:
    """Two-sided paired t-test p-value, H0: E[a - b] = 0 (``t = mean(d) / (sd(d)/sqrt(n))``,
    ``n - 1`` degrees of freedom; :func:`scipy.stats.ttest_rel`)."""
    return _t_pvalue(_diffs(a, b), 0.0, "two-sided")


def wilcoxon_pvalue(a, b=None) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences.

    Zero differences are dropped (``zero_method="wilcox"``); exact null
    distribution for small samples without ties, normal approximation
    otherwise (:func:`scipy.stats.wilcoxon`, ``method="auto"``). With no non-zero
    difference left there is no evidence of a difference: p = 1.
    """
    d = _diffs(a, b)
    nz = d[d != 0]
    if len(d) < 2:
        return math.nan
    if len(nz) == 0:
        return 1.0
    return float(stats.wilcoxon(nz, zero_method="wilcox").pvalue)


def tost_pvalue(a, b=None, margin: float = 0.005) -> float:
    """Equivalence p-value: two one-sided paired t-tests (TOST, Schuirmann 1987).

    H0: |E[d]| >= margin against H1: -margin < E[d] < margin;
    ``p = max(p(d > -margin), p(d < margin))``. A small p supports "the
    difference lies within the margin".
    """
    if not margin > 0:
        raise ValueError(f"invalid margin={margin!r}; expected a positive number (e.g. 0.005 = 0.5 pp)")
    d = _diffs(a, b)
    return max(_t_pvalue(d, -margin, "greater"), _t_pvalue(d, margin, "less"))


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test at level ``alpha`` detects with
    probability ``power`` with ``n`` pairs whose differences have standard deviation ``sd``.

    Exact, from the noncentral t distribution: the effect ``delta`` solves
    ``P(|T| > t_{1-alpha/2, n-1}) = power`` with ``T ~ nct(n - 1, delta sqrt(n) / sd)``.
    (For large n it tends to the normal approximation ``(z_{1-alpha/2} + z_power) sd / sqrt(n)``.)
    """
    if n < 2 or not math.isfinite(sd) or sd == 0:  # no spread observed: no basis for a power calculation
        return math.nan
    df = n - 1
    tcrit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(es: float) -> float:  # es: effect size in units of sd
        nc = es * math.sqrt(n)
        wrong_side = stats.nct.cdf(-tcrit, df, nc)  # far tail: scipy may answer NaN where it underflows
        return stats.nct.sf(tcrit, df, nc) + (0.0 if math.isnan(wrong_side) else wrong_side) - power

    hi = 1.0
    while shortfall(hi) < 0:
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-12) * sd)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (family-wise error control).

    Sorted ascending, ``p_(j)`` becomes ``max_{k<=j} min(1, (m - k + 1) p_(k))``;
    reject where the adjusted value is below alpha. NaN entries are not tests:
    they stay NaN and do not count in ``m``.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def verdict(
    mean_diff: float,
    ci: tuple[float, float],
    p_adjusted: float,
    p_equivalence: float,
    alpha: float = 0.05,
    higher_is_better: bool = True,
) -> str:
    """One word for one comparison.

    * ``better`` / ``worse``: the (multiplicity-adjusted) test rejects "no
      difference" at ``alpha`` AND the bootstrap CI excludes 0; the sign of
      the difference (and ``higher_is_better``) picks the word;
    * ``equivalent``: otherwise, if the equivalence test rejects "the
      difference is at least the margin" at ``alpha``;
    * ``inconclusive``: neither -- the data cannot tell (see the MDE).
    """
    lo, hi = ci
    if p_adjusted < alpha and (lo > 0 or hi < 0):
        return "better" if (mean_diff > 0) == higher_is_better else "worse"
    if p_equivalence < alpha:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class PairedResult:
    """Statistics of one seed-paired comparison (``d = a - b``)."""

    n: int
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    ci_method: str
    p_t: float
    p_wilcoxon: float
    p_tost: float
    margin: float
    mde: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired(
    a,
    b,
    margin: float = 0.005,
    alpha: float = 0.05,
    power: float = 0.8,
    n_resamples: int = DEFAULT_RESAMPLES,
    ci_method: str = "BCa",
    seed: int = 0,
) -> PairedResult:
    """Everything :func:`verdict` needs for ``a`` vs ``b`` (same seeds, same order).

    ``mde`` is :func:`min_detectable_effect` from the observed SD of the
    differences; the p-values are unadjusted (adjust across a family with
    :func:`holm`).
    """
    d = _diffs(a, b)
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    lo, hi = bootstrap_ci(d, 1 - alpha, n_resamples=n_resamples, method=ci_method, seed=seed)
    return PairedResult(
        n=n,
        mean_diff=float(d.mean()) if n else math.nan,
        sd_diff=sd,
        ci_low=lo,
        ci_high=hi,
        ci_method=ci_method,
        p_t=paired_t_pvalue(d),
        p_wilcoxon=wilcoxon_pvalue(d),
        p_tost=tost_pvalue(d, margin=margin),
        margin=margin,
        mde=min_detectable_effect(sd, n, alpha=alpha, power=power),
    )


def expected_max(values, n: int | Sequence[int]) -> np.ndarray:
    """Expected best score after ``n`` configurations drawn (i.i.d., with replacement) from ``values``,
    the scores of the N configurations tried (Dodge et al. 2019, eq. 1 with the empirical CDF):

        E[max_n] = sum_i v_(i) [ (i/N)^n - ((i-1)/N)^n ],   v_(1) <= ... <= v_(N).

    ``n = 1`` gives the mean of ``values``; large ``n`` tends to their maximum.
    """
    v = np.sort(np.asarray(values, dtype=float))
    if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"expected a non-empty 1-D array of finite scores, got {values!r}")
    ns = np.atleast_1d(np.asarray(n))
    if (ns < 1).any() or not np.issubdtype(ns.dtype, np.integer):
        raise ValueError(f"n must be positive integers, got {n!r}")
    big_n = len(v)
    frac = np.arange(big_n + 1) / big_n
    w = frac[None, 1:] ** ns[:, None] - frac[None, :-1] ** ns[:, None]
    return w @ v
