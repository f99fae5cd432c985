"""The dbt marts as Dagster assets (dagster-dbt); dbt's source eval_results maps to our eval_results asset."""


import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from calib_assets.defs.automation import FINDINGS_CONDITION

from calib_assets.defs.resources import ArtifactStore
from calib_assets.findings.build_status import problems_from_run_results
from calib_assets.steps import warehouse_path

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
DUCKDB_ENV = "CALIB_ASSETS_DUCKDB"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def ensure_manifest(project: DbtProject = dbt_project) -> Path:
    """`dbt parse` when the manifest is missing or older than the project's files (prepare_if_dev only
    runs under `dagster dev`, and a stale manifest would not know the current models and tests)."""
    import fcntl

    manifest = project.manifest_path
    manifest.parent.mkdir(parents=True, exist_ok=True)
    # processes loading the definitions at once (test workers, run workers) parse one at a time, and
    # none reads a manifest that another is still writing
    with open(manifest.parent / ".parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stale(manifest):
            subprocess.run([dbt_executable(), "parse", "--quiet", "--project-dir", str(DBT_PROJECT_DIR),
                            "--profiles-dir", str(DBT_PROJECT_DIR)], check=True, cwd=DBT_PROJECT_DIR)
    return manifest


def _stale(manifest: Path) -> bool:
    sources = [path for pattern in ("*.yml", "models/**/*", "macros/**/*", "tests/**/*")
               for path in DBT_PROJECT_DIR.glob(pattern) if path.is_file()]
    return not manifest.exists() or any(path.stat().st_mtime > manifest.stat().st_mtime for path in sources)


def dbt_executable() -> str:
    """The dbt of this interpreter's environment, whether or not that environment is activated."""
    beside_python = Path(sys.executable).parent / "dbt"
    return str(beside_python) if beside_python.exists() else "dbt"


class Translator(DagsterDbtTranslator):
    """dbt models join the findings group and follow their parents eagerly."""

    def get_automation_condition(self, dbt_resource_props):
        return FINDINGS_CONDITION

    def get_group_name(self, dbt_resource_props):
        return "findings"

    def get_owners(self, dbt_resource_props):
        return ["team:calib-assets"]

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project):
        # A failed test shows on its mart and in the report, but does not stop the report (dbt itself skips
        # the models built on a model whose test failed).
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        return spec and dg.AssetCheckSpec(spec.name, asset=spec.asset_key, description=spec.description,
                                          additional_deps=spec.additional_deps, metadata=spec.metadata,
                                          blocking=False)


def build_dbt_assets():
    @dbt_assets(manifest=ensure_manifest(), project=dbt_project, pool="duckdb", name="dbt_marts",
                dagster_dbt_translator=Translator())
    def dbt_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, store: ArtifactStore):
        os.environ[DUCKDB_ENV] = str(warehouse_path(store.path))
        invocation = dbt.cli(["build"], context=context, raise_on_error=False)
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
