"""calib_assets: how much does calibration data matter to a compressed LLM?

The library (sources, calibration, compression, evaluation, models) is plain Python + torch;
the Dagster code location lives in `calib_assets.defs` and `calib_assets.definitions`.
"""

__version__ = "0.1.0"
