"""The static HTML report: headline table, every figure (PNG beside index.html) and every mart's table."""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from calib_assets.artifacts import atomic_dir
from calib_assets.findings.figures import FIGURES, render_figures
from calib_assets.findings.tables import REPORT_MARTS, format_table, headline_table, read_marts

INDEX = "index.html"
MAX_TABLE_ROWS = 200
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin-bottom:1em}th,td{padding:2px 8px;border-bottom:1px solid #ddd}
th{background:#f3f3f3;text-align:left}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}
.note{color:#666;font-size:12px}"""


@dataclass(frozen=True)
class Report:
    index: Path  # the HTML file
    figures: dict[str, Path]  # figure stem -> PNG
    headline: pd.DataFrame
    fingerprint: str  # sha256 over the HTML and the PNGs


def report_dir(root: Path) -> Path:
    """Where the report lives under the artifact root (deterministic)."""
    return Path(root) / "report"


def write_report(duckdb_path: Path, directory: Path, title: str = "Calibration-data findings") -> Report:
    """Read the marts, draw the figures and write `directory/index.html` atomically (a failed write leaves the
    previous report in place)."""
    marts = read_marts(duckdb_path)
    headline = headline_table(duckdb_path)
    with atomic_dir(directory) as tmp:
        figures = render_figures(marts, tmp)
        (tmp / INDEX).write_text(_html(title, headline, marts, figures, duckdb_path))
        fingerprint = _fingerprint(tmp)
    return Report(index=directory / INDEX, figures={stem: directory / path.name for stem, path in figures.items()},
                  headline=headline, fingerprint=fingerprint)


def findings_summary(duckdb_path: Path, report_index: Path | None = None) -> str:
    """The headline table as text, and where the report is (what `make run` prints last)."""
    lines = ["Headline: best-worst range over all calibration sets (mart_average_distribution):",
             format_table(headline_table(duckdb_path))]
    if report_index is not None:
        state = "" if Path(report_index).is_file() else " (not written yet: materialize findings_report)"
        lines.append(f"\nReport: {report_index}{state}")
    return "\n".join(lines)


def _html(title: str, headline: pd.DataFrame, marts: dict[str, pd.DataFrame], figures: dict[str, Path],
          duckdb_path: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>From the dbt marts in {html.escape(str(duckdb_path))}. Task average = mean acc over "
             "the study's tasks per calibration set; std = sample std over calibration sets; range = max - min.</p>",
             "<h2>Headline</h2>", _table_html(headline), "<h2>Figures</h2>"]
    for stem, path in figures.items():
        caption = html.escape(FIGURES[stem][0])
        parts.append(f"<figure><a href='{path.name}'><img src='{path.name}' alt='{caption}'></a>"
                     f"<figcaption>{caption} (<a href='{path.name}'>{path.name}</a>)</figcaption></figure>")
    parts.append("<h2>Tables</h2>")
    for name, caption in REPORT_MARTS.items():
        parts += [f"<h3 id='{name}'>{html.escape(caption)} <code>{name}</code></h3>", _table_html(marts[name])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p class='note'>No rows (for example: no tasks or a single calibration source in this study).</p>"
    note = (f"<p class='note'>First {MAX_TABLE_ROWS} of {len(table)} rows; the full table is in DuckDB.</p>"
            if len(table) > MAX_TABLE_ROWS else "")
    shown = table.head(MAX_TABLE_ROWS)
    return shown.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}") + note


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()
