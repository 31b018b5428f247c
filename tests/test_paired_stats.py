"""The benchmark's statistics hold what they claim: a 95% interval covers a zero effect 93-97% of
the time in benchmarks simulated like ours (warm starts, nested seeds, warm-start effects from none
to dominant, heavy tails), the sign-flip test's false-positive rate is at most its level, Holm and
the MDE match their definitions."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from benchmark import paired_stats as ps


def simulate(rng, W, S, icc, tails, effect=0.0):
    """{warm start: [S paired differences]}: a warm-start effect (share icc of the variance) plus
    run noise, t-distributed with `tails` degrees of freedom (inf: normal), shifted by effect."""
    def noise(size, share):
        x = rng.standard_normal(size) if tails == math.inf else rng.standard_t(tails, size) / math.sqrt(tails / (tails - 2))
        return x * math.sqrt(share)
    u = noise(W, icc)
    return {w: list(effect + u[w] + noise(S, 1 - icc)) for w in range(W)}


@pytest.mark.parametrize("W,S", [(6, 1), (16, 2), (3, 2)])
@pytest.mark.parametrize("icc", [0.0, 0.9])
@pytest.mark.parametrize("tails", [math.inf, 5])
def test_interval_covers_a_zero_effect_93_to_97_percent(W, S, icc, tails):
    rng = np.random.default_rng(1000 * W + 10 * S + int(10 * icc) + (tails != math.inf))
    sims = 2000  # the coverage's simulation error: sd 0.005, so 93-97% is 4 sd either side of 95%
    covered = 0
    for _ in range(sims):
        lo, hi = ps.paired_comparison(simulate(rng, W, S, icc, tails))["ci"]
        covered += lo <= 0 <= hi
    assert 0.93 <= covered / sims <= 0.97, (W, S, icc, tails, covered / sims)


@pytest.mark.parametrize("W,S,icc", [(6, 1, 0.0), (16, 2, 0.7), (20, 1, 0.3)])
def test_sign_flip_false_positives_at_most_the_level(W, S, icc):
    """Under a zero effect, P(p <= 0.05) <= 0.05 (up to simulation error); 20 warm starts take the
    sampled branch."""
    rng = np.random.default_rng(W + S)
    sims = 1500 if W <= 16 else 300
    rejections = sum(ps.paired_comparison(simulate(rng, W, S, icc, 5))["p_sign_flip"] <= 0.05 for _ in range(sims))
    assert rejections / sims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)


def test_sign_flip_is_exact_on_small_cases():
    # six warm starts all favouring the arm: only "all +" and "all -" reach the observed |mean|
    assert ps.sign_flip_p([0.1, 0.2, 0.3, 0.05, 0.4, 0.01]) == pytest.approx(2 / 64)
    # by enumeration: |sum of flips| >= |observed|
    means = [0.3, -0.1, 0.2, 0.05]
    count = sum(abs(sum(s * m for s, m in zip(signs, means))) >= abs(sum(means)) - 1e-12
                for signs in itertools.product((1, -1), repeat=4))
    assert ps.sign_flip_p(means) == pytest.approx(count / 16)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=3), min_size=2, max_size=8))
def test_interval_and_p_agree_with_scipy_on_warm_start_means(runs):
    values = dict(enumerate(runs))
    means = [np.mean(v) for v in runs]
    out = ps.paired_comparison(values)
    assert out["W"] == len(runs) and out["pairs"] == sum(map(len, runs))
    assert out["mean"] == pytest.approx(np.mean(means), abs=1e-12)
    assert 0 < out["p_sign_flip"] <= 1
    if np.std(means) > 1e-9:
        test = stats.ttest_1samp(means, 0.0)
        lo, hi = test.confidence_interval(0.95)
        assert out["ci"] == pytest.approx([lo, hi], abs=1e-9)
        assert out["ci90"] == pytest.approx(list(test.confidence_interval(0.90)), abs=1e-9)  # TOST at 5% each side
        assert out["p_t"] == pytest.approx(test.pvalue, abs=1e-9)
        assert out["ci"][0] <= out["mean"] <= out["ci"][1]


def test_degenerate_designs_say_what_cannot_be_said():
    one = ps.paired_comparison({0: [0.1, 0.2]})
    assert one["ci"] is None and one["sd_w"] is None and one["p_t"] is None
    flat = ps.paired_comparison({0: [0.1], 1: [0.1]})
    assert flat["ci"] == pytest.approx([0.1, 0.1])
    assert ps.mde(None, 6) is None and ps.mde(0.1, 1) is None


def test_holm_by_hand():
    adjusted = ps.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1, made monotone
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


@pytest.mark.parametrize("W", [3, 6, 16, 32])
def test_mde_has_80_percent_power(W):
    """At the MDE, a two-sided paired t-test at 0.05 rejects 80% of the time: the noncentral t."""
    sd = 0.07
    d = ps.mde(sd, W) / sd
    critical = stats.t.ppf(0.975, W - 1)
    noncentral = d * math.sqrt(W)
    power = stats.nct.sf(critical, W - 1, noncentral) + stats.nct.cdf(-critical, W - 1, noncentral)
    assert power == pytest.approx(0.80, abs=1e-3)


@pytest.mark.parametrize("W, arms", [(16, 7), (10, 3), (8, 4)])
def test_mde_holm_has_80_percent_power_under_the_verdicts_rule(W, arms):
    """At mde_holm, warm-start means drawn normal around it (fresh draws, not mde_holm's own) give a
    sign-flip p at most 0.05 / arms 80% of the time (within the simulations' error), and 20% less
    effect gives clearly less; with too few warm starts to reach that threshold, it is None."""
    sd = 0.03
    effect = ps.mde_holm(sd, W, arms)
    draws = np.random.default_rng(123).standard_normal((1500, W)) * sd

    def power(e):
        return np.mean(ps.sign_flip_ps(draws + e) <= 0.05 / arms)
    assert power(effect) == pytest.approx(0.80, abs=0.04) and power(0.8 * effect) < 0.74
    assert effect > ps.mde(sd, W)  # the sign-flip rule at a Holm threshold needs more than the unadjusted t-test
    assert ps.mde_holm(sd, 6, 7) is None  # its smallest p, 2/64, is above 0.05/7


def test_warm_starts_for_is_the_fewest():
    sd = 0.06
    W = ps.warm_starts_for(0.05, sd)
    assert ps.mde(sd, W) <= 0.05 < ps.mde(sd, W - 1)
    assert ps.warm_starts_for(1e-9, sd) is None
