"""The benchmark's statistics: an arm against GRPO, run by run, with the warm start as the unit.

RL seeds are nested in warm starts (compare.run_seeds gives every warm start its own prompt
streams), so a warm start's runs are not independent of each other but warm starts are of each
other. Everything here therefore works on warm-start means: W numbers, W - 1 degrees of freedom,
however many seeds each warm start has. tests/test_paired_stats.py simulates benchmarks with a
known zero effect and checks that the 95% interval covers 93-97% of the time.
"""
import functools
import itertools
import math
import statistics

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

ALPHA, POWER = 0.05, 0.80
EXACT_UP_TO = 16  # warm starts; beyond, the sign-flip distribution is sampled (2**16 draws)


def paired_comparison(values):
    """values: {warm start: [one number per run]}, e.g. an arm's AUC minus GRPO's on the same
    warm start and seed. Returns the mean of the warm-start means ("mean"), its 95% t-interval
    (df = W - 1; a point when the means are all equal, None when W < 2), its 90% t-interval ("ci90":
    two one-sided tests at 5% each, TOST, show equivalence within a margin that holds it), the t-test's
    p, the exact sign-flip p (two-sided, flipping whole warm starts: valid without assuming
    normality), the sd of the warm-start means ("sd_w"), W and the number of runs ("pairs")."""
    means = np.array([statistics.mean(v) for _, v in sorted(values.items())], dtype=float)
    W, mean = len(means), float(means.mean())
    out = {"mean": mean, "ci": None, "ci90": None, "p_t": None, "p_sign_flip": sign_flip_p(means), "sd_w": None,
           "W": W, "pairs": sum(len(v) for v in values.values())}
    if W < 2:
        return out
    sd = float(means.std(ddof=1))
    out["sd_w"] = sd
    if sd == 0:
        out.update(ci=[mean, mean], ci90=[mean, mean], p_t=1.0 if mean == 0 else 0.0)
        return out
    se = sd / math.sqrt(W)
    half, half90 = (float(stats.t.ppf(1 - a / 2, W - 1)) * se for a in (ALPHA, 2 * ALPHA))
    out.update(ci=[mean - half, mean + half], ci90=[mean - half90, mean + half90],
               p_t=float(2 * stats.t.sf(abs(mean) / se, W - 1)))
    return out


def sign_flip_p(means, draws=2**16, seed=0):
    """Two-sided p of the observed mean under random sign flips of the warm-start means: the share
    of the 2**W flips whose |mean| is at least the observed one (all of them up to EXACT_UP_TO
    warm starts, else `draws` random ones, the observed one counted). Its smallest value is 2 / 2**W."""
    means = np.asarray(means, dtype=float)
    if len(means) == 0:
        return None
    return float(sign_flip_ps(means[None], draws, seed)[0])


def sign_flip_ps(rows, draws=2**16, seed=0):
    """sign_flip_p of each row of rows (n, W) at once."""
    W = rows.shape[1]
    signs = every_flip(W) if W <= EXACT_UP_TO else sampled_flips(W, draws, seed)
    flipped = np.abs(signs @ rows.T)  # (flips, n)
    # a tolerance, so that flips equal to the observed mean up to rounding count as equal
    return np.mean(flipped >= np.abs(rows.sum(1)) - 1e-12 * (1 + np.abs(rows).sum(1)), axis=0)


@functools.lru_cache(maxsize=None)
def every_flip(W):
    return np.array(list(itertools.product((1.0, -1.0), repeat=W)))


@functools.lru_cache(maxsize=4)
def sampled_flips(W, draws, seed):
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(draws, W))
    signs[0] = 1.0  # the observed arrangement is one of the draws
    return signs


def holm(p_values):
    """{arm: p} adjusted by Holm's step-down method for their number (family-wise error ALPHA)."""
    names = list(p_values)
    adjusted = multipletests([p_values[n] for n in names], method="holm")[1]
    return {n: float(p) for n, p in zip(names, adjusted)}


def mde(sd_w, W):
    """The smallest true mean difference a two-sided paired t-test at ALPHA detects with POWER,
    given W warm starts whose means scatter with sd sd_w (None when that cannot be said)."""
    if not sd_w or W < 2:
        return None
    return float(TTestPower().solve_power(nobs=W, alpha=ALPHA, power=POWER, alternative="two-sided")) * sd_w


def mde_holm(sd_w, W, arms):
    """The smallest true mean difference the verdict's rule detects with POWER at Holm's strictest
    threshold: a sign-flip p of the W warm-start means at most ALPHA / arms, the means drawn normal
    around it with sd sd_w. An upper bound on the rule's MDE for a given arm: one whose p ranks
    after others that pass faces ALPHA / (arms - k) instead. None when even the smallest possible
    p, 2 / 2**W, misses that threshold, or sd_w is 0 or unknown."""
    if not sd_w or W < 2:
        return None
    size = holm_effect_size(W, arms)
    return None if size is None else size * sd_w


@functools.lru_cache(maxsize=None)
def holm_effect_size(W, arms, sims=1000, seed=0):
    """mde_holm in units of sd_w (the sign-flip test does not depend on scale), by simulation: the
    same normal draws for every effect size tried, so the estimated power is a smooth function of
    it, rising where it is sought (a draw whose sum is negative can only lose significance as the
    effect grows, but at 80% power such draws are far below the threshold), and the bisection
    settles to a few percent, the draws' own error."""
    threshold = ALPHA / arms
    if 2 / 2 ** W > threshold:
        return None
    noise = np.random.default_rng(seed).standard_normal((sims, W))

    def power(effect):
        return np.mean(np.concatenate([sign_flip_ps(noise[s:s + 250] + effect) for s in range(0, sims, 250)]) <= threshold)
    low, high = 0.0, 1.0
    while power(high) < POWER:
        low, high = high, 2 * high
    while high - low > 0.01 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid) < POWER else (low, mid)
    return high


def warm_starts_for(target, sd_w, most=10_000):
    """The fewest warm starts whose MDE is at most `target` when warm-start means scatter with sd_w."""
    low, high = 2, most
    if mde(sd_w, high) > target:
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if mde(sd_w, mid) > target else (low, mid)
    return low
