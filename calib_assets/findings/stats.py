"""The marts' float-noise figure for Python: scores within FLOAT_NOISE x the group's largest magnitude are
equal (dbt/macros/degenerate.sql). Spread statistics themselves are computed in dbt only (spread_statistics,
mart_src_spread is what the runner prints)."""

from __future__ import annotations

FLOAT_NOISE = 1e-9  # the dbt var float_noise (dbt/dbt_project.yml)
