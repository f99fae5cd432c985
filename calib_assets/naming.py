"""Names that become Dagster partition keys (models, sources): one rule for all of them; the run tag that
names a run's study."""

from __future__ import annotations

import re

KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
STUDY_TAG = "calib_assets/study"  # on every run: the study whose definitions it ran


def check_key_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not KEY_NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not allowed: use 1-40 characters of lowercase letters a-z, digits 0-9 and '-', "
            "starting with a letter or digit (it becomes a Dagster partition key)"
        )
    return value


def partition_key(**dimensions: str | None) -> str:
    """A partition key of a multi-dimensional asset as Dagster writes it, in the UI, run tags and progress
    lines: the dimensions' values in the order of their names (calib|variant, calib|model, model|source).
    A dimension given as None is left out (a baseline's key is its variant alone)."""
    return "|".join(value for _, value in sorted(dimensions.items()) if value is not None)
