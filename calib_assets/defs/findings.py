"""The findings report: figures and a static HTML report regenerated whenever the dbt marts change."""

import base64

import dagster as dg

from calib_assets.defs.automation import FINDINGS_CONDITION
from calib_assets.defs.metadata import OWNERS
from calib_assets.defs.resources import ArtifactStore
from calib_assets.steps import CODE_VERSIONS, warehouse_path


def report_marts() -> list[str]:
    """The dbt marts the report reads (tables and figures)."""
    from calib_assets.findings.figures import FIGURES
    from calib_assets.findings.tables import REPORT_MARTS

    return sorted({*REPORT_MARTS, *(mart for _, _, mart in FIGURES.values())})


def build_findings_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name="findings", code_version=CODE_VERSIONS["findings_report"], kinds={"matplotlib", "html"},
        owners=OWNERS, deps=[dg.AssetKey(mart) for mart in report_marts()], automation_condition=FINDINGS_CONDITION,
        pool="duckdb",  # reads the warehouse: never while a writer holds it
        description="The paper's figures (PNG) and a static HTML report of every mart, under <root>/report/.",
    )
    def findings_report(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        from calib_assets.findings import report_dir, write_report
        from calib_assets.findings.figures import FIGURES

        report = write_report(warehouse_path(store.path), report_dir(store.path))
        figures = {f"figure/{stem}": dg.MetadataValue.md(_inline_png(FIGURES[stem][0], path.read_bytes()))
                   for stem, path in report.figures.items()}
        headline = ("not available: a mart it reads was not built" if report.headline is None
                    else report.headline.to_markdown(index=False, floatfmt=".4g"))
        return dg.MaterializeResult(
            data_version=dg.DataVersion(report.fingerprint),
            metadata={"report": dg.MetadataValue.path(str(report.index)),
                      "report_url": dg.MetadataValue.url(report.index.as_uri()),
                      "headline": dg.MetadataValue.md(headline),
                      "failed_dbt_tests": [test.name for test in report.status.failed_tests],
                      "fingerprint": report.fingerprint, **figures},
        )

    return [findings_report]


def _inline_png(caption: str, png: bytes) -> str:
    """Markdown that shows the PNG inside the Dagster UI (a data URI: the UI cannot read local files)."""
    return f"**{caption}**\n\n![{caption}](data:image/png;base64,{base64.b64encode(png).decode()})"
