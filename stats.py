"""Welch's t-test: do two sets of seeds differ by more than their spread? The words of RESULTS.md
follow its p-value ("ahead" at p < 0.05, "level" otherwise).

    mean_std([88.9, 88.7, 89.0])              # (88.87, 0.15): the sample std (n - 1)
    welch(drl_seeds, ae_seeds)                # (difference of means, t, degrees of freedom, two-sided p)
    welch_from_stats(88.94, 0.15, 5, 88.76, 0.16, 5)   # the same from a table's mean ± std over n seeds
"""
import math

import numpy as np


def mean_std(x):
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def student_t_sf2(t, df, n=20_001):
    """Two-sided tail P(|T| >= |t|) of Student's t with df (real) degrees of freedom: one minus the
    density integrated over [-|t|, |t|] by Simpson's rule, on u = arctan(x / sqrt(df)), where the
    integrand is the smooth cos(u)^(df - 1) and the whole line maps to (-pi/2, pi/2)."""
    u = np.linspace(0.0, math.atan(abs(t) / math.sqrt(df)), n)
    f = np.cos(u) ** (df - 1)
    simpson = (u[1] - u[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    # the normaliser: the integral of cos(u)^(df - 1) over (-pi/2, pi/2) is B(df / 2, 1 / 2)
    log_beta = math.lgamma(df / 2) + math.lgamma(0.5) - math.lgamma(df / 2 + 0.5)
    return float(max(0.0, 1.0 - 2 * simpson / math.exp(log_beta)))


def welch(a, b):
    """Welch's unequal-variance t-test of mean(a) - mean(b): (difference, t, df, two-sided p)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return welch_from_stats(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))


def welch_from_stats(mean_a, std_a, n_a, mean_b, std_b, n_b):
    """The same from each group's mean, sample std and count (a table's mean ± std over n seeds)."""
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    diff = float(mean_a - mean_b)
    if va + vb == 0:
        return diff, math.copysign(math.inf, diff) if diff else 0.0, math.inf, float(diff == 0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return diff, float(t), float(df), student_t_sf2(t, df)


def verdict(p, diff, alpha=0.05):
    """The word a comparison earns: ahead or behind at p < alpha, level otherwise."""
    return ("ahead" if diff > 0 else "behind") if p < alpha else "level"
