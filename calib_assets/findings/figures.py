"""The paper's figures from the marts, as matplotlib Figures (no pyplot: safe inside any process)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

DPI = 110
MAX_PANEL_INCHES = 18  # keeps paper-scale grids (hundreds of bars) readable and the PNGs small


def _figure(n_panels: int, width: float = 4.8, height: float = 3.6):
    from matplotlib.figure import Figure

    columns = min(n_panels, 3)
    rows = -(-n_panels // columns)
    width, height = min(width, MAX_PANEL_INCHES), min(height, MAX_PANEL_INCHES)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return figure, axes[:n_panels]


def placeholder(title: str, message: str):
    """A figure that says why there is nothing to plot (e.g. a study without tasks)."""
    figure, (axis,) = _figure(1, width=6, height=2.2)
    axis.set_axis_off()
    axis.set_title(title)
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return figure


def _source_colors(sources) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {source: palette(i % 10) for i, source in enumerate(sorted(set(sources)))}


def _jitter(n: int, seed: int = 0, width: float = 0.12) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-width, width, n)


def task_spread_figure(set_scores: pd.DataFrame):
    """Figure 2: each task's accuracy (acc) on every calibration set, one panel per (variant, sample count),
    points coloured by calibration source."""
    title = "Figure 2: per-task accuracy across calibration sets"
    tasks = set_scores[(set_scores["kind"] == "task") & (set_scores["metric"] == "acc")]
    if tasks.empty:
        return placeholder(title, "No task results in this study (perplexity only).")
    panels = list(tasks.groupby(["variant", "n_samples"], dropna=False))
    figure, axes = _figure(len(panels))
    colors = _source_colors(tasks["calibration_source"])
    for axis, ((variant, n_samples), panel) in zip(axes, panels):
        names = sorted(panel["eval_dataset"].unique())
        for source, rows in panel.groupby("calibration_source"):
            x = rows["eval_dataset"].map(names.index).to_numpy() + _jitter(len(rows))
            axis.scatter(x, rows["value"], s=18, color=colors[source], label=source, alpha=0.8)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_ylabel("accuracy (acc)")
        axis.set_title(_panel_title(variant, n_samples), fontsize=10)
    axes[0].legend(fontsize=8, title="source")
    figure.suptitle(title)
    return figure


def average_distribution_figure(set_scores: pd.DataFrame):
    """Figure 4: distribution of the task average (acc) over every calibration set of every source, one box
    per (variant, sample count); without tasks, of the held-out perplexities, one panel per (variant, sample
    count) and one box per evaluation dataset (methods differ too much in perplexity to share an axis)."""
    averages = set_scores[(set_scores["kind"] == "task_average") & (set_scores["metric"] == "acc")]
    if len(averages):
        scores, label, panel_keys, box_key = averages, "task average (acc)", ["eval_dataset"], "variant"
    else:
        scores = set_scores[set_scores["kind"] == "perplexity"]
        label, panel_keys, box_key = "held-out perplexity", ["variant", "n_samples"], "eval_dataset"
    title = f"Figure 4: {label} over all calibration sets"
    if scores.empty:
        return placeholder(title, "No calibrated results yet.")
    panels = list(scores.groupby(panel_keys, dropna=False))
    figure, axes = _figure(len(panels), width=max(4.8, 1.2 * scores[box_key].nunique()))
    colors = _source_colors(scores["calibration_source"])
    for axis, (panel_key, panel) in zip(axes, panels):
        boxes = list(panel.groupby(box_key))
        axis.boxplot([rows["value"].to_numpy() for _, rows in boxes], widths=0.5, showfliers=False)
        for position, (_, rows) in enumerate(boxes, start=1):
            axis.scatter(position + _jitter(len(rows)), rows["value"], s=14,
                         c=[colors[s] for s in rows["calibration_source"]], alpha=0.8, zorder=3)
        axis.set_xticks(range(1, len(boxes) + 1), [key for key, _ in boxes], rotation=30, ha="right", fontsize=8)
        axis.set_title(_panel_title(*panel_key) if len(panel_keys) == 2 else "all calibration sets", fontsize=10)
        axis.set_ylabel(label)
    _legend(axes[0], colors)
    figure.suptitle(title)
    return figure


def sample_count_figure(curve: pd.DataFrame):
    """Figure 3: mean score against the number of calibration examples, with its min-max band over the
    calibration sets at each count; one panel per score, one line per (variant, source)."""
    title = "Figure 3: scores against the number of calibration examples"
    curve = curve[curve["n_samples"].notna() & ((curve["kind"] == "perplexity") | (curve["metric"] == "acc"))]
    if curve.empty:
        return placeholder(title, "No sample counts recorded (eval_results has no n_samples).")
    panels = list(curve.groupby(["eval_dataset", "metric"]))
    figure, axes = _figure(len(panels))
    for axis, ((dataset, metric), panel) in zip(axes, panels):
        for (variant, source), line in panel.groupby(["variant", "calibration_source"]):
            line = line.sort_values("n_samples")
            axis.plot(line["n_samples"], line["mean_value"], marker="o", label=f"{variant} / {source}")
            axis.fill_between(line["n_samples"], line["min_value"], line["max_value"], alpha=0.2)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("calibration examples")
        axis.set_ylabel(metric)
        axis.set_title(dataset, fontsize=10)
    axes[0].legend(fontsize=7)
    figure.suptitle(title)
    return figure


def retention_figure(retention: pd.DataFrame):
    """Retention against the dense model (1 = dense quality) of the task average, or of each held-out
    perplexity without tasks: mean over the calibration sets of each source, min-max as error bars."""
    averages = retention[(retention["kind"] == "task_average") & (retention["metric"] == "acc")]
    rows = averages if len(averages) else retention[retention["kind"] == "perplexity"]
    title = "Retention against the dense model" + (" (task average)" if len(averages) else " (dense / perplexity)")
    if rows.empty:
        return placeholder(title, "No dense baseline, or no compressed results yet.")
    panels = list(rows.groupby("eval_dataset"))
    figure, axes = _figure(len(panels), width=max(4.8, 0.5 * len(rows) / len(panels)))
    for axis, (dataset, panel) in zip(axes, panels):
        panel = panel.sort_values(["variant", "calibration_source", "n_samples"])
        labels = [f"{v} / {s}" + ("" if pd.isna(n) else f" / n={int(n)}")
                  for v, s, n in zip(panel["variant"], panel["calibration_source"], panel["n_samples"])]
        mean = panel["mean_retention"].to_numpy(dtype=float)
        # a mean of equal retentions can sit an ulp outside [min, max]; matplotlib refuses negative bars
        errors = np.clip(np.vstack([mean - panel["min_retention"].to_numpy(dtype=float),
                                    panel["max_retention"].to_numpy(dtype=float) - mean]), 0, None)
        axis.bar(range(len(panel)), mean, yerr=errors, capsize=3, color="tab:blue", alpha=0.7)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(panel)), labels, rotation=45, ha="right", fontsize=7)
        axis.set_title(dataset, fontsize=10)
        axis.set_ylabel("retention")
    figure.suptitle(title)
    return figure


def variance_figure(decomposition: pd.DataFrame):
    """Share of the variance over all calibration sets explained by the calibration source (between-source)
    against the rest (within-source), per variant, for the task average (acc) and each held-out perplexity."""
    title = "Variance decomposition: between-source against within-source"
    summary = (decomposition["kind"] == "perplexity") | ((decomposition["kind"] == "task_average")
                                                         & (decomposition["metric"] == "acc"))
    rows = decomposition[decomposition["between_share"].notna() & summary]
    if rows.empty:
        return placeholder(title, "Needs at least two calibration sets that score differently.")
    rows = rows.sort_values(["variant", "n_samples", "kind", "eval_dataset", "metric"])
    labels = [f"{v} | {d} {m}" + ("" if pd.isna(n) else f" | n={int(n)}")
              for v, d, m, n in zip(rows["variant"], rows["eval_dataset"], rows["metric"], rows["n_samples"])]
    figure, (axis,) = _figure(1, width=7, height=max(2.5, 0.28 * len(rows)))
    y = np.arange(len(rows))
    axis.barh(y, rows["between_share"], color="tab:orange", label="between sources")
    axis.barh(y, 1 - rows["between_share"], left=rows["between_share"], color="tab:gray", label="within a source")
    axis.set_yticks(y, labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of the sum of squares")
    figure.legend(fontsize=8, loc="outside lower center", ncols=2)
    figure.suptitle(title)
    return figure


def _panel_title(variant: str, n_samples) -> str:
    return variant if pd.isna(n_samples) else f"{variant} (n={int(n_samples)})"


def _legend(axis, colors: dict[str, tuple]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=color, label=source) for source, color in colors.items()]
    axis.legend(handles=handles, fontsize=8, title="source")


# file stem -> (caption, builder, the mart it reads)
FIGURES: dict[str, tuple[str, Callable, str]] = {
    "figure2_task_spread": ("Per-task accuracy across calibration sets (Figure 2)", task_spread_figure,
                            "mart_set_scores"),
    "figure3_sample_count": ("Scores against the number of calibration examples (Figure 3)", sample_count_figure,
                             "mart_size_curve"),
    "figure4_average_distribution": ("Task average (or perplexity) over all calibration sets (Figure 4)",
                                     average_distribution_figure, "mart_set_scores"),
    "retention": ("Retention against the dense model", retention_figure, "mart_retention"),
    "variance_decomposition": ("Between-source against within-source variance", variance_figure,
                               "mart_variance"),
}


def render_figures(marts: dict[str, pd.DataFrame], out_dir: Path,
                   missing: dict[str, str] | None = None) -> dict[str, Path]:
    """Every figure of FIGURES as `<stem>.png` in `out_dir`; returns stem -> path. A figure whose mart is
    `missing` ({mart: why}) says why instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, (caption, build, mart) in FIGURES.items():
        paths[stem] = out_dir / f"{stem}.png"
        figure = build(marts[mart]) if mart in marts else placeholder(caption, f"{mart}: {(missing or {})[mart]}")
        figure.savefig(paths[stem], dpi=DPI, metadata={"Software": None})
    return paths
