"""The dbt marts as Dagster assets (dagster-dbt); dbt's source eval_results maps to our eval_results asset."""


import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from calib_assets.defs.automation import FINDINGS_CONDITION

from calib_assets.defs.resources import ArtifactStore
from calib_assets.steps import warehouse_path

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
DUCKDB_ENV = "CALIB_ASSETS_DUCKDB"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def ensure_manifest(project: DbtProject = dbt_project) -> Path:
    """`dbt parse` when the manifest is missing (prepare_if_dev only runs under `dagster dev`)."""
    if not project.manifest_path.exists():
        project.preparer.prepare(project)
    return project.manifest_path


class Translator(DagsterDbtTranslator):
    """dbt models join the findings group and follow their parents eagerly."""

    def get_automation_condition(self, dbt_resource_props):
        return FINDINGS_CONDITION

    def get_group_name(self, dbt_resource_props):
        return "findings"

    def get_owners(self, dbt_resource_props):
        return ["team:calib-assets"]


def build_dbt_assets():
    @dbt_assets(manifest=ensure_manifest(), project=dbt_project, pool="duckdb", name="dbt_marts",
                dagster_dbt_translator=Translator())
    def dbt_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, store: ArtifactStore):
        os.environ[DUCKDB_ENV] = str(warehouse_path(store.path))
        yield from dbt.cli(["build"], context=context).stream()

    return dbt_marts


def dbt_resource() -> DbtCliResource:
    # The dbt of this interpreter's environment, whether or not that environment is activated.
    beside_python = Path(sys.executable).parent / "dbt"
    executable = str(beside_python) if beside_python.exists() else "dbt"
    return DbtCliResource(project_dir=dbt_project, profiles_dir=str(DBT_PROJECT_DIR), dbt_executable=executable)
