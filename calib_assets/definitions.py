"""The code location: one Definitions for the study named by $CALIB_ASSETS_STUDY (default: default)."""

from calib_assets.defs import build_definitions
from calib_assets.study import load_study

defs = build_definitions(load_study())
