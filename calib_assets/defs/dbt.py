"""The dbt marts as Dagster assets (dagster-dbt); dbt's source eval_results maps to our eval_results asset."""

import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets
from dagster_dbt.dbt_project import DagsterDbtProjectPreparer, using_dagster_dev
from dagster_shared.record import replace

from calib_assets.defs.automation import FINDINGS_CONDITION
from calib_assets.defs.metadata import OWNERS
from calib_assets.defs.resources import ArtifactStore
from calib_assets.findings.build_status import problems_from_run_results
from calib_assets.steps import warehouse_path

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
DUCKDB_VAR = "duckdb_path"  # the dbt var dbt/profiles.yml reads the warehouse's path from
DUCKDB_ENV = "CALIB_ASSETS_DUCKDB"  # its fallback, for dbt run by hand and the tests' fixtures


def dbt_executable() -> str:
    """The dbt of this interpreter's environment, whether or not that environment is activated."""
    beside_python = Path(sys.executable).parent / "dbt"
    return str(beside_python) if beside_python.exists() else "dbt"


class Preparer(DagsterDbtProjectPreparer):
    """dagster-dbt's preparer (`dbt parse`, one process at a time), with two changes: the dbt of this
    environment (the stock one looks for dbt on PATH, which `make dev` and `.venv/bin/python` do not set),
    and the manifest moved into place whole, so that a process loading the definitions meanwhile never
    reads a half-written one (the project has no seeds: the stock step that re-parses seeds is left out)."""

    def _prepare_manifest(self, project: DbtProject) -> None:
        target = project.project_dir / project.target_path
        scratch = target / f".parse-{os.getpid()}"
        try:
            DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
                ["parse", "--quiet"], target_path=scratch).wait()
            for name in ("partial_parse.msgpack", "manifest.json"):  # the manifest last: it is what readers look for
                if (scratch / name).exists():
                    os.replace(scratch / name, target / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


dbt_project = replace(DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR), preparer=Preparer())


def ensure_manifest(project: DbtProject = dbt_project) -> Path:
    """The manifest the dbt assets are built from. Under `dagster dev`, parsed on every load
    (prepare_if_dev); elsewhere (`calib-assets run`, run workers, tests) the one `make venv` parsed,
    parsed again only when it is missing or older than a file of the project."""
    project.prepare_if_dev()
    if not using_dagster_dev() and _stale(project):
        project.preparer.prepare(project)
    return project.manifest_path


def _stale(project: DbtProject) -> bool:
    manifest = project.manifest_path
    sources = [path for pattern in ("*.yml", "models/**/*", "macros/**/*", "tests/**/*")
               for path in project.project_dir.glob(pattern) if path.is_file()]
    return not manifest.exists() or any(path.stat().st_mtime > manifest.stat().st_mtime for path in sources)


class Translator(DagsterDbtTranslator):
    """dbt models join the findings group and follow their parents eagerly."""

    def get_automation_condition(self, dbt_resource_props):
        return FINDINGS_CONDITION

    def get_group_name(self, dbt_resource_props):
        return "findings"

    def get_owners(self, dbt_resource_props):
        return OWNERS

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project):
        # A failed test shows on its mart and in the report, but does not stop the report (dbt itself skips
        # the models built on a model whose test failed).
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        return spec and dg.AssetCheckSpec(spec.name, asset=spec.asset_key, description=spec.description,
                                          additional_deps=spec.additional_deps, metadata=spec.metadata,
                                          blocking=False)


def build_dbt_assets():
    @dbt_assets(manifest=ensure_manifest(), project=dbt_project, pool="duckdb", name="dbt_marts",
                # eval_results and task_outcomes are both the eval_results asset's tables
                dagster_dbt_translator=Translator(DagsterDbtTranslatorSettings(enable_duplicate_source_asset_keys=True)))
    def dbt_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, store: ArtifactStore):
        warehouse = {DUCKDB_VAR: str(warehouse_path(store.path))}  # read by dbt/profiles.yml
        invocation = dbt.cli(["build", "--vars", json.dumps(warehouse)], context=context, raise_on_error=False)
        yield from invocation.stream()
        if not invocation.is_successful():
            errors = problems_from_run_results(invocation.get_artifact("run_results.json"))
            if errors:
                raise dg.Failure(f"dbt build failed: {'; '.join(errors)}")
            context.log.warning("dbt build: some data tests failed; the report names them and their rows")

    return dbt_marts


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project, profiles_dir=str(DBT_PROJECT_DIR),
                          dbt_executable=dbt_executable())
