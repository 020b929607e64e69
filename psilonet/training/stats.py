"""Honest error bars for multi-seed sweeps: mean, std, Student-t 95% CI, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

SUMMARY_COLUMNS = ["config_key", "label", "n", "mean", "std", "ci_low", "ci_high",
                   "best", "n_paired", "p_vs_best"]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, CI low, CI high) with Student's t; NaN spread for n < 2."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def paired_p(a: pd.Series, b: pd.Series) -> tuple[int, float]:
    """Two-sided paired t-test over the seeds both configs have: (pairs, p-value)."""
    joined = pd.concat([a, b], axis=1, join="inner").dropna()
    n = len(joined)
    if n < 2:
        return n, math.nan
    diff = joined.iloc[:, 0] - joined.iloc[:, 1]
    if np.allclose(diff, diff.iloc[0]):
        return n, (1.0 if np.isclose(diff.iloc[0], 0) else 0.0)  # t undefined: zero variance
    return n, float(sps.ttest_rel(joined.iloc[:, 0], joined.iloc[:, 1]).pvalue)


def summarize(results: pd.DataFrame, value: str = "improvement_pct", higher_is_better: bool = True) -> pd.DataFrame:
    """One row per config from ``results`` (columns config_key, label, seed, ``value``).

    The best config has the best mean; every other config gets a paired t-test against it
    over the seeds both completed. A (config, seed) listed twice counts once.
    """
    # A config and seed is one run: counted once, however many times it is listed.
    done = results.dropna(subset=[value]).drop_duplicates(["config_key", "seed"])
    if done.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows = []
    for (key, label), group in done.groupby(["config_key", "label"], sort=False):
        mean, std, lo, hi = mean_ci(group[value])
        rows.append(dict(config_key=key, label=label, n=len(group), mean=mean, std=std, ci_low=lo, ci_high=hi))
    table = pd.DataFrame(rows)
    best_key = table.loc[table["mean"].idxmax() if higher_is_better else table["mean"].idxmin(), "config_key"]
    by_seed = {k: g.set_index("seed")[value] for k, g in done.groupby("config_key")}
    table["best"] = table.config_key == best_key
    pairs = [paired_p(by_seed[best_key], by_seed[k]) if k != best_key else (len(by_seed[k]), math.nan)
             for k in table.config_key]
    table["n_paired"] = [p[0] for p in pairs]
    table["p_vs_best"] = [p[1] for p in pairs]
    return table[SUMMARY_COLUMNS]
