"""optlab.analysis.stats against scipy, closed forms, brute force and simulation."""

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from optlab.analysis import stats as S


def test_paired_t_matches_scipy_and_hand_value():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.9, 0.01, 12), rng.normal(0.895, 0.01, 12)
    assert S.paired_t_pvalue(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    # d = 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3), df 2 -> p = 2 (1 - F_t(2 sqrt 3; 2)) = 1 - 3/sqrt(15)
    # (for df = 2, F_t(t) = 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12/14))
    assert S.paired_t_pvalue([1.0, 2.0, 3.0]) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-10)
    # zero spread (t undefined): the exact sign test -- 2 identical differences are never significant
    assert S.paired_t_pvalue([0.01, 0.01, 0.01]) == pytest.approx(2 * 0.5**3)
    assert S.paired_t_pvalue([0.01, 0.01]) == pytest.approx(0.5)
    assert S.paired_t_pvalue([-0.01] * 20) == pytest.approx(stats.binomtest(20, 20).pvalue)
    assert S.paired_t_pvalue([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(S.paired_t_pvalue([0.3]))
    with pytest.raises(ValueError, match="non-finite values at positions \\[1\\]"):
        S.paired_t_pvalue([0.1, float("nan"), 0.2])


def test_wilcoxon_matches_scipy_exact_and_handles_zeros():
    rng = np.random.default_rng(2)
    d = rng.normal(0.002, 0.01, 15)
    assert S.wilcoxon_pvalue(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    # all five differences positive: the exact two-sided p is 2 / 2^5
    assert S.wilcoxon_pvalue([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)
    # zeros are dropped (zero_method="wilcox"): same as the test on the non-zero differences
    assert S.wilcoxon_pvalue([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)
    assert S.wilcoxon_pvalue(np.zeros(10)) == 1.0  # scipy answers NaN (with a warning) or raises here
    assert S.wilcoxon_pvalue([0.0, 0.0, 0.02]) == pytest.approx(1.0)


def test_tost_is_two_one_sided_t_tests():
    rng = np.random.default_rng(3)
    d = rng.normal(0.001, 0.004, 20)
    m = 0.005
    lower = stats.ttest_1samp(d, -m, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, m, alternative="less").pvalue
    assert S.tost_pvalue(d, margin=m) == pytest.approx(max(lower, upper), rel=1e-12)
    # hand case: d = (-1, 0, 1) / 100, margin 0.02: mean 0, sd 0.01, se 0.01/sqrt(3), both t = 2 sqrt(3), df 2
    t = 0.02 / (0.01 / math.sqrt(3))
    assert S.tost_pvalue([-0.01, 0.0, 0.01], margin=0.02) == pytest.approx(stats.t.sf(t, 2), rel=1e-10)
    # a clear difference is not equivalent; zero spread inside / outside the margin
    assert S.tost_pvalue(d + 0.02, margin=m) > 0.5
    assert S.tost_pvalue([0.001] * 4, margin=m) == pytest.approx(0.5**4)  # sign test on each side
    assert S.tost_pvalue([0.01] * 4, margin=m) == 1.0
    with pytest.raises(ValueError, match="invalid margin=0"):
        S.tost_pvalue(d, margin=0)


def test_bootstrap_percentile_matches_the_exact_resampling_distribution():
    # d has ten 0s and ten 1s: the resampled mean is Binomial(20, 1/2) / 20, whose 2.5 % and 97.5 %
    # quantiles are 6/20 and 14/20 (the CDF jumps over both levels there, so 10k resamples land on them).
    d = np.array([0.0] * 10 + [1.0] * 10)
    assert stats.binom.cdf(5, 20, 0.5) < 0.025 < stats.binom.cdf(6, 20, 0.5)
    assert stats.binom.cdf(13, 20, 0.5) < 0.975 < stats.binom.cdf(14, 20, 0.5)
    assert S.bootstrap_ci(d, method="percentile") == pytest.approx((0.30, 0.70))


def test_bootstrap_bca_is_reproducible_close_to_t_for_normal_data_and_covers():
    rng = np.random.default_rng(4)
    d = rng.normal(0.003, 0.01, 200)
    lo, hi = S.bootstrap_ci(d)
    assert (lo, hi) == S.bootstrap_ci(d)  # fixed seed: the same interval every time
    half = stats.t.ppf(0.975, 199) * d.std(ddof=1) / math.sqrt(200)
    assert lo == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(d.mean() + half, abs=0.15 * half)
    # coverage over 200 simulated experiments of 20 seeds (true mean 0.003): about 95 %
    hits = sum(
        lo <= 0.003 <= hi
        for lo, hi in (S.bootstrap_ci(rng.normal(0.003, 0.01, 20), n_resamples=2000) for _ in range(200))
    )
    assert 0.88 <= hits / 200 <= 0.99
    assert S.bootstrap_ci([0.01, 0.01, 0.01]) == (0.01, 0.01)
    assert all(math.isnan(x) for x in S.bootstrap_ci([0.01]))
    with pytest.raises(ValueError, match="invalid method='student'"):
        S.bootstrap_ci(d, method="student")


def test_min_detectable_effect_has_the_stated_power():
    # known value (G*Power, one-sample / paired t, two-sided alpha 0.05, power 0.8, n = 20): d_z = 0.6604
    assert S.min_detectable_effect(1.0, 20) == pytest.approx(0.6604, abs=5e-4)
    # large n: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n)
    approx = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(2000)
    assert S.min_detectable_effect(1.0, 2000) == pytest.approx(approx, rel=2e-3)
    # simulation: with the true mean at the MDE, the paired t-test rejects 80 % of the time
    sd, n = 0.008, 5
    mde = S.min_detectable_effect(sd, n)
    rng = np.random.default_rng(5)
    d = rng.normal(mde, sd, (20000, n))
    rejected = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)
    assert S.min_detectable_effect(2 * sd, n) == pytest.approx(2 * mde)  # linear in sd
    assert math.isnan(S.min_detectable_effect(sd, 1)) and math.isnan(S.min_detectable_effect(0.0, 5))


def test_holm_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> monotone 0.06
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = S.holm([0.01, float("nan"), 0.02])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert S.holm([]).shape == (0,)
    # Holm is never less conservative than unadjusted and never more than Bonferroni
    rng = np.random.default_rng(6)
    q = rng.uniform(0, 0.2, 12)
    h = S.holm(q)
    assert (h >= q - 1e-15).all() and (h <= np.minimum(1, 12 * q) + 1e-15).all()


def test_verdict_words():
    assert S.verdict(0.01, (0.004, 0.016), 0.01, 0.9) == "better"
    assert S.verdict(-0.01, (-0.016, -0.004), 0.01, 0.9) == "worse"
    assert S.verdict(-0.01, (-0.016, -0.004), 0.01, 0.9, higher_is_better=False) == "better"
    assert S.verdict(0.01, (-0.001, 0.02), 0.01, 0.9) == "inconclusive"  # CI touches 0
    assert S.verdict(0.01, (0.004, 0.016), 0.2, 0.9) == "inconclusive"  # not significant after Holm
    assert S.verdict(0.0005, (-0.001, 0.002), 0.6, 0.01) == "equivalent"
    assert S.verdict(math.nan, (math.nan, math.nan), math.nan, math.nan) == "inconclusive"


def test_paired_bundles_the_pieces():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.95, 0.004, 20), rng.normal(0.945, 0.004, 20)
    r = S.paired(a, b, margin=0.005)
    d = a - b
    assert r.n == 20 and r.mean_diff == pytest.approx(d.mean()) and r.sd_diff == pytest.approx(d.std(ddof=1))
    assert r.p_t == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert r.ci_low < r.mean_diff < r.ci_high and r.ci_method == "BCa"
    assert r.mde == pytest.approx(S.min_detectable_effect(d.std(ddof=1), 20))
    assert set(r.as_dict()) >= {"n", "mean_diff", "ci_low", "ci_high", "p_t", "p_wilcoxon", "p_tost", "mde"}


def test_expected_max_closed_form_equals_brute_force():
    v = [0.91, 0.95, 0.93, 0.95, 0.80]  # a tie included
    for n in (1, 2, 3):
        brute = np.mean([max(c) for c in itertools.product(v, repeat=n)])  # every ordered draw with replacement
        assert S.expected_max(v, n)[0] == pytest.approx(brute, rel=1e-12)
    curve = S.expected_max(v, [1, 2, 5, 200])
    assert curve[0] == pytest.approx(np.mean(v)) and curve[-1] == pytest.approx(max(v), abs=1e-12)
    assert (np.diff(curve) >= 0).all()
    # hand case: v = (0, 1), n = 2 -> P(max = 1) = 1 - 1/4
    assert S.expected_max([0.0, 1.0], 2)[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive integers"):
        S.expected_max(v, 0)
    with pytest.raises(ValueError, match="non-empty"):
        S.expected_max([], 1)


def test_degenerate_inputs_give_their_closed_forms_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = S.paired([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
        two = S.paired([0.91, 0.92], [0.90, 0.90])
    # identical arms: no difference, no spread; sign tests where t is undefined; no power calculation
    assert (same.n, same.mean_diff, same.sd_diff, same.ci_low, same.ci_high) == (3, 0.0, 0.0, 0.0, 0.0)
    assert same.p_t == 1.0 and same.p_wilcoxon == 1.0
    assert same.p_tost == pytest.approx(0.5**3)  # inside the margin on each side: 3 of 3 signs agree
    assert math.isnan(same.mde)
    # two pairs, d = (0.01, 0.02): mean 0.015, sd 0.01/sqrt(2), se 0.005, t = 3 with df 1 (Cauchy:
    # F(t) = 1/2 + atan(t)/pi); the exact Wilcoxon p for 2 of 2 positive ranks is 2/2^2
    assert two.n == 2 and two.mean_diff == pytest.approx(0.015) and two.sd_diff == pytest.approx(0.01 / math.sqrt(2))
    assert two.p_t == pytest.approx(1 - 2 * math.atan(3) / math.pi, rel=1e-10)
    assert two.p_wilcoxon == pytest.approx(0.5)
    # TOST, margin 0.005: max(P(T > (0.015 + 0.005)/0.005), P(T < (0.015 - 0.005)/0.005)), T ~ t_1
    assert two.p_tost == pytest.approx(max(0.5 - math.atan(4) / math.pi, 0.5 + math.atan(2) / math.pi), rel=1e-10)
    # bootstrap means of 2 draws from {0.01, 0.02} lie in [0.01, 0.02], each end with probability 1/4
    assert two.ci_low == pytest.approx(0.01) and two.ci_high == pytest.approx(0.02)
    # the MDE solves its definition: a two-sided t-test at 0.05 detects it with probability 0.8
    tcrit = stats.t.ppf(0.975, 1)
    nc = two.mde * math.sqrt(2) / two.sd_diff
    power = stats.nct.sf(tcrit, 1, nc) + stats.nct.sf(tcrit, 1, -nc)  # P(T < -c; nc) = P(T > c; -nc)
    assert power == pytest.approx(0.8, abs=1e-8)
