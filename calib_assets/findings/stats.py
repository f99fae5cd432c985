"""Spread statistics in pandas with the marts' conventions for degenerate groups (dbt/macros/degenerate.sql):
scores within FLOAT_NOISE x the group's largest magnitude are equal, and a group whose scores are equal (or
that has one score) has mean = its value, std 0 (NaN for one score) and range 0."""

from __future__ import annotations

import math

import pandas as pd

FLOAT_NOISE = 1e-9  # the dbt var float_noise (dbt/dbt_project.yml)


def scores_differ(values: pd.Series) -> bool:
    """At least two scores, further apart than float noise."""
    values = values.dropna()
    if len(values) < 2:
        return False
    low, high = float(values.min()), float(values.max())
    return high - low > FLOAT_NOISE * max(abs(low), abs(high))


def spread(values: pd.Series) -> pd.Series:
    """count, differ, mean, std, min, max, range of one group's scores."""
    values = values.dropna()
    differ = scores_differ(values)
    low, high = (float(values.min()), float(values.max())) if len(values) else (math.nan, math.nan)
    return pd.Series({
        "count": len(values), "differ": differ, "mean": float(values.mean()) if differ else low,
        "std": math.nan if len(values) < 2 else (float(values.std()) if differ else 0.0),
        "min": low, "max": high, "range": high - low if differ else 0.0})


def coefficient_of_variation(std: float, mean: float) -> float:
    """std / |mean|; NaN for a mean of 0 or an undefined std (one score)."""
    return math.nan if mean == 0 or pd.isna(std) or pd.isna(mean) else std / abs(mean)
