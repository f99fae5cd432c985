from __future__ import annotations

from pathlib import Path

import dagster as dg

from calib_assets.artifacts import artifact_root, check_root_study
from calib_assets.naming import STUDY_TAG


class ArtifactStore(dg.ConfigurableResource):
    """The artifact root: corpora, calibration sets, checkpoints, evaluations, the DuckDB file."""

    root: str
    study: str

    @property
    def path(self) -> Path:
        return Path(self.root).resolve()

    def setup_for_execution(self, context) -> None:
        check_root_study(self.path, self.study, claim=True)  # a run from the UI too
        run = context.dagster_run
        if run is not None and context.instance is not None and STUDY_TAG not in run.tags:
            context.instance.add_run_tags(run.run_id, {STUDY_TAG: self.study})  # the UI's runs name it too


class Compute(dg.ConfigurableResource):
    """Where forward passes and compression run (auto: CUDA when present, else CPU)."""

    device: str = "auto"
    forward_dtype: str = "auto"

    def resolve(self):
        from calib_assets.compute import resolve_device, resolve_forward_dtype

        device = resolve_device(self.device)
        return device, resolve_forward_dtype(self.forward_dtype, device)


def default_root() -> str:
    return str(artifact_root())
