from __future__ import annotations

from pathlib import Path

import dagster as dg

from calib_assets.artifacts import artifact_root


class ArtifactStore(dg.ConfigurableResource):
    """The artifact root: corpora, calibration sets, checkpoints, evaluations, the DuckDB file."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root).resolve()


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
