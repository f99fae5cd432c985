"""Findings: the paper's figures and a static HTML report from the dbt marts (pandas + matplotlib, no Dagster)."""

from calib_assets.findings.report import Report, findings_summary, report_dir, write_report
from calib_assets.findings.tables import headline_table, read_marts

__all__ = ["Report", "findings_summary", "headline_table", "read_marts", "report_dir", "write_report"]
