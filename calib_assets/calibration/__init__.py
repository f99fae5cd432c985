"""Calibration data: sampling, selection and descriptors of calibration sets cut from a source's pool
(see docs/calibration.md)."""

from calib_assets.calibration.calibset import (
    CalibrationSet,
    build_calibration_set,
    load_calibration_set,
    load_token_pool,
    save_calibration_set,
    save_token_pool,
    token_fingerprint,
    tokenize_documents,
)
from calib_assets.calibration.sampler import SourceTooSmallError, Window, check_capacity, sample_windows

__all__ = [
    "CalibrationSet",
    "SourceTooSmallError",
    "Window",
    "build_calibration_set",
    "check_capacity",
    "load_calibration_set",
    "load_token_pool",
    "sample_windows",
    "save_calibration_set",
    "save_token_pool",
    "token_fingerprint",
    "tokenize_documents",
]
