"""The static HTML report: headline table, every figure (PNG beside index.html) and every mart's table."""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from calib_assets.artifacts import atomic_dir
from calib_assets.findings.build_status import BuildStatus, build_status, format_build_status, superseded_note
from calib_assets.findings.figures import FIGURES, render_figures
from calib_assets.findings.tables import (
    REPORT_MARTS,
    format_table,
    headline_from_marts,
    read_available_marts,
    without_tie_claims,
)

INDEX = "index.html"
MAX_TABLE_ROWS = 200
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;padding:0 1em;max-width:1200px}
table{border-collapse:collapse;font-size:12px}th,td{padding:2px 6px;border-bottom:1px solid #ddd}
th{background:#f3f3f3;text-align:left}.table{overflow-x:auto;max-width:100%;margin-bottom:1em}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:1em 0}
.note{color:#666;font-size:12px}.problem{color:#a00;font-weight:bold}"""  # fits 1,280 px: wide tables scroll in place
ROW_ORDER = ["model", "method", "variant", "calibration_source", "n_samples", "calib", "seed", "eval_dataset", "task",
             "metric", "score"]  # a table's rows: by method, then source, then set (the columns it has)
RANKING_ORDER = ["model", "method", "variant", "n_samples", "overall_rank"]  # a ranking's rows: by rank
DESCRIPTORS = "stg_descriptors"
PAIRED_TEST = "mart_paired_test"
DESCRIPTOR_HIDDEN = ["calibration_fingerprint"]
HEADLINE_MARTS = ("mart_averages", "mart_baselines")


@dataclass(frozen=True)
class Report:
    index: Path  # the HTML file
    figures: dict[str, Path]  # figure stem -> PNG
    headline: pd.DataFrame | None  # None when a mart it needs was not built
    fingerprint: str  # sha256 over the HTML and the PNGs
    status: BuildStatus  # what the last dbt build did: failed tests, models it did not build


def report_dir(root: Path) -> Path:
    """Where the report lives under the artifact root (deterministic)."""
    return Path(root) / "report"


def write_report(duckdb_path: Path, directory: Path, title: str = "Calibration-data findings") -> Report:
    """Read the marts, draw the figures and write `directory/index.html` atomically (a failed write leaves the
    previous report in place). The last dbt build's failed tests head the report with their rows and flag
    the marts they read; a mart the build did not build is left out, never shown stale."""
    marts, missing = read_available_marts(duckdb_path, [*REPORT_MARTS, DESCRIPTORS])
    descriptors = marts.pop(DESCRIPTORS, None)
    missing.pop(DESCRIPTORS, None)  # the section says so itself
    status = build_status(duckdb_path)
    if not marts and not status.recorded:
        raise LookupError(f"{duckdb_path} holds no mart and no dbt build has run on it: "
                          + "; ".join(f"{name}: {why}" for name, why in missing.items()))
    headline = _headline(marts)
    with atomic_dir(directory) as tmp:
        figures = render_figures(marts, tmp, missing)
        (tmp / INDEX).write_text(_html(title, headline, marts, missing, status, figures, duckdb_path,
                                          descriptors))
        fingerprint = _fingerprint(tmp)
    return Report(index=directory / INDEX, figures={stem: directory / path.name for stem, path in figures.items()},
                  headline=headline, fingerprint=fingerprint, status=status)


def findings_summary(duckdb_path: Path, report_index: Path | None = None) -> str:
    """The headline table as text, the last dbt build's problems, and where the report is (what `make run`
    prints last)."""
    marts, missing = read_available_marts(duckdb_path, list(HEADLINE_MARTS))
    headline = _headline(marts)
    lines = ["Headline: best-worst range over all calibration sets (mart_averages):",
             format_table(headline) if headline is not None else _unavailable(missing)]
    status = build_status(duckdb_path)
    problems = format_build_status(status)
    if problems:
        lines += ["\nThe last dbt build has problems (the tables above that they touch are not to be trusted):",
                  problems]
    if note := superseded_note(status):
        lines.append(f"\n{note}")
    if report_index is not None:
        state = "" if Path(report_index).is_file() else " (not written yet: materialize findings_report)"
        lines.append(f"\nReport: {report_index}{state}")
    return "\n".join(lines)


def _headline(marts: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    return headline_from_marts(marts) if all(name in marts for name in HEADLINE_MARTS) else None


def _unavailable(missing: dict[str, str]) -> str:
    return "not available: " + "; ".join(f"{name} {why}" for name, why in missing.items() if name in HEADLINE_MARTS)


def _html(title: str, headline: pd.DataFrame | None, marts: dict[str, pd.DataFrame], missing: dict[str, str],
          status: BuildStatus, figures: dict[str, Path], duckdb_path: Path, descriptors: pd.DataFrame | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>From the dbt marts in {html.escape(str(duckdb_path))}. Task average = mean acc over "
             "the study's tasks per calibration set; std = sample std over calibration sets; range = max - min; "
             "scores within float noise of each other are equal, and a group whose sets score the same names no "
             "best or worst set.</p>", *_status_html(status), "<h2>Headline</h2>",
             _table_html(headline) if headline is not None else _problem(_unavailable(missing)), "<h2>Figures</h2>"]
    for stem, path in figures.items():
        caption = html.escape(FIGURES[stem][0])
        parts.append(f"<figure><a href='{path.name}'><img src='{path.name}' alt='{caption}'></a>"
                     f"<figcaption>{caption} (<a href='{path.name}'>{path.name}</a>)</figcaption></figure>")
    parts.append("<h2>Calibration sets</h2>")
    parts.append("<p class='note'>Each set's descriptors (token statistics, Zipf exponent, duplication, base-model "
                 "perplexity, overlap with the evaluation text, flagged samples), from the table "
                 f"set_descriptors (<code>{DESCRIPTORS}</code>).</p>")
    parts.append(_table_html(descriptors.drop(columns=DESCRIPTOR_HIDDEN, errors="ignore"))
                 if descriptors is not None else _problem(f"Left out: {DESCRIPTORS} is not in the warehouse."))
    parts.append("<h2>Tables</h2>")
    for name, caption in REPORT_MARTS.items():
        parts.append(f"<h3 id='{name}'>{html.escape(caption)} <code>{name}</code></h3>")
        parts += [_problem(f"Failed dbt test {test.name}: see Data tests above.") for test in status.tests_on(name)]
        shown = without_tie_claims(marts[name]) if name == PAIRED_TEST and name in marts else marts.get(name)
        parts.append(_table_html(shown) if shown is not None else _problem(f"Left out: {missing[name]}."))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _status_html(status: BuildStatus) -> list[str]:
    superseded = [_problem(note)] if (note := superseded_note(status)) else []
    if not status.recorded:
        return superseded
    if status.ok:
        return [*superseded, "<p class='note'>Every dbt test of the last build passed.</p>"]
    parts = [*superseded, "<h2>Data tests</h2>",
             _problem("The last dbt build has problems: the tables they touch are not to be trusted.")]
    for test in status.failed_tests:
        count = "" if test.failures is None else f", {test.failures} failing rows"
        parts.append(f"<h3 id='test-{html.escape(test.name)}'>{html.escape(test.status.upper())} "
                     f"<code>{html.escape(test.name)}</code> (on {html.escape(', '.join(test.models))}{count})</h3>")
        parts.append(_table_html(test.rows) if not test.rows.empty else f"<p>{html.escape(test.message)}</p>")
    parts += [_problem(f"Model {model} was not built ({state}).") for model, state in status.unbuilt_models.items()]
    return parts


def _problem(text: str) -> str:
    return f"<p class='problem'>{html.escape(text)}</p>"


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p class='note'>No rows (for example: no tasks or a single calibration source in this study).</p>"
    note = (f"<p class='note'>First {MAX_TABLE_ROWS} of {len(table)} rows; the full table is in DuckDB.</p>"
            if len(table) > MAX_TABLE_ROWS else "")
    shown = _ordered(table).head(MAX_TABLE_ROWS)
    return ("<div class='table'>" + shown.to_html(index=False, border=0, na_rep="-", float_format=lambda v: f"{v:.4g}")
            + "</div>" + note)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by ROW_ORDER's columns that the table has, a ranking's by RANKING_ORDER's (a stable sort: ties keep
    the mart's order)."""
    keys = [column for column in (RANKING_ORDER if "overall_rank" in table else ROW_ORDER) if column in table]
    return table.sort_values(keys, kind="stable", na_position="first") if keys else table


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()
